"""Policy valuation against the truth: gains follow the simulator's clip, budgets of contacts
are respected, the oracle is never beaten at equal contacts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniretain.policy_sim import (
    NO_CHOICE,
    limit_contacts,
    net_gain_matrix,
    oracle_policy,
    policy_value,
    random_policy,
    retained_gain,
    top_risk_policy,
)


def test_gain_is_clipped_like_the_simulator_and_zero_for_the_churned() -> None:
    p0 = np.array([0.05, 0.5, 0.5, 0.9])
    effect = np.array([-0.2, -0.2, 0.1, 0.2])
    alive = np.array([True, True, False, True])
    gain = retained_gain(p0, effect, alive)
    np.testing.assert_allclose(gain, [0.05 - 5e-4, 0.2, 0.0, 0.9 - 0.95])


def test_no_action_is_worth_zero() -> None:
    net = np.ones((3, 2))
    assert policy_value(net, np.full(3, NO_CHOICE)) == 0.0


population = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.001, 0.9), min_size=n, max_size=n),
        st.lists(st.lists(st.floats(-0.3, 0.15), min_size=3, max_size=3), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.floats(0, 3000), min_size=n, max_size=n),
        st.integers(0, n),
    )
)


@settings(max_examples=40, deadline=None)
@given(population)
def test_oracle_is_the_best_at_equal_contacts(drawn) -> None:
    p0, effects, alive, value, contacts = (np.array(x) for x in drawn)
    costs = np.array([6.0, 3.0, 0.2])
    net = net_gain_matrix(p0, effects, alive, value, costs)
    allowed = np.ones_like(net, dtype=bool)
    oracle = oracle_policy(net, allowed, int(contacts))
    rng = np.random.default_rng(0)
    others = [
        random_policy(allowed, int(contacts), rng),
        top_risk_policy(allowed, p0, net.mean(axis=0), int(contacts)),
    ]
    assert policy_value(net, oracle) >= 0.0
    for choice in [oracle, *others]:
        assert (choice != NO_CHOICE).sum() <= contacts
    for choice in others:
        assert policy_value(net, oracle) >= policy_value(net, choice) - 1e-9


def test_policies_respect_what_is_allowed() -> None:
    allowed = np.array([[False, True], [False, False], [True, False]])
    rng = np.random.default_rng(1)
    choice = random_policy(allowed, 3, rng)
    assert choice.tolist() == [1, NO_CHOICE, 0]
    assert limit_contacts(choice, np.array([0.1, 0.9, 0.5]), 1).tolist() == [
        NO_CHOICE,
        NO_CHOICE,
        0,
    ]


def test_snips_recovers_a_known_effect_from_randomised_logs() -> None:
    """Logged like the simulator: 10% control, the rest split between two actions; action 0
    retains 30 more per customer than no action, action 1 loses 10."""
    from omniretain.policy_sim import snips_incremental_value

    rng = np.random.default_rng(0)
    n = 60_000
    arm = rng.choice(3, size=n, p=[0.1, 0.45, 0.45])  # 0 control, 1 action A, 2 action B
    propensity = np.array([0.1, 0.45, 0.45])[arm]
    reward = rng.normal(-100.0, 50.0, n) + np.array([0.0, 30.0, -10.0])[arm]
    control = arm == 0
    always_a = snips_incremental_value(arm == 1, control, propensity, reward)
    assert always_a == pytest.approx(30.0, abs=3.0)
    assert snips_incremental_value(arm == 2, control, propensity, reward) == pytest.approx(
        -10.0, abs=3.0
    )
    assert snips_incremental_value(control, control, propensity, reward) == 0.0


def test_a_baseline_keeps_the_snips_estimate_unbiased_and_cuts_its_noise() -> None:
    """Rewards driven by a customer trait (as churn x value is by the customer's risk): a
    baseline predicting that part leaves the estimate centred on the truth, with less spread."""
    from omniretain.policy_sim import snips_incremental_value

    rng = np.random.default_rng(3)
    estimates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(40):
        n = 6000
        trait = rng.normal(0.0, 80.0, n)
        arm = rng.choice(3, size=n, p=[0.1, 0.45, 0.45])
        propensity = np.array([0.1, 0.45, 0.45])[arm]
        reward = trait + rng.normal(0.0, 10.0, n) + np.array([0.0, 20.0, 0.0])[arm]
        for with_baseline in (False, True):
            estimates[with_baseline].append(
                snips_incremental_value(
                    arm == 1, arm == 0, propensity, reward, trait if with_baseline else None
                )
            )
    assert np.mean(estimates[True]) == pytest.approx(20.0, abs=1.5)
    assert np.std(estimates[True]) < 0.5 * np.std(estimates[False])


def test_ipw_counts_only_the_customers_the_policy_treats() -> None:
    """The policy treats half the customers with action A (worth +30 each): +15 per customer."""
    from omniretain.policy_sim import ipw_incremental_value

    rng = np.random.default_rng(4)
    n = 60_000
    trait = rng.normal(-100.0, 60.0, n)
    arm = rng.choice(4, size=n, p=[0.5, 0.1, 0.2, 0.2])  # 0 outside the experiment, 1 control
    logged = arm > 0
    propensity = np.array([1.0, 0.1, 0.2, 0.2])[arm]
    reward = trait + rng.normal(0.0, 5.0, n) + np.array([0.0, 0.0, 30.0, -10.0])[arm]
    treats = rng.random(n) < 0.5
    args = (treats[logged], (arm == 2)[logged], (arm == 1)[logged], propensity[logged])
    estimate = ipw_incremental_value(*args, reward[logged], trait[logged])
    assert estimate == pytest.approx(15.0, abs=1.0)
    assert ipw_incremental_value(np.zeros(logged.sum(), bool), *args[1:], reward[logged]) == 0.0


def test_doubly_robust_is_unbiased_with_a_wrong_model_and_less_noisy_with_a_good_one() -> None:
    """Action A is worth +30 for half the customers (the trait), 0 for the others; the policy
    treats everyone with A. A wrong outcome model (predicting +80 for all) is corrected by the
    weighted residuals; a right one leaves less noise than inverse propensity alone."""
    from omniretain.policy_sim import doubly_robust_incremental_value, ipw_incremental_value

    rng = np.random.default_rng(5)
    runs: dict[str, list[float]] = {"wrong": [], "right": [], "ipw": []}
    for _ in range(40):
        n = 8000
        responsive = rng.random(n) < 0.5
        arm = rng.choice(3, size=n, p=[0.2, 0.4, 0.4])  # 0 control, 1 action A, 2 action B
        propensity = np.array([0.2, 0.4, 0.4])[arm]
        effect = np.where(responsive, 30.0, 0.0)
        baseline = rng.normal(-100.0, 40.0, n)
        reward = baseline + rng.normal(0.0, 5.0, n) + np.where(arm == 1, effect, 0.0)
        args = (np.ones(n, bool), arm == 1, arm == 0, propensity, reward, baseline)
        runs["wrong"].append(doubly_robust_incremental_value(*args, np.full(n, 80.0)))
        runs["right"].append(doubly_robust_incremental_value(*args, effect))
        runs["ipw"].append(ipw_incremental_value(*args))
    assert np.mean(runs["wrong"]) == pytest.approx(15.0, abs=1.5)
    assert np.mean(runs["right"]) == pytest.approx(15.0, abs=1.0)
    assert np.std(runs["right"]) < 0.8 * np.std(runs["ipw"])
