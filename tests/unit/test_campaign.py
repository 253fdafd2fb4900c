"""Campaign selection: the budget is never exceeded, the best values are chosen, the control
group is a seeded, stratified random share of the audience."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.campaign import (
    CONTROL,
    TREATMENT,
    CampaignError,
    assign_control,
    audience_size,
    filter_segment,
    select_audience,
)


def _values(expected_values: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(len(expected_values))],
            "channel": "email",
            "expected_value": expected_values,
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 500, allow_nan=False), max_size=200),
    st.floats(0, 2000, allow_nan=False),
    st.sampled_from([0.2, 2.5, 6.0]),
    st.sampled_from([0.0, 0.1, 0.25]),
    st.integers(0, 10),
)
def test_the_treated_never_cost_more_than_the_budget_and_are_the_best(
    expected_values: list[float], budget: float, cost: float, share: float, seed: int
) -> None:
    audience = select_audience(_values(expected_values), budget, cost, share, seed)
    treated = audience[audience["group"] == TREATMENT]
    assert len(treated) * cost <= budget + 1e-9
    assert (audience["expected_value"] > 0).all()
    positive = sorted((v for v in expected_values if v > 0), reverse=True)
    # the audience is a prefix of the ranking: nobody left out is better than someone chosen
    if 0 < len(audience) < len(positive):
        assert audience["expected_value"].min() >= positive[len(audience)]
    assert audience["customer_id"].is_unique


def test_the_budget_buys_as_many_treated_contacts_as_it_can() -> None:
    audience = select_audience(_values([float(v) for v in range(1, 1001)]), 300.0, 3.0, 0.1, 0)
    treated = (audience["group"] == TREATMENT).sum()
    assert treated == 100
    assert (audience["group"] == CONTROL).sum() == pytest.approx(11, abs=1)


def test_nothing_positive_means_an_empty_audience() -> None:
    audience = select_audience(_values([-1.0, 0.0, -5.0]), 1000.0, 1.0, 0.1, 0)
    assert audience.empty


def test_control_is_seeded_and_stratified_by_value() -> None:
    values = np.linspace(1000, 1, 1000)
    first, again = assign_control(values, 0.1, seed=3), assign_control(values, 0.1, seed=3)
    assert (first == again).all()
    assert not (first == assign_control(values, 0.1, seed=4)).all()
    assert first.sum() == 100
    for decile in np.array_split(np.arange(1000), 10):  # each value decile holds its share
        assert first[decile].sum() == 10


@pytest.mark.parametrize(
    ("budget", "cost", "share", "candidates", "expected"),
    [
        (100.0, 10.0, 0.0, 50, 10),
        (100.0, 10.0, 0.5, 50, 20),
        (100.0, 0.0, 0.1, 7, 7),
        (5, 10, 0, 9, 0),
    ],
)
def test_audience_size(budget, cost, share, candidates, expected) -> None:
    assert audience_size(budget, cost, share, candidates) == expected


@pytest.mark.parametrize(("budget", "share"), [(-1.0, 0.1), (10.0, 1.0), (10.0, -0.1)])
def test_impossible_budgets_and_shares_are_refused(budget: float, share: float) -> None:
    with pytest.raises(CampaignError):
        audience_size(budget, 1.0, share, 10)


def test_segment_is_a_sql_condition_over_the_features() -> None:
    frame = pd.DataFrame({"customer_id": ["A", "B", "C"], "spend_365d": [10.0, 500.0, 900.0]})
    assert filter_segment(frame, "spend_365d > 100")["customer_id"].tolist() == ["B", "C"]
    assert filter_segment(frame, None) is frame
    with pytest.raises(CampaignError, match="segment"):
        filter_segment(frame, "no_such_column > 1")


def test_a_campaigns_expected_values_are_the_batch_scorings() -> None:
    """``action_values`` reads the decision matrices of batch scoring: for every customer the
    campaign's value of an action on a channel is the batch's, with the value and uplift
    champions, and the uplift model predicts with the batch's compiled, all-core trees."""
    from omniretain.settings import load_settings
    from serving.batch import (
        action_channel_columns,
        predict_uplift_trees,
        score_and_decide,
        score_frame,
    )
    from serving.campaign import action_values
    from training.model import fit_calibrated_classifier

    settings = load_settings()
    rng = np.random.default_rng(7)
    n = 400
    names = ["spend_365d", "days_since_last_purchase", "open_cases"]
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(n)],
            "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC"),
            "spend_365d": rng.gamma(2, 400, n),
            "days_since_last_purchase": rng.integers(0, 200, n).astype(float),
            "open_cases": rng.integers(0, 2, n).astype(float),
            "consent_email": (rng.random(n) < 0.7).astype(float),
            "consent_sms": (rng.random(n) < 0.5).astype(float),
        }
    )
    X = frame[names].to_numpy()
    churn_label = (X[:, 1] / 200 + rng.normal(0, 0.2, n) > 0.5).astype(int)
    churn, repurchase = (
        fit_calibrated_classifier(
            X[:250], y[:250], X[250:], y[250:], names, {"n_estimators": 15, "n_jobs": 1}
        )
        for y in (churn_label, 1 - churn_label)
    )

    class BoosterValue:  # the parts of training.value.CustomerValueModel scoring reads
        feature_names = names
        booster, best_iteration, scale = repurchase.booster, repurchase.best_iteration, 3000.0

    class DiscountByRecency:  # an uplift model whose effect varies per customer
        feature_names = ["days_since_last_purchase"]
        arms = [("retention_discount", "email"), ("retention_discount", "sms")]

        def __init__(self) -> None:
            self.predictors: list[object] = []

        def effects(self, matrix: np.ndarray, predict: object = None) -> np.ndarray:
            self.predictors.append(predict)
            reduction = -np.clip(matrix[:, 0] / 400, 0, 0.4)
            return np.column_stack([reduction, reduction / 2])

    value_model, uplift_model = BoosterValue(), DiscountByRecency()
    champions = {"value_model": value_model, "uplift_model": uplift_model}
    campaign = action_values(frame, churn, repurchase, settings, "retention_discount", **champions)
    batch = score_and_decide(frame, churn, repurchase, settings.actions, **champions)
    assert uplift_model.predictors == [predict_uplift_trees] * 2
    columns = [
        i
        for i, c in enumerate(action_channel_columns(settings.actions))
        if c.action.name == "retention_discount"
    ]
    best = batch.decisions.candidate_values[:, columns].max(axis=1)
    np.testing.assert_array_equal(campaign["expected_value"].to_numpy(), best)
    assert (campaign["expected_value"] > 0).sum() >= 10, "the fixture should value many"
    # where the batch itself chose the action, the campaign's value is the batch's decision
    scored = score_frame(frame, churn, repurchase, settings.actions, **champions)
    chose = (scored["action"] == "retention_discount").to_numpy()
    assert chose.sum() >= 5
    np.testing.assert_allclose(
        campaign.loc[chose, "expected_value"].round(2), scored.loc[chose, "expected_value"]
    )
    assert (campaign.loc[chose, "channel"] == scored.loc[chose, "channel"]).all()
