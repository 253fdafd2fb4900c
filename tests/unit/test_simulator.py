"""The simulator writes contract feeds, honest ground truth, and the mechanics it promises."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import phonenumbers
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from features.build import compute_features
from features.contract import FEEDS
from features.ingest import ingest
from omniretain.settings import Settings, load_settings
from omniretain.simulator import (
    EMAIL_VARIANT_SHARES,
    MONTHLY_FEEDS,
    PHONE_FORMAT_SHARES,
    SimulationSummary,
    _Events,
    action_channel_pairs,
    applicable_dirty_kinds,
    csv_text,
    email_variants,
    inject_dirty_rows,
    phone_variants,
    simulate,
)

# Written month by month like the others, from its own random stream.
ALL_MONTHLY_FEEDS = (*MONTHLY_FEEDS, "price_observations")


def _settings(tmp_path: Path, **simulation: float) -> Settings:
    return load_settings(state_dir=tmp_path, simulation={"start_date": "2025-01-01", **simulation})


def _read_feed(settings: Settings, feed: str) -> pd.DataFrame:
    files = sorted((settings.raw_dir / feed).glob("*.csv"))
    return pd.concat(
        [pd.read_csv(f, dtype=str, keep_default_na=False).assign(_file=f.name) for f in files],
        ignore_index=True,
    )


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimulationSummary]:
    settings = _settings(tmp_path_factory.mktemp("small"), dirty_row_share=0.03)
    return settings, simulate(settings, customers=300, months=4, seed=11, progress=False)


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimulationSummary]:
    settings = _settings(tmp_path_factory.mktemp("medium"), dirty_row_share=0.0)
    return settings, simulate(settings, customers=2000, months=12, seed=3, progress=False)


# ---- determinism and replacement ------------------------------------------------------------


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    first, second, other = (_settings(tmp_path / name) for name in ("a", "b", "c"))
    for run_settings, seed in ((first, 5), (second, 5), (other, 6)):
        simulate(run_settings, customers=120, months=2, seed=seed, progress=False)
    assert _digests(first.state_dir) == _digests(second.state_dir)
    differing = _digests(first.raw_dir) != _digests(other.raw_dir)
    assert differing


def test_a_new_simulation_replaces_the_previous_one(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stale_raw = settings.raw_dir / "pos_sales" / "pos_sales_1999-01.csv"
    stale_truth = settings.truth_dir / "old.parquet"
    for stale in (stale_raw, stale_truth):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("stale")
    simulate(settings, customers=50, months=1, seed=1, progress=False)
    assert not stale_raw.exists() and not stale_truth.exists()


def test_settings_give_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path, simulation={"customers": 40, "months": 6, "seed": 2}
    )
    summary = simulate(settings, months=1, progress=False)
    assert (summary.persons, summary.seed) == (40, 2)
    assert summary.end == pd.Timestamp(summary.start + pd.DateOffset(months=1)).date()


# ---- the feeds ------------------------------------------------------------------------------


def test_every_feed_has_monthly_files_with_exactly_the_contract_columns(small) -> None:
    settings, summary = small
    for name in ALL_MONTHLY_FEEDS:
        feed = FEEDS[name]
        files = sorted((settings.raw_dir / name).glob(f"{name}_*.csv"))
        assert files, f"no file for feed {name}"
        for path in files:
            header = path.read_text().split("\n", 1)[0]
            assert header.split(",") == list(feed.columns), path
            assert pd.Period(path.stem.removeprefix(f"{name}_"), "M")
        assert summary.rows_per_feed[name] == len(_read_feed(settings, name))


def test_timestamps_are_iso_with_a_few_zulu_and_identifiers_are_noisy(small) -> None:
    settings, _ = small
    orders = _read_feed(settings, "web_orders")
    times = orders["ordered_at"]
    assert times.str.endswith("Z").mean() > 0.05
    assert (~times.str.contains(r"Z|\+", regex=True)).mean() > 0.6
    emails = orders["email"][orders["email"] != ""]
    assert (emails != emails.str.strip().str.lower()).any()
    phones = pd.concat([_read_feed(settings, f)["phone"] for f in ("sms_events", "contact_center")])
    assert phones.str.startswith("+44 ").any() and phones.str.startswith("07").any()
    assert phones.str.startswith("0044-").any() and phones.str.startswith("(07").any()


def test_dirty_and_duplicate_rows_are_present_at_about_the_configured_share(small) -> None:
    settings, summary = small
    records = pd.read_parquet(settings.truth_dir / "records.parquet")
    dirty_share = records["dirty_kind"].notna().mean()
    assert 0.02 < dirty_share < 0.04
    assert summary.dirty_rows == records["dirty_kind"].notna().sum()
    assert set(records["dirty_kind"].dropna()) == set(summary.dirty_rows_by_kind) - {
        k for k, v in summary.dirty_rows_by_kind.items() if v == 0
    }
    assert all(summary.dirty_rows_by_kind[k] > 0 for k in summary.dirty_rows_by_kind)
    sessions = _read_feed(settings, "web_sessions")
    assert sessions["occurred_at"].str.startswith("2099").any()

    written = sum(summary.rows_per_feed.values())
    assert written - len(records) == summary.duplicate_rows
    assert 0.001 < summary.duplicate_rows / written < 0.01
    assert summary.duplicate_rows_next_month > 0
    for name in MONTHLY_FEEDS:
        rows = _read_feed(settings, name)
        key = FEEDS[name].key
        copies = rows[rows.duplicated(subset=key, keep=False)]
        # A duplicate is an exact copy of the line, never a different row with the same key.
        assert copies.drop(columns="_file").duplicated(keep=False).all(), name


def test_truth_covers_every_record_and_person(small) -> None:
    settings, summary = small
    records = pd.read_parquet(settings.truth_dir / "records.parquet")
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    assert not records.duplicated(["feed", "record_key"]).any()
    # the weekly price feed belongs to no person
    assert records.loc[records["person_id"].isna(), "feed"].eq("price_observations").all()
    assert set(records["person_id"].dropna()) <= set(persons["person_id"])
    for name in ALL_MONTHLY_FEEDS:
        feed = FEEDS[name]
        keys = set(_read_feed(settings, name)[feed.key])
        assert keys == set(records.loc[records["feed"] == name, "record_key"]), name
    assert len(persons) == summary.persons == persons["person_id"].nunique()
    for column in (
        "person_id",
        "joined_at",
        "churned_at",
        "segment",
        "engagement",
        "price_sensitivity",
        "value_level",
        "channel_breadth",
    ):
        assert column in persons
    assert persons["churned_at"].isna().any()
    assert (settings.truth_dir / "simulation.json").exists()


def test_price_observations_do_not_change_any_other_feed(tmp_path: Path, monkeypatch) -> None:
    with_prices, without = _settings(tmp_path / "with"), _settings(tmp_path / "without")
    simulate(with_prices, customers=80, months=2, seed=4, progress=False)
    monkeypatch.setattr("omniretain.simulator.observe_prices", lambda *args: _Events())
    simulate(without, customers=80, months=2, seed=4, progress=False)
    others = {
        k: v for k, v in _digests(with_prices.raw_dir).items() if "price_observations" not in k
    }
    assert others == _digests(without.raw_dir)
    assert not (without.raw_dir / "price_observations").exists()
    for name in ("persons.parquet", "treatment_effects.parquet"):
        assert (with_prices.truth_dir / name).read_bytes() == (
            without.truth_dir / name
        ).read_bytes()


def test_price_observations_show_channel_gaps_and_who_saw_them(small) -> None:
    settings, _ = small
    rows = _read_feed(settings, "price_observations")
    records = pd.read_parquet(settings.truth_dir / "records.parquet")
    person = rows.merge(
        records[records["feed"] == "price_observations"],
        left_on="observation_id",
        right_on="record_key",
        how="left",
        validate="many_to_one",
    )["person_id"]
    tied = person.notna().to_numpy()
    identified = (rows[["email", "loyalty_card", "device_id"]] != "").any(axis=1).to_numpy()
    # the price feed carries no identifier; most customer-tied rows carry one (a few are spoiled)
    assert not identified[~tied].any()
    assert identified[tied].mean() > 0.8
    assert (rows.loc[tied, "email"] != "").any() and (rows.loc[tied, "device_id"] != "").any()
    receipts = rows[tied & (rows["loyalty_card"] != "").to_numpy()]
    assert len(receipts) and receipts["channel"].eq("store").all()
    assert (receipts["store_id"] != "").all()
    # a card on a receipt is the true person's card
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet").set_index("person_id")
    owners = persons.loc[person[receipts.index], "loyalty_card"].to_numpy()
    assert (receipts["loyalty_card"].to_numpy() == owners).all()
    # about a quarter of products show another price in store than on the web the same week
    clean = rows["price"].str.match(r"^\d+(\.\d+)?$") & rows["product_id"].str.startswith("SKU")
    feed = rows[~tied & clean].assign(price=lambda f: f["price"].astype(float))
    prices = feed.pivot_table(index="product_id", columns="channel", values="price", aggfunc="max")
    differs = (prices["store"] - prices["web"]).abs() >= 0.005
    assert 0.12 < differs.mean() < 0.4
    assert ((prices["app"] - prices["web"]).abs() < 0.005).all()


def test_simulated_price_gaps_reach_the_features(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dirty_row_share=0.0)
    simulate(settings, customers=80, months=3, seed=9, progress=False)
    ingest(settings, progress=False)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        frame = compute_features(
            con, [datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)]
        )
    finally:
        con.close()
    assert (frame["price_gap_products_90d"] > 0).mean() > 0.05
    assert frame["max_price_gap_90d"].between(0.0, 1.0).all()
    assert (frame["max_price_gap_90d"] > 0.04).any()


def test_treatment_effects_are_heterogeneous_with_both_signs(small) -> None:
    settings, summary = small
    effects = pd.read_parquet(settings.truth_dir / "treatment_effects.parquet")
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    pairs = {(a.name, ch) for a, ch in action_channel_pairs(settings.actions)}
    assert set(zip(effects["action"], effects["channel"], strict=True)) == pairs
    assert len(effects) == len(pairs) * summary.persons
    assert (effects["effect"] < 0).any() and (effects["effect"] > 0).any()
    merged = effects.merge(persons, on="person_id")
    discount = merged[(merged["action"] == "retention_discount") & (merged["channel"] == "email")]
    sensitive = discount["price_sensitivity"] > 0.6
    assert discount.loc[sensitive, "effect"].mean() < discount.loc[~sensitive, "effect"].mean()
    sms = merged[merged["channel"] == "sms"]
    assert (
        sms.loc[sms["engagement"] < 0.25, "effect"].mean()
        > sms.loc[sms["engagement"] > 0.6, "effect"].mean()
    )


# ---- pure pieces ----------------------------------------------------------------------------


@hypothesis_settings(max_examples=50, deadline=None)
@given(digits=st.integers(min_value=0, max_value=999_999_999))
def test_every_phone_spelling_is_the_same_number(digits: int) -> None:
    national = f"7{digits:09d}"
    spellings = phone_variants(pd.Series([national]))[0]
    assert len(spellings) == len(PHONE_FORMAT_SHARES)
    parsed = {
        phonenumbers.format_number(phonenumbers.parse(s, "GB"), phonenumbers.PhoneNumberFormat.E164)
        for s in spellings
    }
    assert parsed == {f"+44{national}"}


@given(local=st.from_regex(r"[a-z][a-z0-9.]{0,15}[a-z0-9]", fullmatch=True))
def test_email_noise_keeps_the_mailbox(local: str) -> None:
    address = f"{local}@example.com"
    spellings = email_variants(pd.Series([address]))[0]
    assert len(spellings) == len(EMAIL_VARIANT_SHARES)
    assert {s.strip().lower() for s in spellings} == {address}


def test_dirty_injection_never_touches_the_key_and_marks_each_row() -> None:
    feed = FEEDS["pos_sales"]
    frame = pd.DataFrame({c: ["1"] * 200 for c in feed.columns}).astype(object)
    frame[feed.key] = [f"T{i}" for i in range(200)]
    frame[feed.time_column] = "2025-01-01T10:00:00"
    spoiled, kinds = inject_dirty_rows(frame, feed, 1.0, np.random.default_rng(0))
    assert (kinds != "").all()
    assert set(kinds) == set(applicable_dirty_kinds(feed))
    assert spoiled[feed.key].tolist() == frame[feed.key].tolist()
    assert (spoiled.ne(frame).any(axis=1)).all()


def test_csv_text_quotes_only_where_needed() -> None:
    frame = pd.DataFrame({"a": ["plain", "12,50", None], "b": ['say "hi"', "x", "y"]})
    assert csv_text(frame) == 'a,b\nplain,"say ""hi"""\n"12,50",x\n,y\n'
    assert pd.read_csv(pd.io.common.StringIO(csv_text(frame)), dtype=str)["a"][1] == "12,50"


# ---- mechanics, statistically, on a medium population ----------------------------------------


def _alive_at_cutoffs(persons: pd.DataFrame, start: pd.Timestamp) -> pd.DataFrame:
    frames = []
    for day in range(120, 300, 30):
        cutoff = start + pd.Timedelta(days=day)
        alive = persons[
            (persons["joined_at"] < cutoff)
            & (persons["churned_at"].isna() | (persons["churned_at"] >= cutoff))
        ]
        churns = alive["churned_at"] < cutoff + pd.Timedelta(days=90)
        frames.append(alive.assign(cutoff=cutoff, churns_90d=churns.to_numpy()))
    return pd.concat(frames, ignore_index=True)


def _with_person(settings: Settings, feed: str) -> pd.DataFrame:
    records = pd.read_parquet(settings.truth_dir / "records.parquet")
    rows = _read_feed(settings, feed).drop_duplicates(FEEDS[feed].key)
    rows = rows.merge(
        records.loc[records["feed"] == feed, ["record_key", "person_id"]],
        left_on=FEEDS[feed].key,
        right_on="record_key",
    )
    rows["at"] = pd.to_datetime(
        rows[FEEDS[feed].time_column].str[:19], errors="coerce", format="%Y-%m-%dT%H:%M:%S"
    )
    return rows


def test_yearly_churn_is_in_the_calibrated_range(medium) -> None:
    settings, summary = medium
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    start = pd.Timestamp(summary.start)
    present = persons[persons["joined_at"] <= start]
    yearly = (present["churned_at"] < start + pd.Timedelta(days=365)).mean()
    assert 0.18 < yearly < 0.38


def test_unresolved_contacts_and_narrow_channel_use_raise_churn(medium) -> None:
    settings, summary = medium
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    panel = _alive_at_cutoffs(persons, pd.Timestamp(summary.start))
    contacts = _with_person(settings, "contact_center")
    unresolved = contacts[contacts["resolved"] == "false"]
    recent = panel.merge(unresolved[["person_id", "at"]], on="person_id", how="left")
    recent = recent[
        (recent["at"] < recent["cutoff"])
        & (recent["at"] >= recent["cutoff"] - pd.Timedelta(days=60))
    ]
    flagged = set(zip(recent["person_id"], recent["cutoff"], strict=True))
    panel["unresolved"] = [
        k in flagged for k in zip(panel["person_id"], panel["cutoff"], strict=True)
    ]
    rate = panel.groupby("unresolved")["churns_90d"].mean()
    assert rate[True] > 1.2 * rate[False]
    by_breadth = panel.groupby("channel_breadth")["churns_90d"].mean()
    assert by_breadth[3] < 0.6 * by_breadth[1]


def test_churned_persons_stop_buying_and_activity_follows_the_model(medium) -> None:
    settings, _ = medium
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    churned_at = persons.set_index("person_id")["churned_at"]
    for feed in ("pos_sales", "web_orders", "web_sessions", "contact_center"):
        rows = _with_person(settings, feed)
        after = rows["at"] >= rows["person_id"].map(churned_at) + pd.Timedelta(days=1)
        assert not after.any(), feed

    contacts = _with_person(settings, "contact_center")
    assert contacts.groupby("case_id").size().max() > 1  # repeat contacts on one case

    sessions = _with_person(settings, "web_sessions")
    views = sessions[sessions["event_type"] == "product_view"][
        ["person_id", "product_id", "price_seen", "at"]
    ]
    sales = _with_person(settings, "pos_sales")[["person_id", "product_id", "unit_price", "at"]]
    pairs = views.merge(sales, on=["person_id", "product_id"], suffixes=("_view", "_sale"))
    pairs = pairs[
        (pairs["at_sale"] > pairs["at_view"])
        & (pairs["at_sale"] - pairs["at_view"] < pd.Timedelta(days=7))
    ]
    gap = pd.to_numeric(pairs["unit_price"]) != pd.to_numeric(pairs["price_seen"])
    assert gap.sum() > 20  # the same product at another price in store, within days

    campaigns = _read_feed(settings, "campaign_history")
    control = campaigns[campaigns["is_control"] == "true"]
    assert set(control["action"]) == {"no_action"} and set(control["channel"]) == {"none"}
    treated = campaigns[campaigns["is_control"] == "false"]
    propensity = pd.to_numeric(treated["propensity"], errors="coerce").dropna()
    assert propensity.between(0, 1).all() and treated["action"].nunique() >= 4


def test_campaign_shares_are_settings_recorded_for_the_replay(tmp_path: Path) -> None:
    """More randomised history is a setting: the sends grow with it, the truth records it."""
    import json

    from omniretain.simulator import world_parameters

    sends = {}
    for treated, control in ((0.25, 0.10), (0.6, 0.2)):
        settings = _settings(
            tmp_path / str(treated), campaign_treated_share=treated, campaign_control_share=control
        )
        simulate(settings, customers=150, months=2, seed=5, progress=False)
        summary = json.loads((settings.truth_dir / "simulation.json").read_text())
        assert world_parameters(summary).campaign_treated_share == treated
        assert world_parameters(summary).campaign_control_share == control
        sends[treated] = summary["rows_per_feed"]["campaign_history"]
    assert sends[0.6] > 1.8 * sends[0.25]
    assert world_parameters({}).campaign_treated_share == 0.25  # runs from before the setting
    with pytest.raises(ValueError, match="at most 1"):
        _settings(tmp_path, campaign_treated_share=0.8, campaign_control_share=0.3)


def test_a_second_treatment_moves_the_current_probability_not_the_untreated_one() -> None:
    """A person still under a campaign's treatment is treated again: the new 90-day churn
    probability is clip(p0 + effect) from the *current* (treated) p0, as documented, so the
    earlier treatment is not undone by the new one."""
    from dataclasses import replace
    from datetime import date

    from omniretain import simulator as sim
    from omniretain.settings import load_settings

    params = replace(sim.WorldParameters(), campaign_treated_share=1.0)
    person_rng, effect_rng, world_rng = np.random.default_rng(3).spawn(3)
    start = date(2024, 1, 1)
    persons = sim.draw_persons(person_rng, 200, start, 12, params)
    actions = load_settings().actions
    pairs = sim.action_channel_pairs(actions)
    effects = sim.true_treatment_effects(persons, actions, effect_rng)
    effect_matrix = effects["effect"].to_numpy().reshape(len(pairs), 200).T
    world = sim._World(persons, effect_matrix, pairs, start, params, world_rng)
    world.joined[:] = True
    world.alive[:] = True
    day = 40
    world.treatment_multiplier[:] = 0.5  # an earlier campaign's retention, still running
    world.treatment_until[:] = day + 30
    p0 = np.clip(1.0 - np.exp(-params.treatment_horizon_days * world.hazard(day)), 1e-4, 0.95)
    before = world.treatment_multiplier.copy()
    world._campaign(day, date(2024, 2, 10), sim._Events())
    treated = np.flatnonzero(world.treatment_multiplier != before)
    assert len(treated) > 100
    p_after = 1.0 - np.exp(-params.treatment_horizon_days * world.hazard(day)[treated])
    lowest, highest = p_after.min(), p_after.max()
    assert 0.0 < lowest and highest <= 0.95 + 1e-9
    # each treated person's effect is one of its pairs' effects from its current p0
    moved = p_after - p0[treated]
    candidates = effect_matrix[treated]
    expected = np.clip(p0[treated, None] + candidates, 5e-4, 0.95) - p0[treated, None]
    assert np.isclose(moved[:, None], expected, atol=1e-9).any(axis=1).all()
