"""Rolling-origin backtest: the training recipe replayed at several past cutoffs.

One holdout can be lucky. For each of the last ``origins`` eligible cutoffs of a target, the data
is cut at that origin (nothing later is seen), the model and its baselines are fitted exactly as
``omniretain train`` fits them (fit | calibration | that origin as holdout), and scored on the
origin. The report is the mean and spread of each metric over origins, model beside baselines.
Nothing is logged or registered: this measures the recipe, it does not ship a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omniretain.settings import Settings
from training.labels import LABEL_COLUMNS
from training.train import (
    TIMESTAMP_COLUMN,
    TrainingDataError,
    build_training_frame,
    read_purchases_and_data_end,
    train_target,
)

DEFAULT_ORIGINS = 4
REPORTED_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "lift_top_decile")


@dataclass
class BacktestReport:
    """Per-origin metrics (rows) and their mean and standard deviation per target and scorer."""

    per_origin: pd.DataFrame  # kind, origin, scorer, metric columns

    def summary(self) -> pd.DataFrame:
        """Mean and std over origins, one row per (kind, scorer)."""
        grouped = self.per_origin.groupby(["kind", "scorer"], sort=False)[list(REPORTED_METRICS)]
        mean, std = grouped.mean(), grouped.std(ddof=1)
        return mean.join(std, lsuffix="_mean", rsuffix="_std").reset_index()

    def render(self) -> Any:
        from rich.table import Table

        table = Table(
            title="rolling-origin backtest: mean ± std over origins", title_justify="left"
        )
        for column in ("target", "scorer", "origins", *REPORTED_METRICS):
            table.add_column(column, justify="left" if column in ("target", "scorer") else "right")
        counts = self.per_origin.groupby(["kind", "scorer"], sort=False).size()
        for row in self.summary().itertuples(index=False):
            cells = [
                f"{getattr(row, f'{name}_mean'):.4f} ± {getattr(row, f'{name}_std'):.4f}"
                for name in REPORTED_METRICS
            ]
            table.add_row(row.kind, row.scorer, str(counts[(row.kind, row.scorer)]), *cells)
        return table


def origin_cutoffs(
    frame: pd.DataFrame, label: str, origins: int, window_days: int
) -> list[pd.Timestamp]:
    """The last ``origins`` labelled cutoffs preceded by two whose label windows had closed."""
    cutoffs = sorted(frame.loc[frame[label].notna(), TIMESTAMP_COLUMN].unique())
    window = pd.Timedelta(days=window_days)
    # Every origin needs a fit and a calibration cutoff whose windows closed before it.
    usable = [c for c in cutoffs if sum(other + window <= c for other in cutoffs) >= 2]
    if not usable:
        raise TrainingDataError(
            f"{label}: {len(cutoffs)} labelled cutoff(s), none preceded by two cutoffs whose "
            f"{window_days}-day window had closed: a backtest needs more history"
        )
    return usable[-origins:]


def window_days(settings: Settings, kind: str) -> int:
    labels = settings.labels
    return labels.churn_window_days if kind == "churn" else labels.repurchase_window_days


def known_at_origin(frame: pd.DataFrame, origin: pd.Timestamp, window: int) -> pd.DataFrame:
    """The rows a model trained at ``origin`` could have had: cutoffs whose label window had
    closed by then (``c + window <= origin``), plus the origin's own rows as the holdout.

    Earlier cutoffs whose window is still open at the origin are purged: their labels would be
    read from after the origin.
    """
    at = frame[TIMESTAMP_COLUMN]
    closed = at + pd.Timedelta(days=window) <= origin
    return frame[closed | (at == origin)]


def backtest_frame(
    settings: Settings,
    frame: pd.DataFrame,
    origins: int = DEFAULT_ORIGINS,
    purchases: pd.DataFrame | None = None,
) -> BacktestReport:
    """Backtest every target on an already built training frame (pure: no I/O)."""
    rows = []
    for kind, label in LABEL_COLUMNS.items():
        for origin in origin_cutoffs(frame, label, origins, window_days(settings, kind)):
            until_origin = known_at_origin(frame, origin, window_days(settings, kind))
            trained = train_target(
                settings, until_origin, kind, holdout_snapshots=1, purchases=purchases
            )
            for scorer, metrics in trained.metrics.items():
                rows.append(
                    {
                        "kind": kind,
                        "origin": pd.Timestamp(origin).isoformat(),
                        "scorer": scorer,
                        **{name: metrics.get(name, np.nan) for name in REPORTED_METRICS},
                    }
                )
    return BacktestReport(pd.DataFrame(rows))


def backtest(
    settings: Settings, labels_file: Path | None = None, origins: int = DEFAULT_ORIGINS
) -> BacktestReport:
    """Build the training frame (labels, Feast features) and backtest it."""
    frame = build_training_frame(settings, labels_file)
    purchases, _ = read_purchases_and_data_end(settings)
    return backtest_frame(settings, frame, origins, purchases)
