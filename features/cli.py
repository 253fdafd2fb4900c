"""Commands of the feature stage: ingest the feeds, build features into Feast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, guarded, show, stage


def ingest(
    source: Annotated[
        Path | None, typer.Option(help="Folder of feed folders (default: <state>/raw).")
    ] = None,
) -> None:
    """Validate and load the raw feeds, quarantine bad rows, resolve identities."""
    from features.ingest import ingest as run

    settings = cli_settings()
    with stage("ingest: validate, quarantine, resolve identities"):
        show(guarded("ingest", lambda: run(settings, source)))


def build_features() -> None:
    """Compute point-in-time customer features, write the Feast source and materialize it."""
    from features.build import build_features as run

    settings = cli_settings()
    with stage("build-features: point-in-time features into Feast"):
        show(guarded("build-features", lambda: run(settings)))


def register(app: typer.Typer) -> None:
    app.command()(ingest)
    app.command("build-features")(build_features)
