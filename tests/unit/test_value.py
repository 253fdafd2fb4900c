"""Customer value: future-spend labels never read past their window, metrics, window choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.value import (
    ValueDataError,
    choose_window_days,
    fit_value_model,
    future_spend_labels,
    top_decile_capture,
    value_metrics,
)

UTC_CUTOFFS = [pd.Timestamp(f"2025-0{m}-01", tz="UTC") for m in (2, 3, 4)]


def _purchases() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b", "c"],
            "occurred_at": pd.to_datetime(
                [
                    "2025-01-05 00:00",
                    "2025-02-10 00:00",
                    "2025-02-20 00:00",
                    "2025-01-20 00:00",
                    "2025-02-15 00:00",
                    "2025-03-05 00:00",
                ]
            ),
            "amount": [10.0, 20.0, 5.0, 7.0, 7.0, 100.0],
            "is_return": [False, False, True, False, False, False],
        }
    )


def test_future_spend_is_net_of_returns_inside_the_window_only() -> None:
    labels = future_spend_labels(_purchases(), UTC_CUTOFFS[:1], pd.Timestamp("2025-12-31"), 30)
    spend = labels.set_index("customer_id")["future_spend"]
    assert spend.to_dict() == {"a": 15.0, "b": 7.0}  # c bought first after the cutoff


def test_future_spend_does_not_change_when_later_purchases_change() -> None:
    purchases = _purchases()
    later = pd.concat(
        [
            purchases,
            pd.DataFrame(
                {
                    "customer_id": ["a"],
                    "occurred_at": [pd.Timestamp("2025-03-04")],
                    "amount": [999.0],
                    "is_return": [False],
                }
            ),
        ]
    )
    end = pd.Timestamp("2025-12-31")
    before = future_spend_labels(purchases, UTC_CUTOFFS[:1], end, 30)
    after = future_spend_labels(later, UTC_CUTOFFS[:1], end, 30)
    pd.testing.assert_frame_equal(before, after)


def test_window_shrinks_to_what_three_cutoffs_observe() -> None:
    end = pd.Timestamp("2025-07-01")
    assert choose_window_days(UTC_CUTOFFS, end, 365, 90) == (end - pd.Timestamp("2025-02-01")).days
    assert choose_window_days(UTC_CUTOFFS, pd.Timestamp("2027-01-01"), 365, 90) == 365
    with pytest.raises(ValueDataError, match="ingest more months"):
        choose_window_days(UTC_CUTOFFS, pd.Timestamp("2025-04-15"), 365, 90)


def test_top_decile_capture_and_metrics() -> None:
    actual = np.array([0.0] * 18 + [50.0, 50.0])
    perfect = actual + np.arange(20) * 1e-3
    assert top_decile_capture(actual, perfect) == pytest.approx(1.0)
    assert top_decile_capture(actual, -perfect) == pytest.approx(0.0)
    metrics = value_metrics(actual, perfect)
    assert metrics["spearman"] > 0.5 and metrics["mae"] < 0.1


def test_tweedie_model_learns_spend_and_scales_to_the_horizon() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    spend = rng.poisson(np.exp(1.0 + X[:, 0])) * 20.0
    model = fit_value_model(
        X[:2000],
        spend[:2000],
        X[2000:2500],
        spend[2000:2500],
        ["a", "b", "c"],
        {"n_estimators": 60, "n_jobs": 1},
        window_days=73,
    )
    window = model.predict_window(X[2500:])
    assert np.all(window >= 0)
    np.testing.assert_allclose(model.predict(X[2500:]), window * 5.0)
    assert value_metrics(spend[2500:], window)["spearman"] > 0.5
    assert model.predict(X[2500]).shape == (1,)
