"""Commands of the serving stage."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer

from omniretain.console import cli_settings, console
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


def register(app: typer.Typer) -> None:
    app.command()(serve)
