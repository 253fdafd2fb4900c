"""Uplift: outcomes after sends, Qini, and learners recovering a planted effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omniretain.settings import Action
from training.uplift import (
    CONTROL_ARM,
    CataloguePriors,
    UpliftDataError,
    catalogue_priors_qini,
    champion_gate,
    compare_learners,
    features_at_sends,
    fit_evaluated,
    fit_uplift,
    qini_coefficient,
    send_outcomes,
    time_holdout,
)


def test_outcome_is_churn_within_the_window_and_unobserved_sends_are_dropped() -> None:
    sends = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "occurred_at": pd.to_datetime(["2025-01-10", "2025-01-10", "2025-06-01"]),
        }
    )
    purchases = pd.DataFrame(
        {
            "customer_id": ["a", "b", "b"],
            "occurred_at": pd.to_datetime(["2025-02-01", "2025-01-09", "2025-05-01"]),
            "is_return": [False, False, False],
        }
    )
    out = send_outcomes(sends, purchases, pd.Timestamp("2025-07-01"), 90)
    assert out["customer_id"].tolist() == ["a", "b"]
    assert out["churned"].tolist() == [0, 1]  # b bought before and after, not within 90 days


def test_features_at_sends_use_the_last_snapshot_before_the_send() -> None:
    sends = pd.DataFrame(
        {"customer_id": ["a", "a"], "occurred_at": pd.to_datetime(["2025-02-10", "2025-01-10"])}
    )
    features = pd.DataFrame(
        {
            "customer_id": ["a", "a"],
            "event_timestamp": pd.to_datetime(["2025-01-01", "2025-02-01"], utc=True),
            "f": [1.0, 2.0],
        }
    )
    joined = features_at_sends(sends, features)
    assert joined["f"].tolist() == [2.0, 1.0]


def test_qini_is_positive_for_the_true_ranking_and_negative_for_its_reverse() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    responsive = rng.random(n) < 0.5
    treated = rng.random(n) < 0.5
    churned = (rng.random(n) < np.where(treated & responsive, 0.2, 0.5)).astype(int)
    benefit = responsive + rng.normal(0, 0.1, n)
    assert qini_coefficient(churned, treated, benefit) > 0.01
    assert qini_coefficient(churned, treated, -benefit) < -0.01
    assert np.isnan(qini_coefficient(churned, np.ones(n, bool), benefit))


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    """Sends where arm (discount, sms) cuts churn by 0.3 for customers with f > 0 only."""
    rng = np.random.default_rng(2)
    n = 4000
    f = rng.normal(size=n)
    arm = rng.integers(0, 3, size=n)  # 0 control, 1 discount/sms, 2 points/email (no effect)
    actions = np.array(["no_action", "discount", "points"])[arm]
    channels = np.array(["none", "sms", "email"])[arm]
    effect = np.where((arm == 1) & (f > 0), -0.3, 0.0)
    churned = (rng.random(n) < 0.5 + effect).astype(int)
    return pd.DataFrame(
        {
            "f": f,
            "noise": rng.normal(size=n),
            "action": actions,
            "channel": channels,
            "churned": churned,
            "campaign_id": [f"CMP-{i % 6}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("learner", ["s_learner", "t_learner"])
def test_learners_find_who_responds_with_a_negative_effect(planted, learner) -> None:
    model = fit_uplift(planted, ["f", "noise"], learner)
    assert model.arms == [("discount", "sms"), ("points", "email")]
    responsive = model.predict(np.array([1.5, 0.0]))
    unresponsive = model.predict(np.array([-1.5, 0.0]))
    assert responsive[("discount", "sms")] < -0.15
    assert abs(unresponsive[("discount", "sms")]) < 0.12
    assert responsive[("discount", "sms")] < responsive[("points", "email")]


def test_learners_are_measured_on_held_out_campaigns(planted) -> None:
    comparison = compare_learners(planted, ["f", "noise"], learners=("s_learner",))
    assert comparison["s_learner"]["discount|sms"] > 0.005  # the planted effect ranks first
    assert set(comparison["s_learner"]) == {
        "mean_qini",
        "random_targeting_qini",
        "discount|sms",
        "points|email",
    }


def test_fit_evaluated_refits_the_product_learner_on_every_campaign(planted) -> None:
    small = planted.iloc[:1800]
    model, comparison = fit_evaluated(small, ["f"])
    assert model.learner == "s_learner" and set(comparison) == {"s_learner", "t_learner"}
    assert model.evaluation["heldout_qini"] == comparison


def test_no_control_group_is_refused(planted) -> None:
    treated_only = planted[planted["action"] != CONTROL_ARM[0]]
    with pytest.raises(UpliftDataError, match="control"):
        fit_uplift(treated_only, ["f"], "t_learner")


def test_the_model_retains_the_responsive_customer(planted) -> None:
    model = fit_uplift(planted, ["f", "noise"], "s_learner")
    rows = np.array([[1.5, 0.0], [-1.5, 0.0]])
    reduction = -model.effects(rows)[:, model.arms.index(("discount", "sms"))]
    assert reduction[0] > 0.15  # retains the responsive customer: a positive reduction


def test_the_engine_gets_the_models_reduction_without_counting_risk_twice(planted) -> None:
    """The engine values the model's absolute reduction as it is, reduction x value - cost
    (no division by the churn score, no clip: a reduction larger than P(churn) keeps its
    value); an arm the model never saw keeps the catalogue prior times the movable share."""
    from omniretain.settings import Action
    from serving.decision import MODEL_UPLIFT_CONTEXT, decide_arrays, decision_table, uplift_matrix

    model = fit_uplift(planted, ["f", "noise"], "s_learner")
    discount = Action(name="discount", cost=2.0, channels=["sms"], goal="retention")
    other = Action(name="other", cost=1.0, channels=["app"], base_uplift=0.05)
    table = decision_table([discount, other])
    rows = np.array([[1.5, 0.0], [-1.5, 0.0]])
    churn, repurchase = np.array([0.4, 0.2]), np.array([0.7, 0.5])
    features = {
        "spend_365d": np.array([100.0, 100.0]),
        "consent_sms": np.array([1.0, 1.0]),
        "days_since_last_purchase": np.array([10.0, 200.0]),  # the second one is gone
    }
    uplift = uplift_matrix(
        model.effects(rows), model.arms, table, churn, repurchase, features=features
    )
    reduction = -model.effects(rows)[:, model.arms.index(("discount", "sms"))]
    decided = decide_arrays(
        features,
        churn,
        repurchase,
        [discount, other],
        MODEL_UPLIFT_CONTEXT,
        uplift=uplift,
    )
    sms = next(i for i, c in enumerate(table.columns) if c.action.name == "discount")
    app = next(i for i, c in enumerate(table.columns) if c.action.name == "other")
    np.testing.assert_allclose(decided.values[:, sms], reduction * 100.0 - 2.0)
    # the catalogue's relative prior times the movable share the engine uses without a model:
    # the retainable risk of a retention action (P(churn) while active, 0 once gone)
    np.testing.assert_allclose(uplift[:, app], 0.05 * churn * np.array([1.0, 0.0]))
    assert reduction[0] > churn[0] / 2  # big enough that the old clip at P(churn) mattered


def test_the_interaction_learner_reads_who_responds_through_the_traits() -> None:
    """A discount by SMS retains the promotion-driven (effect -0.3 x promo share), loyalty
    points by email the email openers; the shared model recovers both gradients, and a channel
    never paired with an action in the logs still gets the action's term."""
    rng = np.random.default_rng(6)
    n = 6000
    promo, opens = rng.random(n), rng.random(n)
    arm = rng.integers(0, 4, size=n)  # control, discount/sms, points/email, discount/email
    actions = np.array(["no_action", "discount", "points", "discount"])[arm]
    channels = np.array(["none", "sms", "email", "email"])[arm]
    effect = np.select(
        [actions == "discount", actions == "points"], [-0.3 * promo, -0.25 * opens], 0.0
    )
    frame = pd.DataFrame(
        {
            "promo_share_365d": promo,
            "email_open_rate_90d": opens,
            "noise": rng.normal(size=n),
            "action": actions,
            "channel": channels,
            "churned": (rng.random(n) < 0.5 + effect).astype(int),
        }
    )
    names = ["promo_share_365d", "email_open_rate_90d", "noise"]
    model = fit_uplift(frame, names, "interaction")
    rows = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])  # price-driven; email opener
    effects = model.predict(rows[:1]), model.predict(rows[1:])
    assert effects[0][("discount", "sms")] < effects[1][("discount", "sms")] - 0.1
    assert effects[1][("points", "email")] < effects[0][("points", "email")] - 0.1
    assert model.interaction is not None
    assert [m.name for m in model.interaction.modifiers] == ["email_open_rate", "promotion_share"]


def test_the_interaction_learner_needs_a_trait_column() -> None:
    frame = pd.DataFrame(
        {"f": [0.0, 1.0] * 50, "action": ["no_action", "d"] * 50, "channel": ["none", "sms"] * 50}
    ).assign(churned=[0, 1] * 50)
    with pytest.raises(UpliftDataError, match="modifiers"):
        fit_uplift(frame, ["f"], "interaction")
    comparison = compare_learners(
        frame.assign(campaign_id=[f"CMP-{i % 4}" for i in range(100)]),
        ["f"],
        learners=("interaction",),
    )
    assert np.isnan(comparison["interaction"]["mean_qini"])  # measured as unable, not a crash


def test_random_targeting_sets_the_bar_a_champion_must_clear(planted) -> None:
    """A planted effect ranks far above what shuffled scores reach by chance; with the outcomes
    shuffled (no effect left to find) the model's held-out Qini stays under that bar."""
    found = compare_learners(planted, ["f", "noise"], learners=("s_learner",))["s_learner"]
    assert found["mean_qini"] > found["random_targeting_qini"] > 0
    rng = np.random.default_rng(8)
    noise = planted.assign(churned=rng.permutation(planted["churned"].to_numpy()))
    none = compare_learners(noise, ["f", "noise"], learners=("s_learner",))["s_learner"]
    assert none["mean_qini"] <= none["random_targeting_qini"]


@pytest.mark.parametrize("learner", ["s_learner", "t_learner"])
def test_effects_with_a_batch_predict_function_equal_the_default(planted, learner) -> None:
    """Batch scoring passes its own predict (compiled, every core); the S-learner then scores
    arm by arm instead of stacking: the same effects."""
    model = fit_uplift(planted, ["f", "noise"], learner)
    rows = planted[["f", "noise"]].to_numpy()[:300]
    calls = []

    def predict(booster, matrix):
        calls.append(matrix.shape)
        return booster.predict(matrix, num_threads=1)

    np.testing.assert_allclose(model.effects(rows, predict=predict), model.effects(rows))
    assert calls and all(shape[0] == len(rows) for shape in calls)  # never a stacked copy


CATALOGUE = [
    Action(name="no_action", channels=[]),
    Action(name="discount", channels=["sms"], base_uplift=0.2),
    Action(name="points", channels=["email"], base_uplift=0.1, goal="growth"),
]


def _priors(churn_column: str) -> CataloguePriors:
    return CataloguePriors(
        CATALOGUE,
        lambda frame: frame[churn_column].to_numpy(),
        lambda frame: np.full(len(frame), 0.4),
    )


def test_catalogue_priors_score_a_send_as_the_engine_would() -> None:
    """Prior x retainable risk for a retention arm (0 once the customer is gone), prior x
    (1 - P(repurchase)) for a growth arm, NaN for an arm the catalogue does not have."""
    sends = pd.DataFrame({"risk": [0.5, 0.5], "days_since_last_purchase": [10.0, 200.0]})
    reductions = _priors("risk").reductions(
        sends, [("discount", "sms"), ("points", "email"), ("call", "phone")]
    )
    np.testing.assert_allclose(reductions[:, 0], [0.1, 0.0])
    np.testing.assert_allclose(reductions[:, 1], [0.06, 0.06])
    assert np.isnan(reductions[:, 2]).all()
    assert _priors("risk").reductions(sends, []).shape == (2, 0)  # no arm: no column, no error


def test_a_model_no_better_than_the_catalogue_priors_stays_challenger() -> None:
    """The discount's effect grows with f, and the priors' movable share (a churn score
    ``informed`` by f) ranks the sends in the true order: the model beats chance (the old gate)
    but not the priors on the same held-out sends, so it stays challenger. With a churn score
    that knows nothing (``blind``) the priors rank at random and the same model wins."""
    rng = np.random.default_rng(4)
    n = 3000
    f = rng.normal(size=n)
    treated = rng.random(n) < 0.6
    responsiveness = 1.0 / (1.0 + np.exp(-4.0 * f))
    churned = (rng.random(n) < 0.5 - 0.35 * responsiveness * treated).astype(int)
    frame = pd.DataFrame(
        {
            "f": f,
            "noise": rng.normal(size=n),
            "action": np.where(treated, "discount", "no_action"),
            "channel": np.where(treated, "sms", "none"),
            "churned": churned,
            "campaign_id": [f"CMP-{i % 6}" for i in range(n)],
            "informed": responsiveness,
            "blind": rng.random(n),
        }
    )
    matched = compare_learners(
        frame, ["f", "noise"], learners=("s_learner",), priors=_priors("informed")
    )["s_learner"]
    assert matched["mean_qini"] > matched["random_targeting_qini"]  # would pass the old gate
    assert matched["mean_qini_on_catalogue_arms"] <= matched["catalogue_priors_qini"]
    promote, reason = champion_gate(matched)
    assert not promote and "catalogue priors" in reason

    train_part, holdout = time_holdout(frame)
    model = fit_uplift(train_part, ["f", "noise"], "s_learner")
    beaten = {**matched, **catalogue_priors_qini(model, holdout, _priors("blind"))}
    assert beaten["catalogue_priors_qini"] < matched["catalogue_priors_qini"]
    promote, reason = champion_gate(beaten)
    assert promote, reason


def test_the_champion_gate_needs_both_bars_and_says_which_was_missed() -> None:
    scores = {"mean_qini": 0.004, "random_targeting_qini": 0.003}
    promote, reason = champion_gate(scores)  # no catalogue to compare with: chance alone
    assert promote and "not measured" in reason
    above = {**scores, "catalogue_priors_qini": 0.001, "mean_qini_on_catalogue_arms": 0.004}
    assert champion_gate(above)[0]
    under_priors = {**above, "catalogue_priors_qini": 0.005}
    promote, reason = champion_gate(under_priors)
    assert not promote and "0.00400 <= 0.00500" in reason and "keeps the priors" in reason
    within_noise = {**above, "qini_margin_over_priors_low": -0.0005}  # the bootstrap's 5%
    promote, reason = champion_gate(within_noise)
    assert not promote and "not above 0" in reason and "keeps the priors" in reason
    under_chance = {**above, "mean_qini": 0.002, "mean_qini_on_catalogue_arms": 0.002}
    promote, reason = champion_gate(under_chance)
    assert not promote and "0.00200 <= 0.00300" in reason
