"""Rolling-origin backtest on a synthetic training frame: origins, purging, mean and spread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omniretain.settings import load_settings
from training.backtest import REPORTED_METRICS, backtest_frame, known_at_origin, origin_cutoffs


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for month in range(1, 11):
        cutoff = pd.Timestamp(f"2025-{month:02d}-01", tz="UTC")
        recency = rng.exponential(40, 500)
        churned = (rng.random(500) < 1 / (1 + np.exp(-(recency - 40) / 15))).astype(float)
        rows.append(
            pd.DataFrame(
                {
                    "customer_id": [f"c{i}" for i in range(500)],
                    "event_timestamp": cutoff,
                    "days_since_last_purchase": recency,
                    "purchases_90d": rng.poisson(2, 500).astype(float),
                    "churned": churned if month <= 8 else np.nan,
                    "repurchased": 1.0 - churned,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_origins_are_preceded_by_two_closed_windows(frame) -> None:
    origins = origin_cutoffs(frame, "churned", 10, 90)
    # 90-day windows: an origin needs two cutoffs at least 90 days before it.
    assert origins[0] == pd.Timestamp("2025-06-01", tz="UTC")
    assert origins[-1] == pd.Timestamp("2025-08-01", tz="UTC")


def test_rows_with_open_windows_at_the_origin_are_purged(frame) -> None:
    origin = pd.Timestamp("2025-06-01", tz="UTC")
    kept = known_at_origin(frame, origin, 90)
    at = kept["event_timestamp"]
    assert at.max() == origin
    assert ((at + pd.Timedelta(days=90) <= origin) | (at == origin)).all()
    assert pd.Timestamp("2025-04-01", tz="UTC") not in set(at)


def test_backtest_reports_mean_and_spread_for_model_and_baselines(frame) -> None:
    settings = load_settings()
    settings.training.lightgbm = {"n_estimators": 30, "n_jobs": 1, "min_child_samples": 20}
    report = backtest_frame(settings, frame, origins=3)
    per_origin = report.per_origin
    assert set(per_origin["scorer"]) == {"model", "rfm", "logistic"}
    assert (per_origin.groupby(["kind", "scorer"]).size() == 3).all()
    summary = report.summary()
    for name in REPORTED_METRICS:
        assert summary[f"{name}_std"].notna().all()
    churn_model = summary[(summary["kind"] == "churn") & (summary["scorer"] == "model")]
    assert churn_model["roc_auc_mean"].iloc[0] > 0.7
