"""Drift that triggers retraining: check served traffic, decide, retrain, record it in MLflow.

The loop: the features of the decisions served in the last ``monitoring.drift.window_days``
(from the decision log; the newest feature snapshot when nothing was served yet) are compared with
the training reference by :func:`monitoring.drift.run_drift`. A verdict (share of drifted
features at or above ``monitoring.drift_share_threshold``), or prediction drift when
``retrain_on_prediction_drift`` is set, calls the training pipeline with ``reason="drift"``.
Every check, retrain or not, is an MLflow run of the experiment ``omniretain-monitoring`` with
the verdict as tags and metrics and the Evidently HTML/JSON and our summary attached, so a model's
history shows why it was retrained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.drift import DriftReport, load_latest_snapshot, run_drift
from monitoring.logs import decision_features, read_decisions
from omniretain.settings import DriftSettings, Settings

MONITORING_EXPERIMENT = "omniretain-monitoring"
RetrainFunction = Callable[[Settings], Any]


@dataclass
class TriggerResult:
    """One drift check and what it led to."""

    drift: DriftReport
    retrain: bool
    reason: str
    retrain_result: Any
    mlflow_run_id: str
    window: str

    def render(self) -> Any:
        from rich.console import Group

        action = (
            f"[bold yellow]retrained[/] ({self.reason})"
            if self.retrain
            else f"[green]no retrain[/] ({self.reason})"
        )
        retrain_render = getattr(self.retrain_result, "render", None)
        return Group(
            f"window: {self.window}",
            self.drift.render(),
            *([retrain_render()] if callable(retrain_render) else []),
            f"{action}; MLflow run {self.mlflow_run_id} in experiment {MONITORING_EXPERIMENT!r}",
        )


# ---- pure decision ---------------------------------------------------------------------------
def retrain_decision(report: DriftReport, config: DriftSettings) -> tuple[bool, str]:
    """Whether this drift report calls for retraining, and the reason in words."""
    if report.drift_detected:
        return True, (
            f"{len(report.drifted_columns)}/{len(report.columns)} columns drifted "
            f"(share {report.share_drifted:.2f} >= {report.threshold:.2f})"
        )
    if config.retrain_on_prediction_drift and report.prediction_drifted:
        return True, "prediction drift: the churn score distribution moved"
    return False, (
        f"share of drifted columns {report.share_drifted:.2f} < {report.threshold:.2f}"
        + (", scores stable" if report.prediction_drifted is False else "")
    )


def latest_per_customer(served: pd.DataFrame) -> pd.DataFrame:
    """One row per customer (the newest decision): a customer asked 50 times is one customer."""
    if served.empty:
        return served
    ordered = served.sort_values("event_timestamp")
    return ordered.drop_duplicates("customer_id", keep="last").reset_index(drop=True)


# ---- I/O edges -------------------------------------------------------------------------------
def served_window(
    settings: Settings, now: datetime | None = None, window_days: int | None = None
) -> tuple[pd.DataFrame, str]:
    """Features of the decisions served in the window, or the newest snapshot if too few were.

    A window of fewer than ``monitoring.drift.min_window_customers`` customers (a demo's few
    requests about hand-picked customers) says nothing about the population: the newest feature
    snapshot is checked instead. Returns the frame and a description of where it came from.
    """
    now = now or datetime.now(UTC)
    days = window_days or settings.monitoring.drift.window_days
    since = now - timedelta(days=days)
    decisions = read_decisions(settings, since=since, until=now, feature_columns=True)
    served = latest_per_customer(decision_features(decisions)) if not decisions.empty else None
    minimum = settings.monitoring.drift.min_window_customers
    if served is None or len(served) < minimum:
        count = 0 if served is None else len(served)
        return with_champion_scores(settings, load_latest_snapshot(settings)), (
            f"newest feature snapshot ({count} customers served in the last {days} days, "
            f"fewer than monitoring.drift.min_window_customers={minimum})"
        )
    return served, (
        f"served traffic {since:%Y-%m-%d %H:%M} .. {now:%Y-%m-%d %H:%M} UTC: "
        f"{len(decisions)} decisions, {len(served)} customers"
    )


def with_champion_scores(settings: Settings, snapshot: pd.DataFrame) -> pd.DataFrame:
    """The snapshot with the churn champion's scores, so prediction drift is checked too.

    Without a champion (nothing trained yet) the features alone are compared.
    """
    from training.registry import ModelNotFoundError, load_champion

    try:
        champion = load_champion(settings, "churn")
    except ModelNotFoundError:
        return snapshot
    matrix = snapshot[champion.model.feature_names].to_numpy(dtype="float64", na_value=float("nan"))
    return snapshot.assign(churn_probability=champion.model.predict_proba(matrix)[:, 1])


def default_retrain(settings: Settings) -> Any:
    """The training pipeline with ``reason="drift"``; plain training until the pipeline exists."""
    try:
        from training.pipeline import run_pipeline
    except ImportError:
        from training.train import train

        return train(settings, progress=False)
    return run_pipeline(settings, reason="drift")


def _retrain_summary(result: Any) -> dict[str, str]:
    """Champion versions and promotion per model, when the result says so (for MLflow tags)."""
    tags: dict[str, str] = {}
    for attribute in ("status", "parent_run_id"):  # the pipeline's report says these
        value = getattr(result, attribute, None)
        if value is not None:
            tags[f"retrain.{attribute}"] = str(value)
    models = getattr(result, "models", None)
    if not isinstance(models, dict):
        return tags
    for kind, report in models.items():
        version = getattr(report, "version", None)
        if version is not None:
            tags[f"retrain.{kind}.version"] = str(version)
            tags[f"retrain.{kind}.champion"] = str(getattr(report, "champion", ""))
    return tags


def monitoring_experiment_id(settings: Settings) -> str:
    """The monitoring experiment, its artifacts under the project's MLflow folder (not ./mlruns)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (Path(settings.mlflow_artifact_root) / MONITORING_EXPERIMENT).resolve().as_uri()
    return str(client.create_experiment(MONITORING_EXPERIMENT, artifact_location=location))


def log_check(
    settings: Settings, report: DriftReport, retrain: bool, reason: str, extra_tags: dict[str, str]
) -> str:
    """One MLflow run per check: verdict as tags and metrics, the reports as artifacts."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment_id = monitoring_experiment_id(settings)
    run_name = f"drift-{report.generated_at:%Y%m%dT%H%M%SZ}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(
            {
                "drift.detected": str(report.drift_detected),
                "drift.prediction_drifted": str(report.prediction_drifted),
                "drift.retrain": str(retrain),
                "drift.reason": reason,
                "drift.drifted_columns": ",".join(c.column for c in report.drifted_columns)[:5000],
                "drift.excluded_columns": ",".join(
                    f"{c.column}:{c.excluded}" for c in report.columns_excluded
                )[:5000],
                **extra_tags,
            }
        )
        mlflow.log_params({"share_threshold": report.threshold, "n_reference": report.n_reference})
        mlflow.log_metrics(
            {
                "share_drifted": report.share_drifted,
                "n_drifted": float(len(report.drifted_columns)),
                "n_tested": float(len(report.columns)),
                "n_current": float(report.n_current),
            }
        )
        for path in (report.html_path, report.json_path, report.summary_path):
            mlflow.log_artifact(str(path), artifact_path="drift")
        return str(run.info.run_id)


def check_and_retrain(
    settings: Settings,
    current: pd.DataFrame | None = None,
    reference: pd.DataFrame | None = None,
    retrain_function: RetrainFunction = default_retrain,
    window_description: str | None = None,
    allow_retrain: bool = True,
) -> TriggerResult:
    """Run drift on ``current`` (default: the served window), retrain on a verdict, log both.

    With ``allow_retrain`` False the verdict is reported and logged but nothing is retrained.
    """
    if current is None:
        current, window_description = served_window(settings)
    report = run_drift(settings, current=current, reference=reference)
    retrain, reason = retrain_decision(report, settings.monitoring.drift)
    if retrain and not allow_retrain:
        retrain, reason = False, f"{reason}; retraining disabled (--no-retrain)"
    result = retrain_function(settings) if retrain else None
    run_id = log_check(settings, report, retrain, reason, _retrain_summary(result))
    return TriggerResult(
        drift=report,
        retrain=retrain,
        reason=reason,
        retrain_result=result,
        mlflow_run_id=run_id,
        window=window_description or "given frame",
    )
