"""Point-in-time customer features on tiny hand-made unified tables, values computed by hand."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from unified_tables import create_unified_tables

from features.build import (
    FEATURE_COLUMNS,
    FEATURE_DESCRIPTIONS,
    NO_ABANDONED_CART_HOURS,
    NULLABLE_FEATURES,
    FeatureBuildError,
    compute_features,
    event_time_range,
    feature_columns,
    feature_specs,
    snapshot_cutoffs,
    write_features_atomically,
)
from features.contract import DECISION_FEATURES
from omniretain.settings import LabelSettings

CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _price(customer: str | None, day: str, channel: str, product: str, price: float) -> dict:
    return {
        "customer_id": customer,
        "occurred_at": ts(day),
        "channel": channel,
        "product_id": product,
        "price": price,
    }


def hand_made_rows() -> dict[str, list[dict]]:
    """Customer a has a bit of everything, b was just seen, c is first seen at the cutoff."""
    return {
        "customers": [
            {"customer_id": "a", "first_seen_at": ts("2025-01-01"), "n_source_ids": 3},
            {"customer_id": "b", "first_seen_at": ts("2025-05-31"), "n_source_ids": 1},
            {"customer_id": "c", "first_seen_at": ts("2025-06-01"), "n_source_ids": 1},
        ],
        "purchases": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-25"),
                "channel": "store",
                "amount": 100.0,
                "items": 2,
                "discount_amount": 10.0,
                "is_return": False,
                "product_id": "P1",
                "unit_price": 12.0,
                "source_id": "t1",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-10"),
                "channel": "web",
                "amount": 50.0,
                "items": 1,
                "is_return": False,
                "source_id": "o1",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-03-01"),
                "channel": "app",
                "amount": 30.0,
                "items": 1,
                "is_return": False,
                "promo_code": "",
                "source_id": "o2",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-28"),
                "channel": "store",
                "amount": 20.0,
                "items": 1,
                "is_return": True,
                "source_id": "t2",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-06-01"),
                "channel": "store",
                "amount": 999.0,
                "items": 1,
                "is_return": False,
                "source_id": "t3",
            },
        ],
        "web_events": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20T10:00"),
                "channel": "web",
                "session_id": "s1",
                "event_type": "page_view",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20T10:05"),
                "channel": "web",
                "session_id": "s1",
                "event_type": "product_view",
                "product_id": "P1",
                "price_seen": 12.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20T10:10"),
                "channel": "web",
                "session_id": "s1",
                "event_type": "add_to_cart",
                "product_id": "P1",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20T10:20"),
                "channel": "web",
                "session_id": "s1",
                "event_type": "cart_abandoned",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-26T09:00"),
                "channel": "app",
                "session_id": "s2",
                "event_type": "product_view",
                "product_id": "P1",
                "price_seen": 10.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-30T12:00"),
                "channel": "web",
                "session_id": "s3",
                "event_type": "cart_abandoned",
            },
            {
                "customer_id": None,
                "occurred_at": ts("2025-05-30T12:00"),
                "channel": "web",
                "session_id": "anon",
                "event_type": "page_view",
            },
        ],
        "messages": [
            *[
                {
                    "customer_id": "a",
                    "occurred_at": ts(f"2025-05-0{d}"),
                    "channel": "email",
                    "event_type": "sent",
                }
                for d in (1, 2, 3, 4)
            ],
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-05"),
                "channel": "email",
                "event_type": "open",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-06"),
                "channel": "email",
                "event_type": "open",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-06"),
                "channel": "email",
                "event_type": "click",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-07"),
                "channel": "sms",
                "event_type": "sent",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-08"),
                "channel": "sms",
                "event_type": "sent",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-09"),
                "channel": "sms",
                "event_type": "click",
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-31"),
                "channel": "email",
                "event_type": "unsubscribe",
            },
        ],
        "contacts": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-01"),
                "case_id": "K1",
                "contact_channel": "phone",
                "reason": "delivery",
                "resolved": False,
                "handle_minutes": 10.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-05"),
                "case_id": "K1",
                "contact_channel": "chat",
                "reason": "delivery",
                "resolved": False,
                "handle_minutes": 20.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20"),
                "case_id": "K2",
                "contact_channel": "phone",
                "reason": "billing",
                "resolved": True,
                "handle_minutes": 30.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-25"),
                "case_id": "K3",
                "contact_channel": "email",
                "reason": "billing",
                "resolved": False,
                "handle_minutes": 40.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-02-01"),
                "case_id": "K4",
                "contact_channel": "phone",
                "reason": "delivery",
                "resolved": False,
                "handle_minutes": 99.0,
            },
        ],
        "price_observations": [
            # a scans P7 at 10.0 in store; the web shows 12.0 three days later, the app 10.0
            _price("a", "2025-05-20", "store", "P7", 10.0),
            _price(None, "2025-05-23", "web", "P7", 12.0),
            _price(None, "2025-05-21", "app", "P7", 10.0),
            _price("a", "2025-05-01", "web", "P8", 5.0),  # same price in store: no gap
            _price(None, "2025-05-02", "store", "P8", 5.0),
            _price("a", "2025-02-01", "web", "P9", 20.0),  # a gap, but before the 90 days
            _price(None, "2025-02-02", "store", "P9", 10.0),
            _price("a", "2025-05-30", "app", "P10", 8.0),  # the web price comes after the cutoff
            _price(None, "2025-06-02", "web", "P10", 10.0),
            _price("b", "2025-05-31", "web", "P7", 12.0),  # 11 days from the store label
        ],
        "social": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-15"),
                "interaction_type": "complaint",
                "sentiment": -0.8,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-20"),
                "interaction_type": "praise",
                "sentiment": 0.4,
            },
        ],
        "surveys": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-03-01"),
                "survey_type": "nps",
                "score": 8.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-01"),
                "survey_type": "nps",
                "score": 5.0,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-10"),
                "survey_type": "ces",
                "score": 6.0,
            },
        ],
        "consents": [
            {
                "customer_id": "a",
                "occurred_at": ts("2025-01-15"),
                "channel": "email",
                "granted": True,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-05-31"),
                "channel": "email",
                "granted": False,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-02-01"),
                "channel": "sms",
                "granted": True,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-02-01"),
                "channel": "call_center",
                "granted": True,
            },
            {
                "customer_id": "a",
                "occurred_at": ts("2025-06-01"),
                "channel": "call_center",
                "granted": False,
            },
        ],
        "loyalty": [
            {"customer_id": "a", "occurred_at": ts("2025-02-10"), "region": "north"},
            {"customer_id": "b", "occurred_at": ts("2025-06-01")},  # enrols at the cutoff
        ],
    }


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    create_unified_tables(connection, hand_made_rows())
    yield connection
    connection.close()


@pytest.fixture()
def at_cutoff(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    frame = compute_features(con, [CUTOFF])
    return {row["customer_id"]: row for row in frame.to_dict("records")}


# ---- feature list -----------------------------------------------------------------------------


def test_feature_list_covers_the_contract_and_is_documented() -> None:
    assert set(DECISION_FEATURES) <= set(FEATURE_COLUMNS)
    assert len(FEATURE_COLUMNS) >= 60
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    assert set(FEATURE_DESCRIPTIONS) == set(FEATURE_COLUMNS)
    assert all(description.strip() for description in FEATURE_DESCRIPTIONS.values())


def test_lookback_windows_drive_the_rfm_columns() -> None:
    names = feature_columns([30, 90, 180, 365])
    assert "purchases_180d_app" in names and "spend_180d" in names
    with pytest.raises(ValueError, match="90"):
        feature_specs([30, 365])


# ---- cutoffs ----------------------------------------------------------------------------------


def test_cutoffs_step_from_first_event_and_end_with_the_serving_cutoff() -> None:
    labels = LabelSettings(snapshot_every_days=30, first_snapshot_after_days=120)
    cutoffs = snapshot_cutoffs(ts("2025-01-01T13:00"), ts("2025-06-10T08:00"), labels)
    assert cutoffs == [
        datetime(2025, 5, 1, tzinfo=UTC),
        datetime(2025, 5, 31, tzinfo=UTC),
        datetime(2025, 6, 11, tzinfo=UTC),  # the day after the last event date
    ]


def test_serving_cutoff_on_the_grid_is_not_repeated() -> None:
    labels = LabelSettings(snapshot_every_days=30, first_snapshot_after_days=120)
    cutoffs = snapshot_cutoffs(ts("2025-01-01"), ts("2025-05-30T23:59"), labels)
    assert cutoffs == [datetime(2025, 5, 1, tzinfo=UTC), datetime(2025, 5, 31, tzinfo=UTC)]


def test_short_history_still_yields_the_serving_cutoff() -> None:
    labels = LabelSettings(snapshot_every_days=30, first_snapshot_after_days=120)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    end = datetime(2025, 2, 1, 17, tzinfo=UTC)
    assert snapshot_cutoffs(start, end, labels) == [datetime(2025, 2, 2, tzinfo=UTC)]
    with pytest.raises(ValueError):
        snapshot_cutoffs(end, start, labels)


def test_event_time_range_ignores_anonymous_events_and_starts_at_behaviour(
    con: duckdb.DuckDBPyConnection,
) -> None:
    con.execute(
        "INSERT INTO web_events (customer_id, occurred_at, channel, session_id, event_type)"
        " VALUES (NULL, TIMESTAMP '2025-09-01', 'web', 'anon2', 'page_view')"
    )
    first, last = event_time_range(con)
    # the consent of 2025-01-15 is a profile record: the grid starts at the first behaviour
    assert first == datetime(2025, 2, 1, tzinfo=UTC)
    assert last == datetime(2025, 6, 1, tzinfo=UTC)


# ---- rows and types ---------------------------------------------------------------------------


def test_one_row_per_customer_first_seen_before_each_cutoff(con) -> None:
    later = CUTOFF + timedelta(days=30)
    frame = compute_features(con, [CUTOFF, later])
    assert list(frame.columns) == ["customer_id", "event_timestamp", *FEATURE_COLUMNS]
    keys = set(zip(frame["customer_id"], frame["event_timestamp"], strict=True))
    assert keys == {("a", CUTOFF), ("b", CUTOFF), ("a", later), ("b", later), ("c", later)}
    assert str(frame["event_timestamp"].dt.tz) == "UTC"
    for name in FEATURE_COLUMNS:
        assert pd.api.types.is_numeric_dtype(frame[name]), name
        if name not in NULLABLE_FEATURES:
            assert not frame[name].isna().any(), name


def test_missing_table_is_a_clear_error() -> None:
    empty = duckdb.connect()
    with pytest.raises(FeatureBuildError, match="omniretain ingest"):
        compute_features(empty, [CUTOFF])


# ---- families, by hand --------------------------------------------------------------------------


def test_recency_frequency_monetary(at_cutoff) -> None:
    a = at_cutoff["a"]
    assert a["tenure_days"] == pytest.approx(151)
    assert a["n_source_ids"] == 3
    assert a["days_since_last_purchase"] == pytest.approx(7)  # the return does not count
    assert a["days_since_last_purchase_store"] == pytest.approx(7)
    assert a["days_since_last_purchase_web"] == pytest.approx(22)
    assert a["days_since_last_purchase_app"] == pytest.approx(92)
    assert (a["purchases_30d"], a["purchases_90d"], a["purchases_365d"]) == (2, 2, 3)
    assert (a["purchases_30d_store"], a["purchases_30d_web"], a["purchases_365d_app"]) == (1, 1, 1)
    assert a["spend_30d"] == pytest.approx(130)  # 100 + 50 - 20 returned; 999 at the cutoff
    assert a["spend_30d_store"] == pytest.approx(80)
    assert a["spend_365d"] == pytest.approx(160)
    assert a["historic_clv"] == pytest.approx(160)
    assert a["purchases_total"] == 3
    assert a["purchase_trend_90d"] == 2 - 1
    assert a["avg_order_value_365d"] == pytest.approx(60)
    assert a["promo_share_365d"] == pytest.approx(1 / 3)
    assert a["returns_365d"] == 1
    assert a["return_rate_365d"] == pytest.approx(1 / 3)


def test_new_customer_gets_defaults(at_cutoff) -> None:
    b = at_cutoff["b"]
    assert b["tenure_days"] == pytest.approx(1)
    assert b["days_since_last_purchase"] == pytest.approx(1)
    assert b["days_since_last_session"] == pytest.approx(1)
    assert b["hours_since_last_abandoned_cart"] == NO_ABANDONED_CART_HOURS
    assert b["purchases_90d"] == 0 and b["spend_365d"] == 0.0
    assert b["avg_order_value_365d"] == 0.0 and b["return_rate_365d"] == 0.0
    assert b["consent_email"] == 0.0 and b["unsubscribed"] == 0
    assert math.isnan(b["last_nps"]) and math.isnan(b["nps_change"])
    assert "c" not in at_cutoff  # first seen at the cutoff: not a customer yet


def test_channels_and_transitions(at_cutoff) -> None:
    a = at_cutoff["a"]
    # store/web/app purchases and sessions, email open, SMS click, call centre, social
    assert a["channel_breadth_90d"] == 7
    assert a["omnichannel_90d"] == 1
    assert a["purchase_channels_90d"] == 2
    # 90-day sequence: web order, web s1, store, app s2, web s3 -> 4 steps, 3 switches
    assert a["cross_channel_transition_rate_90d"] == pytest.approx(0.75)


def test_web_sessions_and_carts(at_cutoff) -> None:
    a = at_cutoff["a"]
    assert a["sessions_30d"] == 3 and a["sessions_90d"] == 3
    assert a["days_since_last_session"] == pytest.approx(1.5)
    assert a["product_views_30d"] == 2 and a["add_to_carts_30d"] == 1
    assert a["abandoned_carts_30d"] == 2 and a["abandoned_carts_90d"] == 2
    # the 05-20 cart had no purchase within 3 days; the 05-30 window is still open
    assert a["ignored_abandoned_carts_90d"] == 1
    assert a["hours_since_last_abandoned_cart"] == pytest.approx(36)


def test_price_inconsistency_exposure(at_cutoff) -> None:
    # paid 12.0 in store on 05-25; seen at 10.0 in the app on 05-26 (12.0 on the web: no issue)
    assert at_cutoff["a"]["price_inconsistency_exposure_90d"] == 1


def test_price_gaps_between_channels(at_cutoff, con) -> None:
    a, b = at_cutoff["a"], at_cutoff["b"]
    assert a["price_gap_products_90d"] == 1  # P7 only
    assert a["max_price_gap_90d"] == pytest.approx(2.0 / 12.0)
    assert (b["price_gap_products_90d"], b["max_price_gap_90d"]) == (0, 0.0)
    # two months on, the P10 gap (8.0 in the app, 10.0 on the web) is known too
    later = compute_features(con, [CUTOFF + timedelta(days=60)]).set_index("customer_id")
    assert later.loc["a", "price_gap_products_90d"] == 2
    assert later.loc["a", "max_price_gap_90d"] == pytest.approx(0.2)


def _price_gaps_by_definition(prices: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
    """Every pair of one customer observation and any other observation, straight from the
    definition (the build looks up only the first observation per other price)."""
    naive = cutoff.replace(tzinfo=None)
    own = prices[prices["customer_id"].notna()]
    pairs = own.merge(prices, on="product_id", suffixes=("", "_x"))
    gap = (pairs["price"] - pairs["price_x"]).abs()
    pairs = pairs[
        (pairs["channel"] != pairs["channel_x"])
        & ((pairs["occurred_at"] - pairs["occurred_at_x"]).abs() <= timedelta(days=7))
        & (gap >= 0.005)
        & (pairs[["occurred_at", "occurred_at_x"]].max(axis=1) < naive)
        & (pairs["occurred_at"] >= naive - timedelta(days=90))
    ].assign(relative=gap / pairs[["price", "price_x"]].max(axis=1))
    return pairs.groupby("customer_id").agg(
        price_gap_products_90d=("product_id", "nunique"), max_price_gap_90d=("relative", "max")
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_price_gaps_match_the_definition_on_random_observations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = 120
    prices = pd.DataFrame(
        {
            "customer_id": rng.choice(np.array(["a", "b", "c", None], dtype=object), count),
            "occurred_at": pd.Timestamp("2025-03-01")
            + pd.to_timedelta(rng.integers(0, 120 * 24, count), unit="h"),
            "channel": rng.choice(["store", "web", "app"], count),
            "product_id": rng.choice(["P1", "P2", "P3", "P4"], count),
            "price": rng.choice([9.99, 10.0, 10.004, 12.5, 8.0], count),
        }
    )
    con = duckdb.connect()
    create_unified_tables(
        con,
        {
            "customers": [
                {"customer_id": c, "first_seen_at": ts("2025-01-01"), "n_source_ids": 1}
                for c in "abc"
            ],
            "price_observations": prices.to_dict(orient="records"),
        },
    )
    for cutoff in (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 6, 15, tzinfo=UTC)):
        actual = compute_features(con, [cutoff]).set_index("customer_id")
        expected = _price_gaps_by_definition(prices, cutoff)
        for customer in "abc":
            products, gap = (
                expected.loc[customer].tolist() if customer in expected.index else (0, 0.0)
            )
            assert actual.loc[customer, "price_gap_products_90d"] == products
            assert actual.loc[customer, "max_price_gap_90d"] == pytest.approx(gap)


def test_service_friction(at_cutoff) -> None:
    a = at_cutoff["a"]
    assert a["contacts_30d"] == 3 and a["contacts_90d"] == 4
    assert a["repeat_contacts_7d"] == 2  # K1 again after 4 days; billing again after 5 days
    assert a["unresolved_contacts_90d"] == 3
    assert a["open_cases"] == 2  # K1 and K3
    assert a["mean_handle_minutes_90d"] == pytest.approx(25)
    assert a["max_contact_channels_per_case_90d"] == 2


def test_surveys(at_cutoff) -> None:
    a = at_cutoff["a"]
    assert a["last_nps"] == 5.0 and a["nps_change"] == -3.0
    assert a["last_ces"] == 6.0 and math.isnan(a["ces_change"])


def test_messages_social_and_consents(at_cutoff) -> None:
    a = at_cutoff["a"]
    assert a["emails_sent_90d"] == 4 and a["sms_sent_90d"] == 2
    assert a["email_open_rate_90d"] == pytest.approx(0.5)
    assert a["email_click_rate_90d"] == pytest.approx(0.25)
    assert a["sms_click_rate_90d"] == pytest.approx(0.5)
    assert a["unsubscribed"] == 1
    assert a["social_interactions_90d"] == 2 and a["social_complaints_90d"] == 1
    assert a["social_sentiment_90d"] == pytest.approx(-0.2)
    # email withdrawn (latest wins); sms granted; app never; call centre withdrawn AT the cutoff
    assert (a["consent_email"], a["consent_sms"], a["consent_app"]) == (0.0, 1.0, 0.0)
    assert a["consent_call_center"] == 1.0


def test_loyalty_membership_counts_from_the_enrolment(con) -> None:
    later = CUTOFF + timedelta(days=30)
    frame = compute_features(con, [CUTOFF, later]).set_index(["customer_id", "event_timestamp"])
    assert frame.loc[("a", CUTOFF), "loyalty_member"] == 1
    assert frame.loc[("a", CUTOFF), "loyalty_tenure_days"] == pytest.approx(111.0)
    assert frame.loc[("b", CUTOFF), ["loyalty_member", "loyalty_tenure_days"]].tolist() == [0, 0]
    assert frame.loc[("b", later), "loyalty_member"] == 1
    assert frame.loc[("b", later), "loyalty_tenure_days"] == pytest.approx(30.0)
    assert frame.loc[("c", later), "loyalty_member"] == 0


def test_windows_move_with_the_cutoff(con) -> None:
    later = CUTOFF + timedelta(days=60)
    row = compute_features(con, [later]).set_index("customer_id").loc["a"]
    assert row["purchases_30d"] == 0  # the 999 order on 06-01 is 60 days old
    assert row["purchases_90d"] == 3
    assert row["spend_90d"] == pytest.approx(999 + 100 + 50 - 20)
    assert row["consent_call_center"] == 0.0
    assert row["ignored_abandoned_carts_90d"] == 1  # 05-30 cart: the 06-01 order recovered it


@pytest.mark.parametrize("hours", [0, 7.5, 23.999])
def test_window_bounds_are_exact_at_any_cutoff_time(con, hours: float) -> None:
    """Events exactly at a window's start count, a microsecond earlier or at the cutoff do not,
    also for cutoffs that are not midnight (events are matched to windows by their day first)."""
    cutoff = (CUTOFF + timedelta(days=3, hours=hours)).replace(tzinfo=None)
    edges = [
        cutoff - timedelta(days=30),
        cutoff - timedelta(days=30, microseconds=1),
        cutoff - timedelta(days=90),
        cutoff - timedelta(days=90, microseconds=1),
        cutoff - timedelta(microseconds=1),
        cutoff,
    ]
    for moment in edges:
        con.execute(
            "INSERT INTO purchases (customer_id, occurred_at, channel, amount, is_return) "
            "VALUES ('b', ?, 'web', 10.0, false)",
            [moment],
        )
        con.execute(
            "INSERT INTO messages (customer_id, occurred_at, channel, event_type) "
            "VALUES ('b', ?, 'email', 'sent')",
            [moment],
        )
        con.execute(
            "INSERT INTO contacts (customer_id, occurred_at, case_id, contact_channel, reason) "
            "VALUES ('b', ?, 'EDGE', 'phone', 'edge')",
            [moment],
        )

    def brute_force(table: str, days: int, where: str = "true") -> int:
        return con.execute(
            f"SELECT count(*) FROM {table} WHERE customer_id = 'b' AND {where} "
            "AND occurred_at >= ? AND occurred_at < ?",
            [cutoff - timedelta(days=days), cutoff],
        ).fetchall()[0][0]

    row = compute_features(con, [cutoff.replace(tzinfo=UTC)]).set_index("customer_id").loc["b"]
    purchases = "NOT coalesce(is_return, false)"
    assert row["purchases_30d"] == brute_force("purchases", 30, purchases)
    assert row["purchases_90d"] == brute_force("purchases", 90, purchases)
    assert row["purchases_30d_web"] == brute_force(
        "purchases", 30, f"{purchases} AND channel = 'web'"
    )
    assert row["emails_sent_90d"] == brute_force(
        "messages", 90, "channel = 'email' AND event_type = 'sent'"
    )
    assert row["contacts_30d"] == brute_force("contacts", 30)
    assert row["contacts_90d"] == brute_force("contacts", 90)
    # the edges themselves: 2 in 30 days (start and last microsecond), 4 in 90 days
    assert row["contacts_90d"] - row["contacts_30d"] >= 2


# ---- point in time ------------------------------------------------------------------------------

_EVENT_TABLES = [
    "purchases",
    "web_events",
    "messages",
    "contacts",
    "social",
    "surveys",
    "consents",
    "price_observations",
    "loyalty",
]


def _future_event(table: str, customer: str, moment: datetime, pick: int, value: float) -> dict:
    """A plausible row of ``table`` for ``customer`` at ``moment`` (reusing ids on purpose)."""
    base = {"customer_id": customer, "occurred_at": moment}
    if table == "purchases":
        return base | {
            "channel": ["store", "web", "app"][pick % 3],
            "amount": value,
            "items": 1,
            "is_return": pick % 4 == 0,
            "product_id": "P1",
            "unit_price": value,
            "promo_code": "X" if pick % 2 else None,
        }
    if table == "web_events":
        events = ["page_view", "product_view", "add_to_cart", "cart_abandoned", "checkout"]
        return base | {
            "channel": ["web", "app"][pick % 2],
            "session_id": f"s{pick % 4}",
            "event_type": events[pick % 5],
            "product_id": "P1",
            "price_seen": value,
        }
    if table == "messages":
        kinds = ["sent", "open", "click", "unsubscribe", "bounce", "opt_out"]
        return base | {"channel": ["email", "sms"][pick % 2], "event_type": kinds[pick % 6]}
    if table == "contacts":
        return base | {
            "case_id": f"K{pick % 4}",
            "contact_channel": "phone",
            "reason": ["delivery", "billing"][pick % 2],
            "resolved": pick % 3 == 0,
            "handle_minutes": value,
        }
    if table == "social":
        return base | {"interaction_type": "complaint", "sentiment": min(1.0, value / 500)}
    if table == "surveys":
        return base | {"survey_type": ["nps", "ces"][pick % 2], "score": value % 10}
    if table == "price_observations":
        # products the hand-made customers saw before the cutoff, on every channel, at new
        # prices; a quarter of them are anonymous shelf or feed prices
        return base | {
            "customer_id": None if pick % 4 == 0 else customer,
            "channel": ["store", "web", "app"][pick % 3],
            "product_id": ["P7", "P8", "P9", "P10"][pick % 4],
            "price": value,
        }
    if table == "loyalty":  # an enrolment at or after the cutoff is not a membership yet
        return base | {"region": "north"}
    return base | {
        "channel": ["email", "sms", "app", "call_center"][pick % 4],
        "granted": pick % 2 == 0,
    }


@functools.cache
def _baseline_features() -> pd.DataFrame:
    baseline = duckdb.connect()
    create_unified_tables(baseline, hand_made_rows())
    return compute_features(baseline, [CUTOFF])


future_events = st.lists(
    st.tuples(
        st.sampled_from(_EVENT_TABLES),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=0, max_value=200 * 24 * 3600),  # seconds at/after the cutoff
        st.integers(min_value=0, max_value=59),
        st.floats(min_value=0.0, max_value=500.0, allow_nan=False),
    ),
    min_size=1,
    max_size=12,
)


@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=future_events)
@example(events=[("purchases", "a", 0, 1, 5.0), ("consents", "a", 0, 1, 0.0)])
@example(events=[("price_observations", "a", 0, 3, 9.0)])  # a store price for a's P10 view
@example(events=[("loyalty", "c", 0, 0, 0.0)])  # c enrols at the cutoff: not yet a member
def test_events_at_or_after_the_cutoff_never_change_features(events) -> None:
    baseline_rows = hand_made_rows()
    expected = _baseline_features()

    naive_cutoff = CUTOFF.replace(tzinfo=None)
    extended_rows = {table: list(rows) for table, rows in baseline_rows.items()}
    for table, customer, seconds, pick, value in events:
        moment = naive_cutoff + timedelta(seconds=seconds)
        extended_rows[table].append(_future_event(table, customer, moment, pick, value))
    extended = duckdb.connect()
    create_unified_tables(extended, extended_rows)
    actual = compute_features(extended, [CUTOFF])

    pd.testing.assert_frame_equal(actual, expected)
    extended.close()


# ---- output file ----------------------------------------------------------------------------


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path) -> None:
    path = tmp_path / "customer_features.parquet"
    good = pd.DataFrame({"customer_id": ["a"], "x": [1.0]})
    write_features_atomically(good, path)

    class Unwritable(pd.DataFrame):
        def to_parquet(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_features_atomically(Unwritable({"customer_id": ["b"]}), path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), good)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_warehouse_memory_limit_bounds_duckdb(tmp_path) -> None:
    """``features.warehouse_memory_limit`` reaches DuckDB (ingest and build open the warehouse
    with it); a value DuckDB could not read is refused when the settings load."""
    from pydantic import ValidationError

    from features.ingest import connect_warehouse
    from omniretain.settings import FeatureSettings

    con = connect_warehouse(tmp_path / "warehouse.duckdb", "512MB")
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchall() == [("488.2 MiB",)]
    finally:
        con.close()
    with pytest.raises(ValidationError, match="warehouse_memory_limit"):
        FeatureSettings(warehouse_memory_limit="lots")
