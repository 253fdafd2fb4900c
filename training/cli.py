"""Commands of the training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, guarded, show, stage


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


def register(app: typer.Typer) -> None:
    app.command()(train)
