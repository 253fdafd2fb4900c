"""Batch scoring: the vectorised decision must be the decision of ``serving.decision.decide``.

Hypothesis draws whole populations (consents, cases, carts, values, scores, NaNs) and every row
of :func:`serving.batch.decide_batch` is compared with ``decide`` on the same customer; plus the
invariants the issue names (consent never violated, ineligible actions never chosen, no action
when nothing pays) and the scoring of a frame with a tiny real LightGBM model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniretain.settings import load_settings
from serving.batch import (
    BatchScoringError,
    action_channel_columns,
    decide_batch,
    feature_matrix,
    read_latest_snapshot,
    risk_bands,
    score_frame,
)
from serving.decision import (
    CONSENT_FEATURE_BY_CHANNEL,
    NO_ACTION,
    action_eligible,
    channel_allowed,
    decide,
    risk_band,
)

CATALOGUE = load_settings().actions
MAYBE_NAN = st.one_of(st.just(math.nan), st.none())


def _binary_or_missing() -> st.SearchStrategy:
    return st.one_of(st.sampled_from([0.0, 1.0]), MAYBE_NAN)


customer_rows = st.fixed_dictionaries(
    {
        "spend_365d": st.one_of(st.floats(-200, 5000, allow_nan=False), MAYBE_NAN),
        "open_cases": st.one_of(st.sampled_from([0.0, 1.0, 2.0]), MAYBE_NAN),
        "hours_since_last_abandoned_cart": st.one_of(
            st.sampled_from([1.0, 71.9, 72.0, 72.1, 500.0]), MAYBE_NAN
        ),
        **{name: _binary_or_missing() for name in CONSENT_FEATURE_BY_CHANNEL.values()},
        "loyalty_member": _binary_or_missing(),
        "churn": st.floats(0.0, 1.0),
        "repurchase": st.floats(0.0, 1.0),
    }
)


def _frame(rows: list[dict]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    frame = pd.DataFrame(rows).astype({"churn": float, "repurchase": float})
    churn = frame.pop("churn").to_numpy()
    repurchase = frame.pop("repurchase").to_numpy()
    frame = frame.astype(float)  # None -> NaN, as in the parquet table
    return frame, churn, repurchase


@settings(max_examples=60, deadline=None)
@given(st.lists(customer_rows, min_size=1, max_size=30))
def test_batch_decision_equals_decide_row_by_row(rows: list[dict]) -> None:
    frame, churn, repurchase = _frame(rows)
    batch = decide_batch(frame, churn, repurchase, CATALOGUE)
    for index, record in enumerate(frame.to_dict("records")):
        single = decide(f"C{index}", record, churn[index], repurchase[index], {}, CATALOGUE)
        assert (batch.action[index], batch.channel[index]) == (single.action, single.channel)
        assert batch.expected_value[index] == pytest.approx(single.expected_value, abs=0.006)


@settings(max_examples=60, deadline=None)
@given(st.lists(customer_rows, min_size=1, max_size=30))
def test_batch_never_breaks_consent_or_eligibility_and_only_acts_when_it_pays(
    rows: list[dict],
) -> None:
    frame, churn, repurchase = _frame(rows)
    batch = decide_batch(frame, churn, repurchase, CATALOGUE)
    columns = action_channel_columns(CATALOGUE)
    for index, record in enumerate(frame.to_dict("records")):
        if batch.column[index] < 0:
            assert batch.action[index] == NO_ACTION
            assert batch.expected_value[index] == 0.0
            assert not (batch.candidate_values[index] > 0).any()
            continue
        chosen = columns[batch.column[index]]
        assert channel_allowed(chosen.channel, record)
        assert action_eligible(chosen.action, record, churn[index])
        assert batch.expected_value[index] > 0


def test_no_catalogue_entry_besides_no_action_means_no_action_for_everyone() -> None:
    frame, churn, repurchase = _frame(
        [{"spend_365d": 900.0, "churn": 0.9, "repurchase": 0.1, "consent_email": 1.0}]
    )
    only_no_action = [a for a in CATALOGUE if a.name == NO_ACTION]
    batch = decide_batch(frame, churn, repurchase, only_no_action)
    assert list(batch.action) == [NO_ACTION]


def test_an_uplift_matrix_of_the_wrong_shape_is_refused() -> None:
    frame, churn, repurchase = _frame([{"spend_365d": 1.0, "churn": 0.5, "repurchase": 0.5}])
    with pytest.raises(ValueError, match="shape"):
        decide_batch(frame, churn, repurchase, CATALOGUE, uplift=np.zeros((1, 1)))


def test_an_uplift_matrix_changes_the_winner() -> None:
    """Per-customer uplift (what the uplift models provide) overrides the catalogue prior."""
    frame, churn, repurchase = _frame(
        [
            {
                "spend_365d": 1000.0,
                "churn": 0.8,
                "repurchase": 0.2,
                "consent_email": 1.0,
                "consent_sms": 1.0,
                "consent_app": 0.0,
                "consent_call_center": 0.0,
                "loyalty_member": 1.0,
            }
        ]
    )
    columns = action_channel_columns(CATALOGUE)
    uplift = np.zeros((1, len(columns)))
    target = next(
        i
        for i, c in enumerate(columns)
        if (c.action.name, c.channel) == ("loyalty_points", "email")
    )
    uplift[0, target] = 0.2
    batch = decide_batch(frame, churn, repurchase, CATALOGUE, uplift=uplift)
    assert (batch.action[0], batch.channel[0]) == ("loyalty_points", "email")


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_risk_bands_equal_the_scalar_risk_band(probabilities: list[float]) -> None:
    assert list(risk_bands(np.array(probabilities))) == [risk_band(p) for p in probabilities]


def test_a_feature_the_model_needs_but_the_table_lacks_is_named() -> None:
    with pytest.raises(BatchScoringError, match="spend_365d"):
        feature_matrix(pd.DataFrame({"a": [1.0]}), ["a", "spend_365d"])


def test_latest_snapshot_keeps_only_the_newest_rows(tmp_path) -> None:
    path = tmp_path / "features.parquet"
    pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C1"],
            "event_timestamp": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-02-01"], utc=True),
            "spend_365d": [1.0, 2.0, 3.0],
        }
    ).to_parquet(path, index=False)
    latest = read_latest_snapshot(path)
    assert sorted(latest["customer_id"]) == ["C1", "C2"]
    assert sorted(latest["spend_365d"]) == [2.0, 3.0]
    with pytest.raises(BatchScoringError, match="build-features"):
        read_latest_snapshot(tmp_path / "absent.parquet")


@pytest.fixture(scope="module")
def tiny_models():
    """Two real calibrated LightGBM models on 3 features (seconds, not minutes)."""
    from training.model import fit_calibrated_classifier

    rng = np.random.default_rng(0)
    names = ["spend_365d", "days_since_last_purchase", "open_cases"]
    X = np.column_stack(
        [rng.gamma(2, 200, 600), rng.integers(0, 300, 600), rng.integers(0, 2, 600)]
    )
    churn_label = (X[:, 1] / 300 + rng.normal(0, 0.3, 600) > 0.5).astype(int)
    repurchase_label = 1 - churn_label
    return tuple(
        fit_calibrated_classifier(
            X[:400], y[:400], X[400:], y[400:], names, {"n_estimators": 20, "n_jobs": 1}
        )
        for y in (churn_label, repurchase_label)
    )


def test_score_frame_scores_everyone_and_explains_only_the_top(tiny_models) -> None:
    churn, repurchase = tiny_models
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC"),
            "spend_365d": rng.gamma(2, 300, n),
            "days_since_last_purchase": rng.integers(0, 300, n).astype(float),
            "open_cases": rng.integers(0, 2, n).astype(float),
            "consent_email": 1.0,
            "consent_sms": 0.0,
        }
    )
    scored = score_frame(frame, churn, repurchase, CATALOGUE, reasons_for=5)
    assert len(scored) == n and scored["customer_id"].tolist() == frame["customer_id"].tolist()
    assert scored["churn_probability"].between(0, 1).all()
    assert (scored["channel"] != "sms").all()  # nobody consented to SMS
    actioned = scored["action"] != NO_ACTION
    assert actioned.sum() >= 5, "the fixture should give several customers an action"
    explained = scored["churn_drivers"].notna()
    assert explained.sum() == 5
    assert (explained <= actioned).all()
    unexplained_values = scored.loc[~explained & actioned, "expected_value"].to_numpy()
    assert scored.loc[explained, "expected_value"].min() >= np.max(unexplained_values, initial=0)


def test_control_group_and_policy_blocks_apply_to_the_batch_as_to_recommend() -> None:
    frame, churn, repurchase = _frame(
        [
            {"spend_365d": 900.0, "churn": 0.9, "repurchase": 0.1, "consent_email": 1.0},
            {"spend_365d": 900.0, "churn": 0.9, "repurchase": 0.1, "consent_email": 1.0},
            {"spend_365d": 900.0, "churn": 0.9, "repurchase": 0.1, "consent_email": 1.0},
        ]
    )
    columns = action_channel_columns(CATALOGUE)
    free = decide_batch(frame, churn, repurchase, CATALOGUE)
    assert list(free.channel) == ["email"] * 3
    blocked = np.zeros((3, len(columns)), dtype=bool)
    blocked[1] = [c.channel == "email" for c in columns]  # e.g. the weekly email cap is used
    decided = decide_batch(
        frame, churn, repurchase, CATALOGUE, blocked=blocked, control=np.array([0, 0, 1], bool)
    )
    assert decided.channel[0] == "email"
    assert decided.channel[1] != "email"
    assert (decided.action[2], decided.expected_value[2]) == (NO_ACTION, 0.0)
    assert decided.control_group.tolist() == [False, False, True]


def test_score_frame_uses_the_value_and_uplift_models_like_recommend(tiny_models) -> None:
    """A value model replaces spend; an uplift model's arm replaces the catalogue prior."""
    from serving.decision import decision_table

    churn, repurchase = tiny_models
    frame = pd.DataFrame(
        {
            "customer_id": ["C1"],
            "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC"),
            "spend_365d": [5.0],
            "days_since_last_purchase": [85.0],  # at risk, still active: retainable
            "open_cases": [0.0],
            "consent_email": [1.0],
            "loyalty_member": [1.0],
        }
    )

    class FixedBooster:
        def predict(self, matrix: np.ndarray, **_: object) -> np.ndarray:
            return np.full(len(matrix), 2500.0)

    class FixedValue:  # the parts of training.value.CustomerValueModel that scoring reads
        feature_names = ["spend_365d"]
        booster, best_iteration, scale = FixedBooster(), 0, 2.0

    class LoyaltyWorks:
        feature_names = ["spend_365d"]
        arms = [("loyalty_points", "email")]

        def effects(self, matrix: np.ndarray, predict: object = None) -> np.ndarray:
            return np.full((len(matrix), 1), -0.5)  # P(churn) down by 0.5

    plain = score_frame(frame, churn, repurchase, CATALOGUE)
    assert plain["action"].iloc[0] == NO_ACTION  # 5.0 of spend is worth no contact
    valued = score_frame(frame, churn, repurchase, CATALOGUE, value_model=FixedValue())
    assert valued["customer_value"].iloc[0] == 5000.0
    assert valued["action"].iloc[0] != NO_ACTION
    uplifted = score_frame(
        frame, churn, repurchase, CATALOGUE, value_model=FixedValue(), uplift_model=LoyaltyWorks()
    )
    assert (uplifted["action"].iloc[0], uplifted["channel"].iloc[0]) == ("loyalty_points", "email")
    assert len(decision_table(CATALOGUE).columns) == len(action_channel_columns(CATALOGUE))


def test_compiled_champions_score_the_batch_as_lightgbm(tiny_models, tmp_path) -> None:
    """The same frame scored by LightGBM and by the champions' compiled trees: same scores,
    same decisions (compiled on first use, as ``omniretain score`` does)."""
    from serving import compiled

    churn, repurchase = tiny_models
    rng = np.random.default_rng(2)
    n = 300
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC"),
            "spend_365d": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2, 300, n)),
            "days_since_last_purchase": rng.integers(0, 300, n).astype(float),
            "open_cases": rng.integers(0, 2, n).astype(float),
            "consent_email": 1.0,
        }
    )
    by_lightgbm = score_frame(frame, churn, repurchase, CATALOGUE)
    report = compiled.compile_boosters(
        [(m.booster, m.best_iteration, True) for m in (churn, repurchase)], tmp_path
    )
    try:
        assert report.failed == 0 and compiled.is_compiled(churn.booster, raw_score=True)
        by_compiled = score_frame(frame, churn, repurchase, CATALOGUE)
    finally:
        compiled.forget(churn.booster)
        compiled.forget(repurchase.booster)
    pd.testing.assert_frame_equal(by_compiled, by_lightgbm)


def test_control_group_mask_equals_the_control_group_of_recommend() -> None:
    from serving.batch import control_group_mask
    from serving.decision import in_control_group

    settings = load_settings()
    ids = [f"C{i:06d}" for i in range(4000)] + ["", "o'brien", "émile", "42"]
    mask = control_group_mask(ids, settings)
    share, salt = settings.serving.control_share, settings.serving.control_salt
    assert mask.tolist() == [in_control_group(i, share, salt) for i in ids]
    assert 0 < mask.sum() < len(ids)
    wider = settings.model_copy(deep=True)
    wider.serving.control_share, wider.serving.control_salt = 0.5, "another salt"
    assert control_group_mask(ids, wider).tolist() == [
        in_control_group(i, 0.5, "another salt") for i in ids
    ]
    wider.serving.control_share = 0.0
    assert not control_group_mask(ids, wider).any()


@pytest.fixture(scope="module")
def wide_churn_model():
    """A real churn model on 8 features with interactions, where path attribution and TreeSHAP
    rank the drivers differently for many customers (a 3-feature model cannot tell them apart)."""
    from training.model import fit_calibrated_classifier

    rng = np.random.default_rng(4)
    n = 2000
    frame = pd.DataFrame(
        {
            "days_since_last_purchase": rng.exponential(90, n),
            "purchases_90d": rng.poisson(3, n).astype(float),
            "spend_365d": rng.gamma(2, 400, n),
            "open_cases": rng.integers(0, 3, n).astype(float),
            "tenure_days": rng.uniform(30, 2000, n),
            "returns_365d": rng.poisson(1, n).astype(float),
            "contacts_90d": rng.poisson(2, n).astype(float),
            "last_nps": rng.integers(0, 11, n).astype(float),
        }
    )
    logit = (
        0.02 * (frame["days_since_last_purchase"] - 90) * (1 + frame["open_cases"])
        - 0.3 * frame["purchases_90d"]
        + 0.2 * frame["contacts_90d"] * (frame["last_nps"] < 6)
        + 0.3 * frame["returns_365d"]
        - 0.0005 * frame["tenure_days"]
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = frame.to_numpy()
    params = {"n_estimators": 60, "num_leaves": 15, "learning_rate": 0.1, "n_jobs": 1}
    churn = fit_calibrated_classifier(
        X[:1400], label[:1400], X[1400:], label[1400:], list(frame.columns), params
    )
    return churn, frame


@pytest.mark.parametrize("method", ["path", "treeshap"])
def test_batch_reasons_are_the_words_recommend_serves(
    tiny_models, wide_churn_model, method: str
) -> None:
    """The churn drivers of ``omniretain score`` are ``/recommend``'s for the same customer and
    model: the service's contribution cache (``serving.reasons`` = ``method``) on the row it
    scores, then ``decide``'s reasons, against the batch's ``churn_drivers``."""
    from types import SimpleNamespace

    from serving.reasons import ContributionCache

    _, repurchase = tiny_models  # another model's features: the frame holds both
    churn, features = wide_churn_model
    n = 300
    frame = features.iloc[:n].assign(
        customer_id=[f"C{i}" for i in range(n)],
        event_timestamp=pd.Timestamp("2025-06-01", tz="UTC"),
        consent_email=1.0,
    )
    scored = score_frame(frame, churn, repurchase, CATALOGUE, reasons_for=n, reasons=method)
    explained = scored.index[scored["churn_drivers"].notna()]
    assert len(explained) >= 10, "the fixture should give many customers an action"
    served = ContributionCache(method=method)  # what the service holds (serving.reasons)
    champion = SimpleNamespace(model=churn, version="1")
    matrix = feature_matrix(frame, churn.feature_names)
    prefix = "Churn risk is raised by: "
    for row in explained:
        record = frame.iloc[row].to_dict()
        decision = decide(
            record["customer_id"],
            record,
            float(scored.loc[row, "churn_probability"]),
            float(scored.loc[row, "repurchase_probability"]),
            served.get(champion, matrix[row : row + 1]),
            CATALOGUE,
        )
        words = [r[len(prefix) : -1] for r in decision.reasons if r.startswith(prefix)]
        assert scored.loc[row, "churn_drivers"] == "; ".join(words), record["customer_id"]
