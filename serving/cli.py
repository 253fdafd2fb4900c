"""Commands of the serving stage."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, console, guarded, show, stage
from omniretain.settings import PROJECT_ROOT


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Start the BentoML HTTP service (POST /recommend) in the foreground."""
    from serving.server import server_command, server_env

    settings = cli_settings()
    host = host or settings.serving.host
    port = port or settings.serving.port
    console.print(f"[bold]serving[/] on http://{host}:{port}  (Swagger UI at /, Ctrl-C stops)")
    raise typer.Exit(
        subprocess.call(server_command(host, port), cwd=PROJECT_ROOT, env=server_env(settings))
    )


def score(
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file to write (default: <state_dir>/scores/scores.parquet)."),
    ] = None,
    reasons_for: Annotated[
        int,
        typer.Option(help="Explain the churn drivers of this many top-value decisions."),
    ] = 1000,
) -> None:
    """Score and decide for every customer of the latest snapshot (offline features, parquet)."""
    from serving.batch import score_latest

    settings = cli_settings()
    with stage("score: batch scores and decisions from the offline features"):
        show(guarded("score", lambda: score_latest(settings, out, reasons_for)))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(score)
