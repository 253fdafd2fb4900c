"""BG/NBD: the published CDNOW fit, the summary convention, and the properties of predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.bgnbd import (
    BGNBDFitError,
    BGNBDParameters,
    expected_transactions,
    fit_bgnbd,
    frequency_recency_summary,
    log_likelihood,
    probability_alive,
    probability_any_purchase,
)

CDNOW_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "CDNOW_sample.txt"
CALIBRATION_END = pd.Timestamp("1997-09-30")
PUBLISHED = BGNBDParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    frame = pd.read_csv(
        CDNOW_SAMPLE,
        sep=r"\s+",
        header=None,
        names=["master_id", "customer_id", "date", "cds", "dollars"],
        dtype={"date": str},
    )
    frame["occurred_at"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


@pytest.fixture(scope="module")
def calibration(cdnow: pd.DataFrame) -> pd.DataFrame:
    return frequency_recency_summary(cdnow, CALIBRATION_END)


def test_summary_merges_same_day_rows_and_ignores_later_ones() -> None:
    purchases = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "b"],
            "occurred_at": pd.to_datetime(
                [
                    "2020-01-01 09:00",
                    "2020-01-01 17:00",
                    "2020-01-15 00:00",
                    "2020-03-01 00:00",
                    "2020-01-08 00:00",
                ]
            ),
        }
    )
    summary = frequency_recency_summary(purchases, pd.Timestamp("2020-01-29"))
    assert summary.loc["a"].tolist() == [1.0, 2.0, 4.0]
    assert summary.loc["b"].tolist() == [0.0, 0.0, 3.0]


def test_fit_recovers_the_published_cdnow_parameters(calibration: pd.DataFrame) -> None:
    assert len(calibration) == 2357
    fitted = fit_bgnbd(calibration["x"], calibration["t_x"], calibration["T"])
    for name, published in PUBLISHED.as_dict().items():
        assert getattr(fitted, name) == pytest.approx(published, rel=2e-3), name


def test_holdout_forecast_matches_the_published_figure(
    cdnow: pd.DataFrame, calibration: pd.DataFrame
) -> None:
    holdout = cdnow[cdnow["occurred_at"] > CALIBRATION_END]
    actual = len(holdout.drop_duplicates(["customer_id", "occurred_at"]))
    forecast = expected_transactions(
        PUBLISHED, 39.0, calibration["x"], calibration["t_x"], calibration["T"]
    ).sum()
    assert actual == 1882
    assert forecast == pytest.approx(1653, abs=5)


def test_fit_refuses_data_without_repeat_purchases() -> None:
    with pytest.raises(BGNBDFitError, match="repeat"):
        fit_bgnbd(np.zeros(5), np.zeros(5), np.full(5, 10.0))


def test_fit_refuses_last_purchase_after_the_end() -> None:
    with pytest.raises(BGNBDFitError, match="t_x"):
        fit_bgnbd(np.array([1.0, 2.0]), np.array([5.0, 12.0]), np.array([10.0, 10.0]))


def test_fit_recovers_parameters_of_simulated_customers() -> None:
    rng = np.random.default_rng(0)
    truth = BGNBDParameters(r=0.8, alpha=3.0, a=1.2, b=4.0)
    n, horizon = 6000, 52.0
    rates = rng.gamma(truth.r, 1.0 / truth.alpha, n)
    dropouts = rng.beta(truth.a, truth.b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for index in range(n):
        time = 0.0
        while True:
            time += rng.exponential(1.0 / rates[index])
            if time > horizon:
                break
            x[index] += 1
            t_x[index] = time
            if rng.random() < dropouts[index]:
                break
    fitted = fit_bgnbd(x, t_x, np.full(n, horizon))
    assert fitted.r == pytest.approx(truth.r, rel=0.15)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.25)
    assert fitted.a == pytest.approx(truth.a, rel=0.35)
    assert fitted.b == pytest.approx(truth.b, rel=0.45)


histories = st.tuples(st.integers(0, 40), st.floats(0.0, 1.0), st.floats(1.0, 80.0)).map(
    lambda h: (float(h[0]), h[1] * h[2] if h[0] > 0 else 0.0, h[2])
)


@settings(max_examples=80, deadline=None)
@given(history=histories, t=st.floats(0.5, 60.0))
def test_predictions_are_probabilities_and_grow_with_the_horizon(history, t) -> None:
    x, t_x, T = (np.array([value]) for value in history)
    alive = probability_alive(PUBLISHED, x, t_x, T)[0]
    any_purchase = probability_any_purchase(PUBLISHED, t, x, t_x, T)[0]
    shorter = expected_transactions(PUBLISHED, t, x, t_x, T)[0]
    longer = expected_transactions(PUBLISHED, t * 1.5, x, t_x, T)[0]
    assert 0.0 <= any_purchase <= alive <= 1.0
    assert 0.0 <= shorter <= longer
    assert np.isfinite(log_likelihood(PUBLISHED, x, t_x, T)[0])


def test_a_recent_buyer_is_more_alive_than_a_lapsed_one() -> None:
    x = np.array([5.0, 5.0])
    alive = probability_alive(PUBLISHED, x, np.array([30.0, 5.0]), np.array([32.0, 32.0]))
    assert alive[0] > alive[1]
