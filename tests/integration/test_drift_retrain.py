"""The drift-to-retrain loop end to end: simulator -> ingest -> features -> Feast -> MLflow
champion; then served decisions of two other populations go through the real decision log.

- an *unshifted* population (same world, another seed) served a month ago: no drift verdict, no
  retrain, only a monitoring run in MLflow;
- a *shifted* population (customers buy far less often (15 % of the rate), as after a price
  rise) served now: a drift verdict, a real retrain (a new registered model version), and the
  MLflow monitoring run carries the Evidently report.

Both windows hold the features at their world's real served date (the snapshot after its data
ends), months after the reference's cutoff: tenure, lifetime totals and "days since" have grown
meanwhile whatever customers did, and are reported as excluded, not counted in the verdict.

Before the checks, decisions are replayed at the latest day whose churn window has closed, and
outcome tracking scores them against the purchases after that day (ROC AUC, calibration).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from monitoring.drift import load_reference, scored_population
from monitoring.logs import DecisionLogger, DecisionRecord
from monitoring.outcomes import outcome_report
from monitoring.replay import replay_decisions
from monitoring.trigger import (
    MONITORING_EXPERIMENT,
    TriggerResult,
    check_and_retrain,
    default_retrain,
    served_window,
)
from omniretain.settings import Settings, load_settings

CUSTOMERS, MONTHS = 400, 10
SMALL_LIGHTGBM = {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 15, "n_jobs": 1}
NOW = datetime.now(UTC)
UNSHIFTED_AT = NOW - timedelta(days=30)


def small_settings(state_dir: Path) -> Settings:
    settings = load_settings(state_dir=state_dir)
    settings.training.lightgbm = dict(SMALL_LIGHTGBM)
    settings.ensure_dirs()
    return settings


def simulate_and_ingest(settings: Settings, seed: int, purchase_scale: float = 1.0) -> None:
    """The simulated retailer; ``purchase_scale`` < 1 makes everyone buy less often."""
    from features.ingest import ingest
    from omniretain import simulator

    base = simulator.WorldParameters()
    shifted = dataclasses.replace(
        base,
        purchase_rate_base=base.purchase_rate_base * purchase_scale,
        purchase_rate_engagement=base.purchase_rate_engagement * purchase_scale,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulator, "WorldParameters", lambda: shifted)
        simulator.simulate(settings, customers=CUSTOMERS, months=MONTHS, seed=seed, progress=False)
    ingest(settings, progress=False)


def features_at_served_date(settings: Settings) -> pd.DataFrame:
    """The features of the snapshot ``build-features`` serves: right after the data ends."""
    from features.build import compute_features, event_time_range, serving_cutoff

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        served_at = serving_cutoff(event_time_range(con)[1])
        frame = compute_features(con, [served_at], settings.features.lookback_days)
    return scored_population(frame)


def serve(settings: Settings, frame: pd.DataFrame, at: datetime) -> int:
    """Score every customer with the champion and log the decisions, as the service does."""
    from training.registry import load_champion

    churn, repurchase = load_champion(settings, "churn"), load_champion(settings, "repurchase")
    churn_x = frame[churn.model.feature_names].to_numpy(dtype=np.float64)
    repurchase_x = frame[repurchase.model.feature_names].to_numpy(dtype=np.float64)
    churn_p = churn.model.predict_proba(churn_x)[:, 1]
    repurchase_p = repurchase.model.predict_proba(repurchase_x)[:, 1]
    features = frame[churn.model.feature_names].to_dict(orient="records")
    with DecisionLogger(settings) as log:
        for i, customer in enumerate(frame["customer_id"]):
            log.log(
                DecisionRecord(
                    customer_id=str(customer),
                    churn_probability=float(churn_p[i]),
                    repurchase_probability=float(repurchase_p[i]),
                    action="no_action",
                    channel="none",
                    churn_model_version=churn.version,
                    repurchase_model_version=repurchase.version,
                    features=features[i],
                    source="batch",
                    decided_at=at + timedelta(seconds=i),
                )
            )
    assert log.stats.dropped == 0 and log.stats.write_errors == 0
    return len(frame)


def registered_versions(settings: Settings) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    return len(client.search_model_versions("name='omniretain-churn'"))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    from features.build import build_features
    from training.train import train

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = small_settings(tmp_path_factory.mktemp("drift_loop"))
        simulate_and_ingest(settings, seed=21)
        build_features(settings, progress=False)
        train(settings, progress=False)
        reference_cutoff = load_reference(settings)["event_timestamp"].max()
        replayed = replay_decisions(settings)
        outcomes = outcome_report(settings)

        same_world = small_settings(tmp_path_factory.mktemp("drift_unshifted"))
        simulate_and_ingest(same_world, seed=22)
        unshifted_features = features_at_served_date(same_world)
        serve(settings, unshifted_features, UNSHIFTED_AT)
        buys_less = small_settings(tmp_path_factory.mktemp("drift_shifted"))
        simulate_and_ingest(buys_less, seed=23, purchase_scale=0.15)
        serve(settings, features_at_served_date(buys_less), NOW)

        retrains: list[object] = []

        def retrain(s: Settings) -> object:
            retrains.append(s)
            return default_retrain(s)

        versions_before = registered_versions(settings)
        unshifted_frame, unshifted_window = served_window(
            settings, UNSHIFTED_AT + timedelta(days=1)
        )
        unshifted = check_and_retrain(
            settings, unshifted_frame, retrain_function=retrain, window_description=unshifted_window
        )
        versions_between = registered_versions(settings)
        shifted_frame, shifted_window = served_window(settings, NOW + timedelta(days=1))
        shifted = check_and_retrain(
            settings, shifted_frame, retrain_function=retrain, window_description=shifted_window
        )
        yield {
            "settings": settings,
            "unshifted": unshifted,
            "shifted": shifted,
            "retrains": retrains,
            "versions": (versions_before, versions_between, registered_versions(settings)),
            "windows": (unshifted_window, shifted_window),
            "reference_cutoff": reference_cutoff,
            "served_date": unshifted_features["event_timestamp"].max(),
            "replayed": replayed,
            "outcomes": outcomes,
        }


def test_unshifted_window_gives_no_verdict_and_no_retrain(loop: dict) -> None:
    result: TriggerResult = loop["unshifted"]
    # compared at the real served date, months after the reference's cutoff
    assert loop["served_date"] - loop["reference_cutoff"] > pd.Timedelta(days=90)
    assert result.drift.drift_detected is False, result.drift.drifted_columns
    assert result.drift.prediction_drifted is False
    assert result.retrain is False and result.retrain_result is None
    before, between, _ = loop["versions"]
    assert between == before


def test_shifted_window_gives_a_verdict_and_a_real_retrain(loop: dict) -> None:
    result: TriggerResult = loop["shifted"]
    # a verdict on the share of drifted features, or the churn score itself moved
    assert result.drift.drift_detected or result.drift.prediction_drifted
    drifted = {c.column for c in result.drift.drifted_columns}
    assert {"purchases_90d", "purchases_365d"} & drifted, drifted
    assert result.retrain is True and len(loop["retrains"]) == 1
    assert getattr(result.retrain_result, "ok", True), result.retrain_result  # pipeline status
    _, between, after = loop["versions"]
    assert after == between + 1  # the retrain registered a new churn model version


def test_calendar_columns_are_shown_as_excluded_not_counted(loop: dict) -> None:
    drift = loop["unshifted"].drift
    excluded = {c.column: c for c in drift.columns_excluded}
    assert excluded["tenure_days"].excluded == "cumulative"
    assert excluded["tenure_days"].drifted  # it moved with the calendar, and says so
    assert excluded["spend_365d"].excluded == "truncated window"  # 365 days > the history then
    assert "tenure_days" not in drift.columns_tested and "purchases_90d" in drift.columns_tested
    summary = json.loads(drift.summary_path.read_text())
    assert {c["column"] for c in summary["columns_excluded"]} == set(excluded)


def test_replayed_decisions_are_scored_against_what_happened_after(loop: dict) -> None:
    replayed = loop["replayed"]
    assert replayed.logged > 100
    assert replayed.as_of > loop["reference_cutoff"]  # never a cutoff the champion learnt from
    quality = loop["outcomes"].score_quality
    assert list(quality["model_version"]) == [replayed.model_versions["churn"]]
    row = quality.iloc[0]
    assert row["decisions"] == replayed.logged
    assert 0 < row["churned"] < row["decisions"]
    assert row["roc_auc"] > 0.6  # real ranking skill on decisions after training
    assert row["ece"] < 0.2


def test_each_window_is_read_from_the_decision_log(loop: dict) -> None:
    unshifted_window, shifted_window = loop["windows"]
    assert "served traffic" in unshifted_window and "served traffic" in shifted_window
    assert loop["unshifted"].drift.n_current > 100 and loop["shifted"].drift.n_current > 100


def test_every_check_is_an_mlflow_run_with_the_report_attached(loop: dict) -> None:
    from mlflow import MlflowClient

    settings: Settings = loop["settings"]
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    shifted = runs[loop["shifted"].mlflow_run_id]
    unshifted = runs[loop["unshifted"].mlflow_run_id]
    assert shifted.data.tags["drift.retrain"] == "True"
    assert unshifted.data.tags["drift.retrain"] == "False"
    threshold = float(shifted.data.params["share_threshold"])
    assert shifted.data.metrics["share_drifted"] > unshifted.data.metrics["share_drifted"]
    assert unshifted.data.metrics["share_drifted"] < threshold
    artifacts = {a.path for a in client.list_artifacts(shifted.info.run_id, "drift")}
    assert {"drift/report.html", "drift/report.json", "drift/summary.json"} <= artifacts
