"""The decision engine: eligibility, consent, expected value, ranking and reasons.

Plain dicts and the real action catalogue (``configs/actions.yaml``); Hypothesis for the
invariants that must hold for every customer, and one tiny LightGBM model for reasons built from
real ``pred_contrib`` output.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contract import DECISION_FEATURES
from omniretain.settings import Action, load_settings
from serving.decision import (
    CONSENT_FEATURE_BY_CHANNEL,
    Decision,
    DecisionContext,
    action_eligible,
    channel_allowed,
    decide,
    expected_value,
    retainable_risk,
    risk_band,
)
from serving.reasons import describe_feature, readable_feature_name, top_churn_drivers

CATALOGUE: list[Action] = load_settings().actions
BY_NAME = {action.name: action for action in CATALOGUE}


def customer(**overrides: float) -> dict[str, float]:
    """An at-risk, valuable customer who consented to everything and has no special reason,
    still active (bought within the churn window: retainable)."""
    features = {
        "days_since_last_purchase": 70.0,
        "purchases_90d": 0.0,
        "spend_365d": 800.0,
        "channel_breadth_90d": 1.0,
        "open_cases": 0.0,
        "abandoned_carts_30d": 0.0,
        "hours_since_last_abandoned_cart": 99999.0,
        "consent_email": 1.0,
        "consent_sms": 1.0,
        "consent_app": 1.0,
        "consent_call_center": 1.0,
        "loyalty_member": 1.0,
    }
    features.update(overrides)
    return features


def no_consent() -> dict[str, float]:
    return {feature: 0.0 for feature in CONSENT_FEATURE_BY_CHANNEL.values()}


def test_the_catalogue_and_the_contract_have_what_the_engine_relies_on() -> None:
    assert {"no_action", "service_callback", "cart_reminder"} <= set(BY_NAME)
    assert set(CONSENT_FEATURE_BY_CHANNEL.values()) <= set(DECISION_FEATURES)
    for name in ("open_cases", "hours_since_last_abandoned_cart", "spend_365d"):
        assert name in DECISION_FEATURES


# ---- risk bands -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("probability", "band"),
    [(0.0, "low"), (0.29, "low"), (0.3, "medium"), (0.59, "medium"), (0.6, "high"), (1.0, "high")],
)
def test_risk_band_edges(probability: float, band: str) -> None:
    assert risk_band(probability) == band


@given(st.floats(0, 1), st.floats(0, 1))
def test_risk_band_is_monotonic(a: float, b: float) -> None:
    order = {"low": 0, "medium": 1, "high": 2}
    low, high = sorted((a, b))
    assert order[risk_band(low)] <= order[risk_band(high)]


# ---- eligibility and consent ---------------------------------------------------------------
def test_service_callback_needs_an_open_case() -> None:
    callback = BY_NAME["service_callback"]
    assert not action_eligible(callback, customer(open_cases=0), 0.8)
    assert action_eligible(callback, customer(open_cases=2), 0.8)
    assert not action_eligible(callback, customer(open_cases=float("nan")), 0.8)


def test_cart_reminder_needs_a_cart_abandoned_within_72_hours() -> None:
    reminder = BY_NAME["cart_reminder"]
    assert action_eligible(reminder, customer(hours_since_last_abandoned_cart=72), 0.1)
    assert action_eligible(reminder, customer(hours_since_last_abandoned_cart=3), 0.1)
    assert not action_eligible(reminder, customer(hours_since_last_abandoned_cart=72.5), 0.1)
    assert not action_eligible(reminder, customer(hours_since_last_abandoned_cart=99999), 0.1)
    missing = customer()
    del missing["hours_since_last_abandoned_cart"]
    assert not action_eligible(reminder, missing, 0.1)


def test_retention_actions_need_a_customer_at_risk() -> None:
    discount = BY_NAME["retention_discount"]
    assert not action_eligible(discount, customer(), 0.1)
    assert action_eligible(discount, customer(), 0.3)
    assert not action_eligible(discount, customer(), 0.5, DecisionContext(at_risk_threshold=0.7))


def test_no_action_is_never_a_candidate() -> None:
    assert not action_eligible(BY_NAME["no_action"], customer(), 0.9)


@pytest.mark.parametrize("channel", sorted(CONSENT_FEATURE_BY_CHANNEL))
def test_consented_channels_need_their_consent_flag_at_one(channel: str) -> None:
    feature = CONSENT_FEATURE_BY_CHANNEL[channel]
    assert channel_allowed(channel, {feature: 1.0})
    assert not channel_allowed(channel, {feature: 0.0})
    assert not channel_allowed(channel, {feature: 0.5})
    assert not channel_allowed(channel, {feature: float("nan")})
    assert not channel_allowed(channel, {})


def test_store_and_web_need_no_consent_and_unknown_channels_are_refused() -> None:
    assert channel_allowed("store", no_consent())
    assert channel_allowed("web", no_consent())
    assert not channel_allowed("social", customer())
    assert not channel_allowed("carrier_pigeon", customer())


# ---- expected value and choice -------------------------------------------------------------
def test_expected_value_formulas() -> None:
    discount, reminder = BY_NAME["retention_discount"], BY_NAME["cart_reminder"]
    assert expected_value(discount, 0.06, 0.5, 0.9, 800) == pytest.approx(0.5 * 0.06 * 800 - 6)
    assert expected_value(reminder, 0.02, 0.5, 0.9, 800) == pytest.approx(0.1 * 0.02 * 800 - 0.2)


def test_the_best_expected_value_wins_with_the_numbers_of_the_formula() -> None:
    decision = decide("c1", customer(open_cases=1), 0.7, 0.2, {}, CATALOGUE)
    # service_callback: 0.7 x 0.09 x 800 - 8 = 42.4 beats the discount: 0.7 x 0.06 x 800 - 6.
    assert (decision.action, decision.channel) == ("service_callback", "call_center")
    assert decision.expected_value == pytest.approx(42.4)
    assert decision.alternatives[0].action == "retention_discount"
    assert decision.alternatives[0].expected_value == pytest.approx(27.6)


def test_no_open_case_means_the_next_best_retention_action() -> None:
    decision = decide("c1", customer(), 0.7, 0.2, {}, CATALOGUE)
    assert decision.action == "retention_discount"
    assert decision.channel == "email"  # first consented channel in catalogue order


def test_channel_follows_consent() -> None:
    features = customer(consent_email=0.0, consent_sms=0.0)
    decision = decide("c1", features, 0.7, 0.2, {}, CATALOGUE)
    assert (decision.action, decision.channel) == ("retention_discount", "app")


def test_without_any_consent_only_the_store_is_left() -> None:
    decision = decide("c1", customer(**no_consent()), 0.7, 0.2, {}, CATALOGUE)
    assert (decision.action, decision.channel) == ("loyalty_points", "store")


def test_an_email_prior_counts_only_the_emails_read() -> None:
    """The catalogue prior on a channel with a reach feature (email: the open rate) is
    multiplied by it: an offer in an unread email retains nobody."""
    from serving.decision import decide_arrays, decision_table

    features = customer(email_open_rate_90d=0.25)
    decision = decide("c1", features, 0.7, 0.2, {}, CATALOGUE)
    assert (decision.action, decision.channel) == ("retention_discount", "sms")
    table = decision_table(CATALOGUE)
    values = decide_arrays(
        {name: np.array([value]) for name, value in features.items()}, [0.7], [0.2], CATALOGUE
    ).values[0]
    email = next(
        i
        for i, c in enumerate(table.columns)
        if (c.action.name, c.channel) == ("retention_discount", "email")
    )
    assert values[email] == pytest.approx(0.7 * 0.06 * 0.25 * 800 - 6)
    only_email = customer(email_open_rate_90d=0.5, consent_sms=0.0, consent_app=0.0)
    chosen = decide("c1", only_email, 0.7, 0.2, {}, CATALOGUE, blocked_channels={"store": "x"})
    assert (chosen.action, chosen.channel) == ("retention_discount", "email")
    assert "50% of email messages read" in chosen.reasons[-1]
    assert chosen.expected_value == pytest.approx(0.7 * 0.06 * 0.5 * 800 - 6)


def test_loyalty_points_need_a_loyalty_member() -> None:
    points = BY_NAME["loyalty_points"]
    assert action_eligible(points, customer(), 0.7)
    for member in (0.0, float("nan")):
        assert not action_eligible(points, customer(loyalty_member=member), 0.7)
    decision = decide("c1", customer(loyalty_member=0.0, **no_consent()), 0.7, 0.2, {}, CATALOGUE)
    assert decision.action == "no_action"  # the store offer was double points: not for them


def test_a_low_risk_customer_without_a_growth_reason_gets_no_action() -> None:
    decision = decide("c1", customer(spend_365d=50_000.0), 0.1, 0.2, {}, CATALOGUE)
    assert (decision.action, decision.channel, decision.expected_value) == ("no_action", "none", 0)
    assert decision.alternatives == []
    assert "low" in decision.reasons[-1]


def test_a_low_risk_customer_with_a_fresh_abandoned_cart_gets_a_reminder() -> None:
    features = customer(hours_since_last_abandoned_cart=5.0, abandoned_carts_30d=1.0)
    decision = decide("c1", features, 0.1, 0.3, {}, CATALOGUE)
    assert (decision.action, decision.channel) == ("cart_reminder", "email")
    assert decision.expected_value == pytest.approx(0.7 * 0.02 * 800 - 0.2)


def test_no_action_when_nothing_pays_for_itself() -> None:
    decision = decide("c1", customer(spend_365d=10.0), 0.9, 0.2, {}, CATALOGUE)
    assert (decision.action, decision.expected_value) == ("no_action", 0.0)
    assert decision.alternatives, "the runner-ups still show what was weighed"
    assert all(alt.expected_value <= 0 for alt in decision.alternatives)
    assert "cost more" in decision.reasons[-1]


def test_negative_or_missing_spend_puts_nothing_at_stake() -> None:
    for features in (customer(spend_365d=-300.0), customer(spend_365d=float("nan"))):
        assert decide("c1", features, 0.95, 0.1, {}, CATALOGUE).action == "no_action"


def test_an_uplift_model_plugs_in_through_the_context() -> None:
    def sms_works_best(action: Action, channel: str, features: dict[str, float]) -> float:
        return 0.5 if channel == "sms" else action.base_uplift

    context = DecisionContext(uplift=sms_works_best)
    decision = decide("c1", customer(), 0.7, 0.2, {}, CATALOGUE, context)
    assert (decision.action, decision.channel) == ("retention_discount", "sms")
    assert decision.expected_value == pytest.approx(0.7 * 0.5 * 800 - 6)


def test_alternatives_hold_one_entry_per_action_at_most_three_sorted() -> None:
    decision = decide("c1", customer(open_cases=1), 0.9, 0.2, {}, CATALOGUE)
    names = [alt.action for alt in decision.alternatives]
    assert len(names) == 3 == len(set(names))
    assert decision.action not in names and "no_action" not in names
    values = [alt.expected_value for alt in decision.alternatives]
    assert values == sorted(values, reverse=True)
    assert all(v <= decision.expected_value for v in values)


def test_decision_serialises_to_the_documented_json() -> None:
    decision = decide("c1", customer(), 0.7, 0.2, {"days_since_last_purchase": 0.8}, CATALOGUE)
    payload = decision.model_dump()
    assert set(payload) == {
        "action",
        "channel",
        "expected_value",
        "reasons",
        "alternatives",
        "propensity",
        "explored",
        "control_group",
    }
    assert (payload["propensity"], payload["explored"], payload["control_group"]) == (
        1.0,
        False,
        False,
    )
    assert set(payload["alternatives"][0]) == {"action", "channel", "expected_value"}
    assert Decision.model_validate_json(decision.model_dump_json()) == decision


# ---- reasons -------------------------------------------------------------------------------
def test_reasons_name_the_top_three_positive_drivers_in_plain_words() -> None:
    contributions = {
        "days_since_last_purchase": 1.2,
        "open_cases": 0.9,
        "contacts_30d": 0.5,
        "purchases_90d": 0.4,  # fourth: left out
        "spend_365d": -2.0,  # lowers the risk: no reason to act
    }
    features = customer(open_cases=2, contacts_30d=3)
    decision = decide("c1", features, 0.8, 0.2, contributions, CATALOGUE)
    text = " ".join(decision.reasons)
    assert "no purchase for 70 days" in decision.reasons[0]
    assert "2 unresolved service cases" in decision.reasons[1]
    assert "3 contacts with customer service in the last 30 days" in decision.reasons[2]
    assert "purchases" not in text.split("highest expected value")[0]
    assert "spent 800" not in text
    assert len(decision.reasons) == 4
    assert (
        "service_callback (A call-back from the service team about an open case) by call_center"
        in decision.reasons[-1]
    )


def test_unknown_features_fall_back_to_a_readable_name() -> None:
    assert readable_feature_name("returns_90d") == "returns in the last 90 days"
    assert readable_feature_name("nps_latest") == "nps latest"
    assert describe_feature("returns_90d", 2.0) == "returns in the last 90 days: 2"
    assert describe_feature("avg_basket", 12.5) == "avg basket: 12.5"
    assert describe_feature("avg_basket", float("nan")) == "avg basket: unknown"
    assert describe_feature("hours_since_last_abandoned_cart", 99999) == (
        "no abandoned cart on record"
    )
    assert describe_feature("hours_since_last_abandoned_cart", 96) == "abandoned a cart 4 days ago"
    assert describe_feature("purchases_90d", 1) == "1 purchase in the last 90 days"


def test_driver_ties_are_broken_by_name_and_non_finite_values_ignored() -> None:
    drivers = top_churn_drivers({"b_x": 1.0, "a_x": 1.0, "c_x": float("nan")}, {}, limit=3)
    assert drivers == ["a x: unknown", "b x: unknown"]


def test_reasons_exist_even_without_positive_drivers() -> None:
    decision = decide("c1", customer(), 0.1, 0.9, {"spend_365d": -1.0}, CATALOGUE)
    assert len(decision.reasons) == 2
    assert all(reason.strip() for reason in decision.reasons)


def test_reasons_from_a_real_lightgbm_model() -> None:
    """pred_contrib of a tiny model trained here: the driver named is the one that matters."""
    import lightgbm

    rng = np.random.default_rng(0)
    names = ["days_since_last_purchase", "purchases_90d", "noise_feature"]
    X = np.column_stack([rng.uniform(0, 300, 600), rng.integers(0, 10, 600), rng.normal(0, 1, 600)])
    y = (X[:, 0] + rng.normal(0, 20, 600) > 150).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=7, verbose=-1, n_jobs=1)
    model.fit(X, y)

    row = np.array([[280.0, 3.0, 0.0]])
    contrib = model.booster_.predict(row, pred_contrib=True, num_threads=1)[0]
    contributions = dict(zip(names, contrib[:-1].tolist(), strict=True))
    probability = float(model.predict_proba(row)[0, 1])
    features = customer(days_since_last_purchase=280.0, purchases_90d=3.0, noise_feature=0.0)

    decision = decide("c1", features, probability, 0.2, contributions, CATALOGUE)
    assert probability > 0.6
    assert decision.reasons[0] == "Churn risk is raised by: no purchase for 280 days."
    assert decision.action != "no_action"


# ---- invariants over arbitrary customers ---------------------------------------------------
binary = st.sampled_from([0.0, 1.0, float("nan")])
probability = st.floats(0.0, 1.0)


@st.composite
def customers(draw: st.DrawFn) -> dict[str, float]:
    return {
        "days_since_last_purchase": draw(st.floats(0, 1000)),
        "purchases_90d": draw(st.integers(0, 50).map(float)),
        "spend_365d": draw(st.one_of(st.floats(-500, 100_000), st.just(float("nan")))),
        "channel_breadth_90d": draw(st.integers(0, 5).map(float)),
        "open_cases": draw(st.sampled_from([0.0, 1.0, 3.0, float("nan")])),
        "abandoned_carts_30d": draw(st.integers(0, 5).map(float)),
        "hours_since_last_abandoned_cart": draw(
            st.one_of(st.floats(0, 500), st.just(99999.0), st.just(float("nan")))
        ),
        "consent_email": draw(binary),
        "consent_sms": draw(binary),
        "consent_app": draw(binary),
        "consent_call_center": draw(binary),
        "loyalty_member": draw(binary),
        "email_open_rate_90d": draw(st.one_of(st.floats(0, 1), st.just(float("nan")))),
    }


contributions_strategy = st.dictionaries(
    st.sampled_from([*DECISION_FEATURES, "contacts_30d", "returns_90d"]),
    st.floats(-3, 3),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(customers(), probability, probability, contributions_strategy)
def test_invariants_hold_for_every_customer(
    features: dict[str, float], churn: float, repurchase: float, contributions: dict[str, float]
) -> None:
    decision = decide("c", features, churn, repurchase, contributions, CATALOGUE)
    chosen = BY_NAME[decision.action]

    # The channel belongs to the action, and consent is never violated.
    assert decision.channel in chosen.channels
    if decision.action != "no_action":
        assert channel_allowed(decision.channel, features)
        assert action_eligible(chosen, features, churn)
        assert decision.expected_value >= 0
    else:
        assert (decision.channel, decision.expected_value) == ("none", 0.0)
    for alternative in decision.alternatives:
        assert channel_allowed(alternative.channel, features)
        assert action_eligible(BY_NAME[alternative.action], features, churn)

    # Ineligible actions are never chosen.
    if math.isnan(features["open_cases"]) or features["open_cases"] <= 0:
        assert decision.action != "service_callback"
    hours = features["hours_since_last_abandoned_cart"]
    if math.isnan(hours) or hours > 72:
        assert decision.action != "cart_reminder"
    if features["loyalty_member"] != 1.0:
        assert decision.action != "loyalty_points"

    # The best expected value wins; the runner-ups are sorted and never better.
    values = [alt.expected_value for alt in decision.alternatives]
    assert values == sorted(values, reverse=True)
    assert len(values) <= 3
    assert all(value <= decision.expected_value for value in values) or (
        decision.action == "no_action" and all(value <= 0 for value in values)
    )

    # Reasons: present, plain words (no raw snake_case feature names).
    assert decision.reasons and all(reason.strip() for reason in decision.reasons)
    drivers = decision.reasons[:-1]
    assert not any(re.search(r"\b[a-z]+_[a-z0-9_]+\b", reason) for reason in drivers)


@settings(max_examples=200, deadline=None)
@given(customers(), probability, probability)
def test_no_action_exactly_when_no_candidate_pays(
    features: dict[str, float], churn: float, repurchase: float
) -> None:
    """Brute force over the catalogue: the engine's choice is the best positive EV, or none."""
    spend = features["spend_365d"]
    value = 0.0 if math.isnan(spend) else max(spend, 0.0)
    retainable = 0.0 if features["days_since_last_purchase"] > 90 else churn  # gone: 0
    read = features["email_open_rate_90d"]

    def reach(channel: str) -> float:  # an email counts the share of emails read
        return 1.0 if channel != "email" or math.isnan(read) else read

    best = max(
        (
            expected_value(
                action, action.base_uplift * reach(channel), retainable, repurchase, value
            )
            for action in CATALOGUE
            if action_eligible(action, features, churn)
            for channel in action.channels
            if channel_allowed(channel, features)
        ),
        default=-math.inf,
    )
    decision = decide("c", features, churn, repurchase, {}, CATALOGUE)
    if best <= 0:
        assert decision.action == "no_action"
    else:
        assert decision.action != "no_action"
        assert decision.expected_value == pytest.approx(round(best, 2), abs=0.006)


# ---- control group, exploration, request context, real-time fields ------------------------
def test_control_group_is_stable_and_about_its_share() -> None:
    from serving.decision import in_control_group

    ids = [f"C{i:05d}" for i in range(20_000)]
    members = [in_control_group(i, 0.05, "salt") for i in ids]
    assert 0.04 < sum(members) / len(ids) < 0.06
    assert members == [in_control_group(i, 0.05, "salt") for i in ids]
    assert not any(in_control_group(i, 0.0, "salt") for i in ids[:100])
    assert members != [in_control_group(i, 0.05, "other salt") for i in ids]


def test_control_group_gets_no_action_but_keeps_the_alternatives() -> None:
    decision = decide("c1", customer(), 0.7, 0.2, {}, CATALOGUE, control_group=True)
    assert (decision.action, decision.control_group, decision.propensity) == ("no_action", True, 1)
    assert decision.alternatives[0].action == "retention_discount"
    assert "control group" in decision.reasons[-1]


def test_exploration_picks_an_eligible_option_with_its_propensity() -> None:
    from serving.decision import Exploration

    greedy = decide("c1", customer(), 0.7, 0.2, {}, CATALOGUE, exploration=Exploration(0.1, 0.5, 0))
    assert not greedy.explored and greedy.action == "retention_discount"
    options = 1 + 3  # no_action + retention_discount, free_shipping, loyalty_points
    assert greedy.propensity == pytest.approx(0.9 + 0.1 / options)
    picks = {
        decide(
            "c1", customer(), 0.7, 0.2, {}, CATALOGUE, exploration=Exploration(0.1, 0.0, p)
        ).action
        for p in (0.0, 0.3, 0.6, 0.9)
    }
    assert picks == {"no_action", "retention_discount", "free_shipping", "loyalty_points"}
    explored = decide(
        "c1", customer(), 0.7, 0.2, {}, CATALOGUE, exploration=Exploration(0.1, 0.0, 0.6)
    )
    assert explored.explored and explored.propensity == pytest.approx(0.1 / options)
    assert "service_callback" not in picks  # ineligible: never explored either


def test_a_cart_in_the_request_makes_a_cart_reminder_possible() -> None:
    from serving.decision import apply_request_context

    low_risk = customer()
    assert decide("c1", low_risk, 0.1, 0.3, {}, CATALOGUE).action == "no_action"
    with_cart = apply_request_context(low_risk, cart_value=120.0)
    assert decide("c1", with_cart, 0.1, 0.3, {}, CATALOGUE).action == "cart_reminder"


def test_the_current_channel_can_change_the_channel() -> None:
    features = customer(consent_email=1.0, consent_app=1.0)
    assert decide("c1", features, 0.7, 0.2, {}, CATALOGUE).channel == "email"
    in_app = decide("c1", features, 0.7, 0.2, {}, CATALOGUE, current_channel="app")
    assert in_app.channel == "app"
    no_consent_app = decide(
        "c1", customer(consent_app=0.0), 0.7, 0.2, {}, CATALOGUE, current_channel="app"
    )
    assert no_consent_app.channel != "app"  # being there is not consent


def test_realtime_fields_fold_into_the_snapshot() -> None:
    from serving.decision import apply_realtime_fields

    now = 1_800_000_000.0
    features = apply_realtime_fields(
        customer(last_cart_abandoned_at=now - 7200, last_case_opened_at=now - 60), now
    )
    assert features["hours_since_last_abandoned_cart"] == pytest.approx(2.0)
    assert features["open_cases"] == 1.0
    old_case = apply_realtime_fields(customer(last_case_opened_at=now - 90 * 86400), now)
    assert old_case["open_cases"] == 0.0


def test_customer_value_from_a_value_model_overrides_spend() -> None:
    cheap = decide("c1", customer(spend_365d=10.0), 0.9, 0.2, {}, CATALOGUE)
    valued = decide("c1", customer(spend_365d=10.0), 0.9, 0.2, {}, CATALOGUE, customer_value=900)
    assert (cheap.action, valued.action) == ("no_action", "retention_discount")


# ---- one vectorised decision function for the service and the batch -----------------------
channels_of_catalogue = sorted({c for action in CATALOGUE for c in action.channels} - {"none"})


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            customers(),
            probability,
            probability,
            st.sets(st.sampled_from(channels_of_catalogue), max_size=3),
            st.sets(st.sampled_from([a.name for a in CATALOGUE]), max_size=2),
            st.booleans(),
            st.floats(0.0, 0.999),
            st.floats(0.0, 0.999),
            st.one_of(st.none(), st.sampled_from(channels_of_catalogue)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_decide_arrays_for_many_equals_decide_for_each(rows: list[tuple]) -> None:
    """Policy blocks, control group, exploration and the current channel, all at once: the
    array path (batch) and the one-customer path (HTTP) make the same choice."""
    from serving.decision import Exploration, decide_arrays, decision_table

    table = decision_table(CATALOGUE)
    features = {
        name: np.array([row[0][name] for row in rows], dtype=np.float64) for name in rows[0][0]
    }
    blocked = np.array(
        [[c.channel in row[3] or c.action.name in row[4] for c in table.columns] for row in rows]
    )
    in_session = np.array([[c.channel == row[8] for c in table.columns] for row in rows])
    share = 0.3
    result = decide_arrays(
        features,
        np.array([row[1] for row in rows]),
        np.array([row[2] for row in rows]),
        CATALOGUE,
        blocked=blocked,
        in_session=in_session,
        control=np.array([row[5] for row in rows]),
        exploration_share=share,
        draw=np.array([row[6] for row in rows]),
        pick=np.array([row[7] for row in rows]),
    )
    for index, row in enumerate(rows):
        single = decide(
            f"c{index}",
            row[0],
            row[1],
            row[2],
            {},
            CATALOGUE,
            blocked_channels={channel: "test" for channel in row[3]},
            blocked_actions={action: "test" for action in row[4]},
            current_channel=row[8],
            control_group=row[5],
            exploration=Exploration(share, row[6], row[7]),
        )
        assert (result.action[index], result.channel[index]) == (single.action, single.channel)
        assert round(float(result.expected_value[index]), 2) == single.expected_value
        assert result.propensity[index] == pytest.approx(single.propensity, abs=1e-6)
        assert bool(result.explored[index]) == single.explored
        if single.action != "no_action":
            assert single.channel not in row[3] and single.action not in row[4]


def test_contribution_cache_returns_treeshap_exactly_and_recomputes_on_change() -> None:
    import lightgbm

    from serving.reasons import ContributionCache
    from training.model import fit_calibrated_classifier

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0, 300, 400), rng.normal(0, 1, 400)])
    y = (X[:, 0] + rng.normal(0, 30, 400) > 150).astype(int)
    model = fit_calibrated_classifier(
        X[:300], y[:300], X[300:], y[300:], ["days_since_last_purchase", "noise"], {}
    )
    assert isinstance(model.booster, lightgbm.Booster)

    class Champion:
        def __init__(self, version: str) -> None:
            self.version, self.model = version, model

    cache = ContributionCache(max_entries=2, method="treeshap")
    row = np.array([[280.0, 0.1]])
    first = cache.get(Champion("1"), row)
    exact = model.contributions(row)[0, :-1]
    assert list(first.values()) == exact.tolist()
    assert cache.get(Champion("1"), row.copy()) is first and cache.hits == 1
    cache.get(Champion("2"), row)  # a new champion: recomputed
    cache.get(Champion("1"), np.array([[10.0, 0.1]]))  # another customer: recomputed
    assert cache.misses == 3
    cache.get(Champion("1"), row)  # evicted (two entries at most): recomputed again
    assert cache.misses == 4


def test_a_customer_already_gone_is_not_retainable() -> None:
    """The churn score is highest for customers who stopped buying long ago; no contact
    retains them, so a retention action values only the risk of a customer still active."""
    active = decide("c", customer(days_since_last_purchase=60.0), 0.7, 0.2, {}, CATALOGUE)
    gone = decide("c", customer(days_since_last_purchase=200.0), 0.7, 0.2, {}, CATALOGUE)
    assert active.action == "retention_discount"
    assert gone.action == "no_action" or BY_NAME[gone.action].goal != "retention"
    features = {"days_since_last_purchase": np.array([10.0, 90.0, 91.0, np.nan])}
    np.testing.assert_allclose(
        retainable_risk(features, np.full(4, 0.6)), [0.6, 0.6, 0.0, 0.6]
    )  # within the window (90 days) retainable; unknown recency keeps the score
    features["days_since_last_session"] = np.array([300.0, 300.0, 20.0, 300.0])
    np.testing.assert_allclose(
        retainable_risk(features, np.full(4, 0.6)), [0.6, 0.6, 0.6, 0.0]
    )  # a recent web/app session shows the customer is still there; an old one that they left
