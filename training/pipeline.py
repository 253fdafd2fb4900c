"""The retraining pipeline: ingest -> features (+ materialize) -> train, gate, promote -> verify.

One parent MLflow run (experiment ``omniretain-pipeline``) with a nested run per step, each with
its duration, summary and status; the model runs of the train step (one experiment per model)
are tagged with the parent's id. The pipeline is:

- **idempotent**: after ingesting, a fingerprint of every ingested file and of the settings that
  shape a model is compared with the last successful run's; the same fingerprint with a
  champion in place means nothing new, and the remaining steps are skipped (``force`` or a
  ``drift`` reason runs them anyway: a drift verdict is itself new information).
- **safe**: the champion aliases are snapshotted before any step; when a step fails they are put
  back (:func:`training.registry.restore_champions`), so a failed run leaves the champions it
  found. Versions it registered stay, as challengers.
- **exclusive**: a lock file under the state dir keeps a scheduled run and a drift-triggered run
  from overlapping; the second one reports ``busy`` and does nothing.

Training itself (fit, holdout evaluation beside the baselines, registration as challenger, the
promotion gate and the champion move) is :func:`training.train.train`; this module orders the
stages, records them and protects the registry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omniretain.settings import Settings
from training.registry import (
    ChampionState,
    RegistryChange,
    champion_versions,
    load_champion,
    restore_champions,
    snapshot_champions,
)

PIPELINE_EXPERIMENT = "omniretain-pipeline"
FORCING_REASONS = frozenset({"drift"})
REQUIRED_CHAMPIONS = ("churn", "repurchase")  # the service cannot answer without these
# The settings sections whose change must retrain even when no new data arrived.
MODEL_SHAPING_SETTINGS = ("labels", "features", "training")
VERIFY_ROWS = 200
FINGERPRINT_AFTER = "ingest"  # the step after which new data, or none, is known

logger = logging.getLogger("omniretain.pipeline")


class PipelineStepError(RuntimeError):
    """A step of the pipeline failed; the champions were restored."""


@dataclass
class PipelineStep:
    """One stage: ``run`` does it, ``summarize`` turns its result into a line and metrics."""

    name: str
    run: Callable[[Settings], Any]
    summarize: Callable[[Any], tuple[str, dict[str, float]]] = lambda _: ("done", {})


@dataclass
class StepResult:
    name: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    summary: str = ""
    run_id: str | None = None


@dataclass
class PipelineReport:
    """What one pipeline run did; ``status`` is succeeded, nothing new, failed or busy."""

    reason: str
    status: str
    started_at: str
    steps: list[StepResult] = field(default_factory=list)
    parent_run_id: str | None = None
    champions_before: dict[str, str] = field(default_factory=dict)
    champions_after: dict[str, str] = field(default_factory=dict)
    restored: list[RegistryChange] = field(default_factory=list)
    error: str | None = None
    log_path: Path | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "nothing new")

    @property
    def models(self) -> dict[str, Any]:
        """The train step's model reports by kind (empty when training did not run)."""
        return getattr(self.outputs.get("train"), "models", {}) or {}

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"pipeline ({self.reason}): {self.status}", title_justify="left")
        for column in ("step", "status", "seconds", "summary"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        colours = {"done": "green", "skipped": "dim", "failed": "bold red"}
        for step in self.steps:
            table.add_row(
                step.name,
                f"[{colours.get(step.status, '')}]{step.status}[/]",
                f"{step.seconds:.1f}",
                step.summary,
            )
        lines: list[Any] = [table]
        if self.error:
            lines.append(f"[bold red]error:[/] {self.error}")
        for change in self.restored:
            lines.append(f"restored: {change.render()}")
        lines.append(f"champions before {self.champions_before} -> after {self.champions_after}")
        if self.parent_run_id:
            lines.append(f"MLflow run {self.parent_run_id} (experiment {PIPELINE_EXPERIMENT})")
        if self.log_path:
            lines.append(f"log: {self.log_path}")
        return Group(*lines)


# ---- the steps -----------------------------------------------------------------------------------


def _ingest(settings: Settings) -> Any:
    from features.ingest import ingest

    return ingest(settings, progress=False)


def _summarize_ingest(report: Any) -> tuple[str, dict[str, float]]:
    totals = report.totals()
    new_files = len(report.files)
    accepted = getattr(totals, "accepted", 0)
    quarantined = getattr(totals, "quarantined", 0)
    return (
        f"{new_files} new file(s), {accepted:,} rows accepted, {quarantined:,} quarantined",
        {"new_files": new_files, "rows_accepted": accepted, "rows_quarantined": quarantined},
    )


def _build_features(settings: Settings) -> Any:
    from features.build import build_features

    return build_features(settings, progress=False)


def _summarize_features(report: Any) -> tuple[str, dict[str, float]]:
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.seconds.items())
    materialized = int(report.materialized.get("customers", 0) or 0)
    return (
        f"{report.rows:,} snapshot rows, {report.feature_count} features, "
        f"{materialized:,} customers materialized ({steps})",
        {
            "snapshot_rows": report.rows,
            "materialized_customers": materialized,
            **{f"{name}_seconds": seconds for name, seconds in report.seconds.items()},
        },
    )


def _train(settings: Settings) -> Any:
    from training.train import train

    return train(settings, progress=False)


def _summarize_train(report: Any) -> tuple[str, dict[str, float]]:
    parts, metrics = [], {}
    for kind, model in report.models.items():
        role = "champion" if model.champion else "challenger"
        parts.append(f"{kind} v{model.version} {role}: {model.reason}")
        metrics[f"{kind}_promoted"] = float(model.champion)
        for name, value in model.metrics.get("model", {}).items():
            metrics[f"{kind}_holdout_{name}"] = value
    return "; ".join(parts), metrics


def verify_champions(settings: Settings) -> dict[str, str]:
    """Load every champion the service needs and score the newest snapshot with it.

    The check the service would otherwise fail at start-up: the artifact loads, the features it
    needs are in the snapshot, and the probabilities are finite and within [0, 1].
    """
    import numpy as np
    import pandas as pd

    from training.train import TIMESTAMP_COLUMN, feature_table_path

    snapshot = pd.read_parquet(feature_table_path(settings))
    newest = snapshot[snapshot[TIMESTAMP_COLUMN] == snapshot[TIMESTAMP_COLUMN].max()]
    rows = newest.head(VERIFY_ROWS)
    verified: dict[str, str] = {}
    for kind in REQUIRED_CHAMPIONS:
        champion = load_champion(settings, kind)
        missing = [name for name in champion.model.feature_names if name not in rows.columns]
        if missing:
            raise PipelineStepError(
                f"{kind} champion v{champion.version} needs features the snapshot lacks: {missing}"
            )
        matrix = rows[champion.model.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        probabilities = champion.model.predict_proba(matrix)[:, 1]
        if not np.all(np.isfinite(probabilities)) or np.any(
            (probabilities < 0) | (probabilities > 1)
        ):
            raise PipelineStepError(
                f"{kind} champion v{champion.version} gives probabilities outside [0, 1]"
            )
        verified[kind] = champion.version
    return verified


def _summarize_verify(verified: dict[str, str]) -> tuple[str, dict[str, float]]:
    return (
        ", ".join(f"{kind} v{version} loads and scores" for kind, version in verified.items()),
        {},
    )


def default_steps() -> list[PipelineStep]:
    return [
        PipelineStep("ingest", _ingest, _summarize_ingest),
        PipelineStep("build-features", _build_features, _summarize_features),
        PipelineStep("train", _train, _summarize_train),
        PipelineStep("verify", verify_champions, _summarize_verify),
    ]


# ---- idempotence (pure, plus one read) ----------------------------------------------------------


def pipeline_fingerprint(file_digests: list[str], settings: Settings) -> str:
    """The inputs of a model: every ingested file's digest and the settings that shape it."""
    shaping = {
        name: getattr(settings, name).model_dump(mode="json") for name in MODEL_SHAPING_SETTINGS
    }
    payload = json.dumps({"files": sorted(file_digests), "settings": shaping}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def ingested_file_digests(settings: Settings) -> list[str]:
    import duckdb

    if not settings.warehouse_path.exists():
        return []
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        return [
            row[0] for row in connection.execute("SELECT sha256 FROM ingested_files").fetchall()
        ]


def pipeline_dir(settings: Settings) -> Path:
    return settings.state_dir / "pipeline"


def _state_path(settings: Settings) -> Path:
    return pipeline_dir(settings) / "last_success.json"


def last_success(settings: Settings) -> dict[str, Any]:
    path = _state_path(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def _record_success(settings: Settings, fingerprint: str, run_id: str | None) -> None:
    path = _state_path(settings)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        json.dumps(
            {"fingerprint": fingerprint, "run_id": run_id, "at": datetime.now(UTC).isoformat()}
        )
    )
    temporary.replace(path)


@contextmanager
def _exclusive(settings: Settings) -> Iterator[bool]:
    """Hold the pipeline lock if free; yields whether this process got it."""
    path = pipeline_dir(settings) / "pipeline.lock"
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- MLflow records (I/O edge) -----------------------------------------------------------------


class _RunRecorder:
    """The parent run and one nested run per step, through ``MlflowClient`` (no fluent state,
    so :func:`training.train.train` can open its own runs meanwhile)."""

    def __init__(self, settings: Settings, reason: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        self.client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        experiment = self.client.get_experiment_by_name(PIPELINE_EXPERIMENT)
        if experiment is None:
            location = (Path(settings.mlflow_artifact_root) / PIPELINE_EXPERIMENT).resolve()
            self.experiment_id = self.client.create_experiment(
                PIPELINE_EXPERIMENT, artifact_location=location.as_uri()
            )
        else:
            self.experiment_id = experiment.experiment_id
        self.parent = self.client.create_run(
            self.experiment_id,
            run_name=f"pipeline-{reason}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            tags={"omniretain.reason": reason},
        ).info.run_id

    def step(self, name: str) -> str:
        return self.client.create_run(
            self.experiment_id, run_name=name, tags={"mlflow.parentRunId": self.parent}
        ).info.run_id

    def finish_step(self, run_id: str, result: StepResult, metrics: dict[str, float]) -> None:
        import math

        self.client.set_tag(run_id, "summary", result.summary[:4000])
        self.client.log_metric(run_id, "seconds", result.seconds)
        for key, value in metrics.items():
            if isinstance(value, int | float) and not math.isnan(float(value)):
                self.client.log_metric(run_id, key, float(value))
        self.client.set_terminated(run_id, "FINISHED" if result.status == "done" else "FAILED")

    def tag_model_runs(self, output: Any) -> None:
        for model in (getattr(output, "models", None) or {}).values():
            run_id = getattr(model, "run_id", None)
            if run_id:
                self.client.set_tag(run_id, "omniretain.pipeline_run_id", self.parent)

    def finish(self, report: PipelineReport, log_text: str) -> None:
        self.client.set_tag(self.parent, "omniretain.status", report.status)
        self.client.log_text(self.parent, log_text, "pipeline.log")
        self.client.set_terminated(self.parent, "FINISHED" if report.ok else "FAILED")


# ---- the run -------------------------------------------------------------------------------------


def run_pipeline(
    settings: Settings,
    reason: str = "manual",
    *,
    force: bool = False,
    steps: list[PipelineStep] | None = None,
) -> PipelineReport:
    """Run the retraining pipeline once; never raises for a failed step (see ``status``).

    Args:
        settings: the project settings.
        reason: why it runs ("manual", "schedule", "drift", ...); recorded on the MLflow run.
            ``drift`` retrains even when no new data arrived.
        force: retrain even when nothing changed since the last successful run.
        steps: the stages, :func:`default_steps` by default (tests add a failing one).
    """
    settings.ensure_dirs()
    pipeline_dir(settings).mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    report = PipelineReport(reason=reason, status="running", started_at=started.isoformat())
    with _exclusive(settings) as acquired:
        if not acquired:
            report.status = "busy"
            report.error = "another pipeline run holds the lock; nothing done"
            logger.warning(report.error)
            return report
        return _run_locked(settings, report, force or reason in FORCING_REASONS, steps)


def _run_locked(
    settings: Settings, report: PipelineReport, force: bool, steps: list[PipelineStep] | None
) -> PipelineReport:
    log_lines: list[str] = []

    def log(message: str, level: int = logging.INFO) -> None:
        logger.log(level, message)
        log_lines.append(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z {message}")

    steps = steps if steps is not None else default_steps()
    recorder = _RunRecorder(settings, report.reason)
    report.parent_run_id = recorder.parent
    before: dict[str, ChampionState] = snapshot_champions(settings)
    report.champions_before = champion_versions(settings)
    log(f"pipeline {recorder.parent} ({report.reason}); champions {report.champions_before}")
    fingerprint = ""
    try:
        for index, step in enumerate(steps):
            result = _run_step(step, settings, recorder, report, log)
            report.steps.append(result)
            if step.name != FINGERPRINT_AFTER:
                continue
            fingerprint = pipeline_fingerprint(ingested_file_digests(settings), settings)
            unchanged = last_success(settings).get("fingerprint") == fingerprint
            have_champions = all(k in report.champions_before for k in REQUIRED_CHAMPIONS)
            if unchanged and have_champions and not force:
                report.steps += [
                    StepResult(rest.name, "skipped", summary="nothing new")
                    for rest in steps[index + 1 :]
                ]
                report.status = "nothing new"
                log(
                    "nothing new since the last successful run (no new feed file, same "
                    "settings, champions in place): the remaining steps are skipped"
                )
                break
        else:
            report.status = "succeeded"
            fingerprint = fingerprint or pipeline_fingerprint(
                ingested_file_digests(settings), settings
            )
            _record_success(settings, fingerprint, recorder.parent)
    except PipelineStepError as error:
        report.status = "failed"
        report.error = str(error)
        report.restored = restore_champions(settings, before)
        log(f"failed: {error}", logging.ERROR)
        for change in report.restored:
            log(f"restored {change.render()}", logging.WARNING)
        if not report.restored:
            log("champions untouched: nothing to restore")
    report.champions_after = champion_versions(settings)
    log(f"{report.status}; champions {report.champions_after}")
    report.log_path = _write_log(settings, report, log_lines)
    recorder.finish(report, "\n".join(log_lines) + "\n")
    return report


def _run_step(
    step: PipelineStep,
    settings: Settings,
    recorder: _RunRecorder,
    report: PipelineReport,
    log: Callable[..., None],
) -> StepResult:
    run_id = recorder.step(step.name)
    log(f"{step.name}: started")
    started = time.perf_counter()
    try:
        output = step.run(settings)
        summary, metrics = step.summarize(output)
    except Exception as error:  # every failure of a stage fails the pipeline the same way
        result = StepResult(
            step.name,
            "failed",
            round(time.perf_counter() - started, 3),
            f"{type(error).__name__}: {error}",
            run_id,
        )
        report.steps.append(result)
        recorder.finish_step(run_id, result, {})
        log(f"{step.name}: failed after {result.seconds:.1f} s\n{traceback.format_exc()}")
        raise PipelineStepError(f"step {step.name!r} failed: {result.summary}") from error
    result = StepResult(step.name, "done", round(time.perf_counter() - started, 3), summary, run_id)
    report.outputs[step.name] = output
    recorder.tag_model_runs(output)
    recorder.finish_step(run_id, result, metrics)
    log(f"{step.name}: done in {result.seconds:.1f} s: {summary}")
    return result


def _write_log(settings: Settings, report: PipelineReport, lines: list[str]) -> Path:
    path = pipeline_dir(settings) / "logs" / f"{report.started_at[:19].replace(':', '')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- the in-process schedule -------------------------------------------------------------------


WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 (and 7) = Sunday


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field in names, which APScheduler reads unambiguously.

    APScheduler 3 numbers weekdays from Monday = 0, crontab from Sunday = 0: ``0 3 * * 1``
    would fire on Tuesdays. Numbers are expanded to the days they mean in crontab.
    """
    if field == "*" or any(character.isalpha() for character in field):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            start, end = span.split("-", 1)
            first, last = int(start), int(end)
        else:
            first = last = int(span)
            if step_text:
                last = 6
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step >= 1):
            raise ValueError(f"day of week {part!r} is not within 0-7")
        days.update(day % 7 for day in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(WEEKDAY_NAMES[day] for day in sorted(days))


def cron_trigger(expression: str, timezone: str):  # -> apscheduler CronTrigger
    """A trigger from a five-field crontab expression (crontab's weekday numbering).

    Raises:
        ValueError: the expression is not a valid crontab line (the message says which field).
    """
    from apscheduler.triggers.cron import CronTrigger

    try:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields, got {len(fields)}")
        fields[4] = crontab_weekdays(fields[4])
        return CronTrigger.from_crontab(" ".join(fields), timezone=timezone)
    except ValueError as error:
        raise ValueError(
            f"pipeline.schedule_cron {expression!r} is not a crontab expression "
            f"(minute hour day month weekday, e.g. '0 3 * * 1'): {error}"
        ) from None


def next_runs(expression: str, timezone: str, count: int, after: datetime) -> list[datetime]:
    """The next ``count`` times the schedule fires after ``after`` (shown before waiting)."""
    trigger = cron_trigger(expression, timezone)
    times: list[datetime] = []
    previous = None
    moment = after
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        times.append(fire)
        previous, moment = fire, fire
    return times


def schedule_pipeline(
    settings: Settings,
    *,
    cron: str | None = None,
    max_runs: int | None = None,
    on_report: Callable[[PipelineReport], None] = lambda _: None,
) -> list[PipelineReport]:
    """Run the pipeline on the cron schedule until stopped (Ctrl-C) or after ``max_runs``.

    APScheduler 3 in a background thread: one run at a time (a run still going when the next
    fire time comes is skipped, not queued), missed fire times within an hour are coalesced
    into one run.
    """
    import threading

    from apscheduler.schedulers.background import BackgroundScheduler

    expression = cron or settings.pipeline.schedule_cron
    trigger = cron_trigger(expression, settings.pipeline.timezone)
    reports: list[PipelineReport] = []
    finished = threading.Event()

    def job() -> None:
        report = run_pipeline(settings, reason="schedule")
        reports.append(report)
        on_report(report)
        if max_runs is not None and len(reports) >= max_runs:
            finished.set()

    scheduler = BackgroundScheduler(timezone=settings.pipeline.timezone)
    scheduler.add_job(
        job,
        trigger,
        id="omniretain-pipeline",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    scheduler.start()
    try:
        while not finished.wait(timeout=1.0):
            pass
    except KeyboardInterrupt:
        logger.info("schedule stopped by the user")
    finally:
        scheduler.shutdown(wait=True)
    return reports
