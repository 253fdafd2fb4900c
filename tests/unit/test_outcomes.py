"""Outcome tracking: realised churn windows, score quality, treated vs control CIs, IPS."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.outcomes import (
    calibration_table,
    campaign_results,
    difference_interval,
    expected_calibration_error,
    ips_policy_values,
    realised_churn,
    score_quality,
    send_outcomes,
)

T0 = pd.Timestamp("2025-01-01", tz="UTC")


def days(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


def test_realised_churn_uses_only_closed_windows_and_purchases_after_the_decision() -> None:
    decisions = pd.DataFrame(
        {
            "decision_id": ["a", "b", "c", "d"],
            "customer_id": ["C1", "C2", "C3", "C1"],
            "decided_at": [days(0), days(0), days(0), days(50)],
            "churn_probability": [0.1, 0.9, 0.5, 0.2],
        }
    )
    purchases = pd.DataFrame(
        {"customer_id": ["C1", "C3", "C2"], "occurred_at": [days(10), days(-1), days(31)]}
    )
    out = realised_churn(decisions, purchases, window_days=30, data_end=days(60))
    # d's window (50..80) is still open at day 60; C3 bought only before; C2 one day too late.
    assert dict(zip(out["decision_id"], out["churned"], strict=True)) == {
        "a": 0.0,
        "b": 1.0,
        "c": 1.0,
    }


def test_score_quality_per_version_with_perfect_and_inverted_ranking() -> None:
    realised = pd.DataFrame(
        {
            "churn_model_version": ["1"] * 4 + ["2"] * 4,
            "churn_probability": [0.1, 0.2, 0.8, 0.9, 0.9, 0.8, 0.2, 0.1],
            "churned": [0, 0, 1, 1, 0, 0, 1, 1],
        }
    )
    quality = score_quality(realised).set_index("model_version")
    assert quality.loc["1", "roc_auc"] == 1.0 and quality.loc["2", "roc_auc"] == 0.0
    assert quality.loc["1", "brier"] == pytest.approx(np.mean([0.01, 0.04, 0.04, 0.01]))


def test_score_quality_auc_is_nan_for_a_single_class() -> None:
    realised = pd.DataFrame(
        {
            "churn_model_version": ["1"] * 3,
            "churn_probability": [0.2, 0.3, 0.4],
            "churned": [0, 0, 0],
        }
    )
    assert math.isnan(score_quality(realised).loc[0, "roc_auc"])


def test_calibration_of_a_perfectly_calibrated_bin_is_zero() -> None:
    labels = np.array([1, 0, 0, 0, 0] * 20)
    scores = np.full(100, 0.2)
    assert expected_calibration_error(labels, scores) == pytest.approx(0.0)
    table = calibration_table(labels, scores)
    assert table["n"].tolist() == [100] and table["bin"].tolist() == [2]


def test_difference_interval_known_values() -> None:
    diff, low, high = difference_interval(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0]))
    se = math.sqrt(np.var([1, 0, 1, 0], ddof=1) / 4)
    assert diff == 0.5 and low == pytest.approx(0.5 - 1.96 * se, abs=1e-3)
    assert high == pytest.approx(0.5 + 1.96 * se, abs=1e-3)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=2, max_size=30),
    st.lists(st.floats(0, 100), min_size=2, max_size=30),
)
def test_difference_interval_contains_the_difference(
    treated: list[float], control: list[float]
) -> None:
    diff, low, high = difference_interval(np.array(treated), np.array(control))
    assert low <= diff + 1e-9 and diff <= high + 1e-9


def sends_frame() -> pd.DataFrame:
    rows = []
    for i in range(40):  # one campaign: 20 treated on email (p=0.5), 20 control (p=0.5)
        treated = i % 2 == 0
        rows.append(
            {
                "campaign_id": "K1",
                "customer_id": f"C{i}",
                "action": "winback" if treated else "no_action",
                "channel": "email" if treated else "none",
                "is_control": not treated,
                "randomised": True,
                "propensity": 0.5,
                "retained": 1.0 if (treated and i % 4 == 0) or i == 1 else 0.0,
                "revenue": 10.0 if treated else 2.0,
            }
        )
    return pd.DataFrame(rows)


def test_campaign_results_treated_minus_control_and_incremental_revenue() -> None:
    result = campaign_results(sends_frame()).iloc[0]
    assert (result["action"], result["channel"], result["treated"], result["control"]) == (
        "winback",
        "email",
        20,
        20,
    )
    assert result["retention_uplift"] == pytest.approx(0.5 - 0.05)
    assert result["revenue_uplift"] == pytest.approx(8.0)
    assert result["incremental_revenue"] == pytest.approx(160.0)
    assert result["retention_uplift_low"] < 0.45 < result["retention_uplift_high"]


def test_ips_of_a_uniform_randomised_campaign_equals_the_arm_means() -> None:
    values = ips_policy_values(sends_frame()).set_index("action")
    # p = 0.5 for both arms: IPS = sum(r / 0.5) / 40 = mean reward of the arm.
    assert values.loc["winback", "ips"] == pytest.approx(10.0)
    assert values.loc["no_action", "ips"] == pytest.approx(2.0)
    assert values.loc["winback", "snips"] == pytest.approx(10.0)
    assert values.index[0] == "winback"  # best first


def test_send_outcomes_counts_revenue_in_the_window_only() -> None:
    campaigns = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "occurred_at": [days(0), days(0), days(100)],
            "campaign_id": ["K", "K", "K2"],
            "action": ["winback", "no_action", "winback"],
            "channel": ["email", "none", "email"],
            "randomised": [True, True, True],
            "propensity": [0.5, 0.5, 0.5],
            "is_control": [False, None, False],
        }
    )
    purchases = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2"],
            "occurred_at": [days(5), days(40), days(-3)],
            "amount": [20.0, 99.0, 50.0],
        }
    )
    out = send_outcomes(campaigns, purchases, window_days=30, data_end=days(60))
    assert out["customer_id"].tolist() == ["C1", "C2"]  # C3's window is still open
    assert out["revenue"].tolist() == [20.0, 0.0] and out["retained"].tolist() == [1.0, 0.0]
    assert out["is_control"].tolist() == [False, True]
