"""The training pipeline without Feast or MLflow: training frame, time split, models, baselines.

``features.store.historical_features`` is replaced here (and only here) by an exact-cutoff join
on the feature parquet; the integration test runs the real Feast path.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from training_synthetic import point_in_time_features, simulate_purchases, write_warehouse

from omniretain.settings import Settings, load_settings
from training.labels import churn_labels
from training.train import (
    TrainingDataError,
    build_training_frame,
    feature_columns,
    reference_features,
    rfm_rule_scores,
    time_split,
    train_target,
)

CUTOFF_DAYS = range(120, 301, 30)  # 7 snapshots; data ends near day 330
SMALL_LIGHTGBM = {
    "n_estimators": 80,
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_child_samples": 20,
    "n_jobs": 1,
}


def fake_historical_features(settings: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Same contract as the Feast-backed function: same rows, same order, features appended."""
    features = pd.read_parquet(settings.features_dir / "customer_features.parquet")
    features = features.drop(columns=["created_timestamp"])
    joined = entity_df.merge(features, on=["customer_id", "event_timestamp"], how="left")
    assert len(joined) == len(entity_df)
    return joined


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return simulate_purchases(customers=500, days=330, seed=3)


@pytest.fixture(scope="module")
def settings(tmp_path_factory, history) -> Iterator[Settings]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("train_state"))
    settings.training.lightgbm = SMALL_LIGHTGBM
    settings.ensure_dirs()
    write_warehouse(settings.warehouse_path, history)
    cutoffs = [pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=d) for d in CUTOFF_DAYS]
    point_in_time_features(history, cutoffs).to_parquet(
        settings.features_dir / "customer_features.parquet", index=False
    )
    fake_store = types.ModuleType("features.store")
    fake_store.historical_features = fake_historical_features
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "features.store", fake_store)
        yield settings


@pytest.fixture(scope="module")
def frame(settings) -> pd.DataFrame:
    return build_training_frame(settings)


def test_training_frame_has_labels_at_eligible_cutoffs_and_point_in_time_features(
    frame, history
) -> None:
    data_end = history["occurred_at"].max()
    assert frame.attrs["data_end"] == data_end.isoformat()
    churn_rows = frame[frame["churned"].notna()]
    churn_cutoffs = sorted(churn_rows["event_timestamp"].unique())
    all_cutoffs = sorted(frame["event_timestamp"].unique())
    observed = [c for c in all_cutoffs if c.tz_localize(None) + pd.Timedelta(days=90) <= data_end]
    assert churn_cutoffs == observed and 3 <= len(observed) < len(all_cutoffs)
    repurchase_cutoffs = sorted(frame.loc[frame["repurchased"].notna(), "event_timestamp"].unique())
    assert repurchase_cutoffs == all_cutoffs  # the shorter window is observed at more cutoffs
    assert all_cutoffs[-1].tz_localize(None) + pd.Timedelta(days=30) <= data_end
    expected = churn_labels(history, churn_cutoffs, 90)
    merged = churn_rows.merge(expected, on=["customer_id", "event_timestamp"], suffixes=("", "_x"))
    assert len(merged) == len(expected) == len(churn_rows)
    assert (merged["churned"] == merged["churned_x"]).all()
    assert feature_columns(frame) == [
        "days_since_last_purchase",
        "purchases_90d",
        "spend_365d",
        "tenure_days",
    ]
    # every labelled customer had bought before the cutoff, so has a recency feature
    assert frame["days_since_last_purchase"].notna().all()


def test_time_split_is_ordered_and_disjoint(frame) -> None:
    split = time_split(frame, "churned", holdout_snapshots=1)
    cutoffs = split.cutoffs()
    assert len(cutoffs["calibration"]) == 1 and len(cutoffs["holdout"]) == 1
    assert max(cutoffs["fit"]) < cutoffs["calibration"][0] < cutoffs["holdout"][0]
    assert (
        len(split.fit) + len(split.calibration) + len(split.holdout)
        == frame["churned"].notna().sum()
    )
    two = time_split(frame, "repurchased", holdout_snapshots=2)
    assert len(two.cutoffs()["holdout"]) == 2
    with pytest.raises(TrainingDataError, match="eligible cutoff"):
        time_split(frame, "churned", holdout_snapshots=4)


@pytest.mark.parametrize("kind", ["churn", "repurchase"])
def test_models_learn_and_are_compared_with_baselines_on_the_holdout(frame, settings, kind) -> None:
    trained = train_target(settings, frame, kind)
    metrics = trained.metrics
    assert set(metrics) == {"model", "rfm", "logistic"}
    assert metrics["model"]["roc_auc"] > 0.7
    for scorer in metrics.values():
        assert 0.0 <= scorer["brier"] <= 0.5 and scorer["lift_top_decile"] > 0
    assert metrics["rfm"]["roc_auc"] > 0.6  # recency alone carries signal in this simulation
    holdout_cutoff = trained.split.cutoffs()["holdout"][0]
    assert all(ts.isoformat() < holdout_cutoff for ts in trained.split.fit["event_timestamp"])


def test_rfm_rule_ranks_by_recency_then_frequency() -> None:
    frame = pd.DataFrame(
        {"days_since_last_purchase": [10.0, 10.0, 50.0, np.nan], "purchases_90d": [5.0, 1, 0, 0]}
    )
    churn = rfm_rule_scores(frame, "churn")
    assert list(np.argsort(churn)) == [0, 1, 2, 3]
    assert list(np.argsort(rfm_rule_scores(frame, "repurchase"))) == [3, 2, 1, 0]


def test_reference_features_are_the_training_rows_sampled_with_scores(frame, settings) -> None:
    trained = train_target(settings, frame, "churn")
    reference = reference_features(trained, sample_rows=100)
    assert len(reference) == 100
    assert reference["churn_probability"].between(0, 1).all()
    training_cutoffs = set(trained.split.fit["event_timestamp"]) | set(
        trained.split.calibration["event_timestamp"]
    )
    assert set(reference["event_timestamp"]) <= training_cutoffs
    assert "churned" not in reference.columns


def test_missing_inputs_say_which_command_to_run(tmp_path) -> None:
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(TrainingDataError, match="omniretain ingest"):
        build_training_frame(settings)
