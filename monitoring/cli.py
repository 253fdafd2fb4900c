"""Commands of the monitoring stage."""

from __future__ import annotations

import typer

from omniretain.console import cli_settings, guarded, show, stage


def monitor() -> None:
    """Write an Evidently drift report of the latest features against the training reference."""
    from monitoring.drift import run_drift

    settings = cli_settings()
    with stage("monitor: drift of the latest features vs training"):
        show(guarded("monitor", lambda: run_drift(settings)))


def register(app: typer.Typer) -> None:
    app.command()(monitor)
