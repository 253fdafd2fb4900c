"""Commands of the training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, console, guarded, show, stage


def train(
    labels: Annotated[
        Path | None,
        typer.Option(help="CSV/Parquet of customer_id, cutoff, label: replaces the churn label."),
    ] = None,
    backtest: Annotated[
        bool,
        typer.Option(help="Rolling-origin backtest over several cutoffs; registers nothing."),
    ] = False,
) -> None:
    """Train churn and repurchase models, compare with baselines, register in MLflow."""
    settings = cli_settings()
    if backtest:
        from training.backtest import backtest as run_backtest

        with stage("train --backtest: rolling-origin evaluation over several cutoffs"):
            show(guarded("backtest", lambda: run_backtest(settings, labels_file=labels)))
        return
    from training.train import train as run

    with stage("train: LightGBM vs baselines on a time-based holdout"):
        show(guarded("train", lambda: run(settings, labels_file=labels)))


def promote(
    model: Annotated[str, typer.Option(help="Model kind: churn, repurchase, value.")],
    version: Annotated[str, typer.Option(help="Registered version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")] = "manual",
) -> None:
    """Make a registered version the champion, whatever the gate said (a human override)."""
    from training.registry import promote as run

    settings = cli_settings()
    with stage(f"promote: {model} v{version} -> champion"):
        show(guarded("promote", lambda: run(settings, model, version, reason)))


def rollback(
    model: Annotated[str, typer.Option(help="Model kind: churn, repurchase, value.")],
) -> None:
    """Restore the previous champion (repeat to walk further back in the champion history)."""
    from training.registry import rollback as run

    settings = cli_settings()
    with stage(f"rollback: {model} -> previous champion"):
        show(guarded("rollback", lambda: run(settings, model)))


pipeline_app = typer.Typer(
    help="Retraining: ingest -> features -> train, gate, promote -> verify, as one MLflow run.",
    no_args_is_help=True,
)


@pipeline_app.command("run")
def pipeline_run(
    force: Annotated[bool, typer.Option(help="Retrain even when nothing is new.")] = False,
    reason: Annotated[str, typer.Option(help="Recorded on the MLflow run.")] = "manual",
) -> None:
    """Run the retraining pipeline once; a failed step leaves the champions as they were."""
    from training.pipeline import run_pipeline

    settings = cli_settings()
    with stage(f"pipeline run ({reason})"):
        report = guarded("pipeline", lambda: run_pipeline(settings, reason, force=force))
        show(report)
    if not report.ok:
        raise typer.Exit(code=1)


@pipeline_app.command("schedule")
def pipeline_schedule(
    cron: Annotated[
        str | None, typer.Option(help="Crontab expression (default: pipeline.schedule_cron).")
    ] = None,
    once: Annotated[bool, typer.Option(help="Run once now and exit (checks the cron).")] = False,
    max_runs: Annotated[int | None, typer.Option(help="Stop after N scheduled runs.")] = None,
) -> None:
    """Run the pipeline on a cron schedule in this process (Ctrl-C stops it)."""
    from datetime import UTC, datetime

    from training.pipeline import next_runs, run_pipeline, schedule_pipeline

    settings = cli_settings()
    expression = cron or settings.pipeline.schedule_cron
    upcoming = guarded(
        "schedule",
        lambda: next_runs(expression, settings.pipeline.timezone, 3, datetime.now(UTC)),
    )
    console.print(
        f"schedule {expression!r} ({settings.pipeline.timezone}); next runs: "
        + ", ".join(f"{moment:%Y-%m-%d %H:%M %Z}" for moment in upcoming)
    )
    if once:
        with stage("pipeline run (schedule, --once)"):
            report = guarded("pipeline", lambda: run_pipeline(settings, reason="schedule"))
            show(report)
        if not report.ok:
            raise typer.Exit(code=1)
        return
    guarded(
        "schedule",
        lambda: schedule_pipeline(settings, cron=expression, max_runs=max_runs, on_report=show),
    )


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(promote)
    app.command()(rollback)
    app.add_typer(pipeline_app, name="pipeline")
