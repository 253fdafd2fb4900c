"""The retrain decision of a drift report, and one row per customer of served traffic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from monitoring.drift import ColumnDrift, DriftReport
from monitoring.trigger import latest_per_customer, retrain_decision
from omniretain.settings import DriftSettings


def report(drifted: list[bool], prediction: bool | None) -> DriftReport:
    columns = [
        ColumnDrift(column=f"f{i}", method="K-S p_value", score=0.01, threshold=0.05, drifted=d)
        for i, d in enumerate(drifted)
    ]
    if prediction is not None:
        columns.append(
            ColumnDrift(
                column="churn_probability",
                method="ks",
                score=0.5,
                threshold=0.01,
                drifted=prediction,
            )
        )
    share = sum(c.drifted for c in columns) / len(columns)
    path = Path("/nonexistent")
    return DriftReport(
        output_dir=path, html_path=path, json_path=path, summary_path=path, latest_dir=path,
        generated_at=datetime.now(UTC), current_snapshot=None, n_reference=10, n_current=10,
        n_reference_before_sampling=10, n_current_before_sampling=10, columns=columns,
        columns_skipped={},
        prediction_column=None if prediction is None else "churn_probability",
        share_drifted=share, threshold=0.3, drift_detected=share >= 0.3,
    )  # fmt: skip


def test_verdict_triggers_retrain() -> None:
    retrain, reason = retrain_decision(report([True, True, False], False), DriftSettings())
    assert retrain and "2/4 columns drifted" in reason


def test_prediction_drift_alone_triggers_retrain_when_configured() -> None:
    few = report([False] * 9, True)
    assert few.drift_detected is False
    assert retrain_decision(few, DriftSettings())[0] is True
    assert retrain_decision(few, DriftSettings(retrain_on_prediction_drift=False))[0] is False


def test_no_drift_no_retrain() -> None:
    retrain, reason = retrain_decision(report([False, True, False, False], False), DriftSettings())
    assert retrain is False and "scores stable" in reason


def test_latest_per_customer_keeps_the_newest_decision() -> None:
    served = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C1"],
            "event_timestamp": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"], utc=True),
            "x": [1.0, 2.0, 3.0],
        }
    )
    out = latest_per_customer(served).set_index("customer_id")
    assert out.loc["C1", "x"] == 3.0 and len(out) == 2
