"""``run_drift`` end to end with real Evidently on small frames: verdicts, files, ``latest``.

Two runs share one state folder (and one Evidently import): the first reads the reference and the
feature table from disk and finds no drift; the second is given frames where a third of the
features moved strongly and must say so, naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import (
    PREDICTION_COLUMN,
    DriftReport,
    ReferenceNotFoundError,
    current_features_path,
    parse_column_drift,
    reference_path,
    run_drift,
)
from omniretain.settings import Settings, load_settings

FEATURES = [
    "days_since_last_purchase",
    "purchases_90d",
    "spend_365d",
    "channel_breadth_90d",
    "open_cases",
    "abandoned_carts_30d",
    "consent_email",
    "consent_sms",
    "avg_basket_value_365d",
]
SHIFTED = ["days_since_last_purchase", "spend_365d", "abandoned_carts_30d"]  # a third
NEWEST = pd.Timestamp("2025-06-01", tz="UTC")
THRESHOLD = 0.3


def feature_snapshot(n: int, cutoff: pd.Timestamp, seed: int, shift: bool = False) -> pd.DataFrame:
    """One snapshot shaped like the feature table; ``shift`` moves the SHIFTED columns."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{seed:02d}{i:05d}" for i in range(n)],
            "event_timestamp": cutoff,
            "created_timestamp": cutoff + pd.Timedelta(hours=1),
            "days_since_last_purchase": rng.exponential(40.0, n),
            "purchases_90d": rng.poisson(2.0, n).astype(float),
            "spend_365d": rng.gamma(2.0, 150.0, n),
            "channel_breadth_90d": rng.integers(1, 4, n).astype(float),
            "open_cases": (rng.uniform(size=n) < 0.1).astype(float),
            "abandoned_carts_30d": rng.poisson(0.5, n).astype(float),
            "consent_email": (rng.uniform(size=n) < 0.7).astype(float),
            "consent_sms": (rng.uniform(size=n) < 0.4).astype(float),
            "avg_basket_value_365d": rng.normal(60.0, 15.0, n),
        }
    )
    if shift:
        frame["days_since_last_purchase"] = frame["days_since_last_purchase"] * 3 + 60
        frame["spend_365d"] = frame["spend_365d"] * 0.3
        frame["abandoned_carts_30d"] = frame["abandoned_carts_30d"] + rng.poisson(3.0, n)
    return frame


def training_reference(n_per_cutoff: int) -> pd.DataFrame:
    """What ``train`` saves: rows of earlier cutoffs, with labels and the model's score."""
    parts = []
    for k, cutoff in enumerate((NEWEST - pd.Timedelta(days=90), NEWEST - pd.Timedelta(days=60))):
        part = feature_snapshot(n_per_cutoff, cutoff, seed=10 + k)
        rng = np.random.default_rng(20 + k)
        part[PREDICTION_COLUMN] = rng.beta(2.0, 5.0, n_per_cutoff)
        part["churned"] = (rng.uniform(size=n_per_cutoff) < part[PREDICTION_COLUMN]).astype(int)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("drift_state"),
        monitoring={
            "drift_share_threshold": THRESHOLD,
            "sample_rows": 200,
            # synthetic columns: none is cumulative here (the exclusions have their own tests)
            "drift": {"calendar_columns": [], "exclude_truncated_windows": False},
        },
    )
    reference_path(settings).parent.mkdir(parents=True)
    training_reference(200).to_parquet(reference_path(settings), index=False)
    # an older, shifted snapshot that must not be read as "current"
    older = feature_snapshot(250, NEWEST - pd.Timedelta(days=30), seed=3, shift=True)
    newest = feature_snapshot(250, NEWEST, seed=4)
    current_features_path(settings).parent.mkdir(parents=True)
    pd.concat([older, newest]).to_parquet(current_features_path(settings), index=False)
    return settings


@pytest.fixture(scope="module")
def steady_run(state: Settings) -> DriftReport:
    return run_drift(state)


@pytest.fixture(scope="module")
def drifted_run(state: Settings, steady_run: DriftReport) -> DriftReport:
    current = feature_snapshot(300, NEWEST, seed=5, shift=True)
    current[PREDICTION_COLUMN] = np.random.default_rng(6).beta(2.0, 5.0, len(current))
    return run_drift(state, current=current)


def test_same_distribution_gives_no_drift(steady_run: DriftReport) -> None:
    assert steady_run.drift_detected is False
    assert steady_run.share_drifted < THRESHOLD
    assert steady_run.threshold == THRESHOLD
    assert steady_run.columns_tested == FEATURES  # no score in the feature table yet
    assert steady_run.prediction_drifted is None
    assert steady_run.columns_skipped == {
        PREDICTION_COLUMN: "not in the current data",
        "churned": "not in the current data",
    }


def test_current_is_the_newest_snapshot_and_both_sides_are_sampled(
    steady_run: DriftReport,
) -> None:
    assert steady_run.current_snapshot == NEWEST.to_pydatetime()
    assert steady_run.n_current_before_sampling == 250
    # the reference is the newest training snapshot only (200 of its 400 rows)
    assert steady_run.n_reference_before_sampling == 200
    assert steady_run.n_current == 200 and steady_run.n_reference == 200


def test_shifted_third_of_features_gives_drift_naming_them(drifted_run: DriftReport) -> None:
    assert drifted_run.drift_detected is True
    drifted = {c.column for c in drifted_run.drifted_columns}
    assert set(SHIFTED) <= drifted
    assert len(drifted) < len(drifted_run.columns_tested)  # not "everything drifted"
    assert drifted_run.share_drifted >= THRESHOLD
    assert drifted_run.columns_tested == FEATURES + [PREDICTION_COLUMN]
    assert drifted_run.prediction_drifted is False


def test_files_are_written_and_readable(drifted_run: DriftReport) -> None:
    html = drifted_run.html_path.read_text()
    assert len(html) > 10_000 and "<html" in html.lower()
    assert drifted_run.html_path.parent == drifted_run.output_dir
    evidently_json = json.loads(drifted_run.json_path.read_text())
    assert list(parse_column_drift(evidently_json).values()) == drifted_run.columns

    summary = json.loads(drifted_run.summary_path.read_text())
    assert summary["drift_detected"] is True
    assert summary["threshold"] == THRESHOLD
    assert summary["columns_tested"] == drifted_run.columns_tested
    named = {entry["column"]: entry for entry in summary["drifted_columns"]}
    assert set(SHIFTED) <= set(named)
    for entry in named.values():
        assert entry["method"] and isinstance(entry["score"], float)


def test_latest_points_at_the_newest_run(
    state: Settings, steady_run: DriftReport, drifted_run: DriftReport
) -> None:
    drift_root = state.monitoring_dir / "drift"
    assert steady_run.output_dir != drifted_run.output_dir
    assert steady_run.output_dir.parent == drift_root
    assert (drift_root / "latest").resolve() == drifted_run.output_dir.resolve()
    summary = json.loads((drift_root / "latest" / "summary.json").read_text())
    assert Path(summary["output_dir"]) == drifted_run.output_dir
    # the first run is kept
    assert json.loads(steady_run.summary_path.read_text())["drift_detected"] is False


def test_missing_reference_asks_for_training(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(ReferenceNotFoundError, match="omniretain train"):
        run_drift(settings, current=feature_snapshot(10, NEWEST, seed=1))


def test_reference_without_id_or_timestamp_still_compares(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    reference = training_reference(150).drop(columns=["customer_id", "event_timestamp"])
    report = run_drift(settings, current=feature_snapshot(150, NEWEST, seed=7), reference=reference)
    # the configured calendar columns: tested and reported, out of the verdict
    assert [c.column for c in report.columns_excluded] == ["days_since_last_purchase"]
    assert report.columns_excluded[0].excluded == "cumulative"
    assert report.columns_tested == [f for f in FEATURES if f != "days_since_last_purchase"]
    assert report.html_path.stat().st_size > 10_000
