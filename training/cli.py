"""Commands of the training stage."""

from __future__ import annotations

import typer

from omniretain.console import cli_settings, guarded, show, stage


def train() -> None:
    """Train churn and repurchase models, compare with baselines, register in MLflow."""
    from training.train import train as run

    settings = cli_settings()
    with stage("train: LightGBM vs baselines on a time-based holdout"):
        show(guarded("train", lambda: run(settings)))


def register(app: typer.Typer) -> None:
    app.command()(train)
