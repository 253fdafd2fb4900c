"""Commands of the monitoring stage: ``omniretain monitor [drift|outcomes|dashboard]``.

Plain ``omniretain monitor`` (and :func:`monitor`, which the demo calls) writes the drift report
of the newest features against the training reference, as before the group existed.
"""

from __future__ import annotations

import typer

from omniretain.console import cli_settings, guarded, show, stage

monitor_app = typer.Typer(
    help="Drift (and drift-triggered retraining), outcome tracking and the KPI dashboard.",
    no_args_is_help=False,
)


def replay_closed_window() -> None:
    """The demo's step: decisions at the latest day whose churn window has closed."""
    replay(as_of="")


def dashboard_page() -> None:
    """The demo's step: the static KPI page (also served at ``GET /dashboard``)."""
    dashboard()


def monitor() -> None:
    """Write an Evidently drift report of the latest features against the training reference."""
    from monitoring.drift import run_drift

    settings = cli_settings()
    with stage("monitor: drift of the latest features vs training"):
        show(guarded("monitor", lambda: run_drift(settings)))


@monitor_app.callback(invoke_without_command=True)
def monitor_default(context: typer.Context) -> None:
    """Without a sub-command: the drift report of the latest features (no retraining)."""
    if context.invoked_subcommand is None:
        monitor()


@monitor_app.command("drift")
def drift(
    retrain: bool = typer.Option(
        True, "--retrain/--no-retrain", help="Retrain when the verdict is drift."
    ),
    window_days: int = typer.Option(
        0, help="Days of served decisions to check (0: monitoring.drift.window_days)."
    ),
) -> None:
    """Drift of served traffic (decision log; newest snapshot if none) vs the training reference.

    A verdict (share of drifted features at or above the threshold, or prediction drift) runs
    the training pipeline; every check is an MLflow run of 'omniretain-monitoring' with the
    Evidently report attached.
    """
    from monitoring.trigger import check_and_retrain, served_window

    settings = cli_settings()

    def run() -> object:
        current, window = served_window(settings, window_days=window_days or None)
        return check_and_retrain(
            settings, current, window_description=window, allow_retrain=retrain
        )

    with stage("monitor drift: served traffic vs training reference"):
        show(guarded("monitor drift", run))


@monitor_app.command("outcomes")
def outcomes() -> None:
    """Served scores vs what happened (AUC, calibration per model version); campaign uplift
    of treated vs control with confidence intervals; IPS policy values."""
    from monitoring.outcomes import outcome_report

    settings = cli_settings()
    with stage("monitor outcomes: realised vs predicted, treated vs control"):
        show(guarded("monitor outcomes", lambda: outcome_report(settings)))


@monitor_app.command("replay")
def replay(
    as_of: str = typer.Option(
        "", help="Day to serve at, YYYY-MM-DD (default: the latest whose churn window closed)."
    ),
) -> None:
    """Log the champions' decisions as served at a past day whose churn window has closed.

    Features at that day from the warehouse, scored and decided as batch scoring does, into the
    decision log: `monitor outcomes` then shows ROC AUC and calibration of served scores. The
    day must be after every cutoff the champion learnt from.
    """
    from datetime import UTC, datetime

    from monitoring.replay import replay_decisions

    day = None
    if as_of:
        try:
            day = datetime.strptime(as_of, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise typer.BadParameter(
                f"expected YYYY-MM-DD, got {as_of!r}", param_hint="--as-of"
            ) from None
    settings = cli_settings()
    with stage("monitor replay: decisions served at a past day whose outcome is known"):
        show(guarded("monitor replay", lambda: replay_decisions(settings, day)))


@monitor_app.command("dashboard")
def dashboard() -> None:
    """Write the KPI dashboard (static HTML, charts inlined) under the monitoring folder."""
    from monitoring.dashboard import write_dashboard

    settings = cli_settings()
    with stage("monitor dashboard: retention KPIs for marketing and management"):
        show(guarded("monitor dashboard", lambda: write_dashboard(settings)))


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
