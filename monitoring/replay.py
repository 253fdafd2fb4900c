"""Decisions served at a past date whose churn window has closed: realised vs predicted, today.

Outcome tracking scores served ``churn_probability`` against what happened once
``labels.churn_window_days`` have passed. Decisions served now (the demo's, a fresh install's)
have no closed window yet, so ``omniretain monitor outcomes`` would stay empty for months. This
module serves the champions as they would have been served on a past date ``as_of``:

- the features are computed point in time at ``as_of`` from the warehouse (only events before
  it, :func:`features.build.compute_features`, the code the feature table is built with);
- the champions (value and uplift models too, when registered) score them and
  :func:`serving.batch.score_frame` decides, as batch scoring does, without the contact policy
  and control group (there is no contact history of that past day to apply them to);
- each decision goes through the real decision log with ``decided_at = as_of`` and
  ``source="batch"``, so outcomes are joined from the purchases *after* ``as_of``.

No metric on training data: ``as_of`` must be after every cutoff the champion learnt from
(the training reference's newest cutoff), and its churn window must have closed by the newest
purchase in the warehouse. By default it is the latest such day: the newest purchase's day minus
the window. Replaying the same day with the same champion again logs nothing (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from omniretain.settings import Settings

REPLAY_SOURCE = "batch"


class ReplayError(Exception):
    """The replay date is not usable (window open, inside training, no data): say why."""


@dataclass
class ReplayReport:
    """What one replay logged."""

    as_of: datetime
    data_end: datetime
    reference_cutoff: datetime
    customers: int
    logged: int
    model_versions: dict[str, str]
    actions: dict[str, int] = field(default_factory=dict)
    mean_churn_probability: float = float("nan")
    log_dir: Path | None = None

    def render(self) -> str:
        chosen = ", ".join(f"{n:,} x {name}" for name, n in self.actions.items()) or "none"
        if self.logged == 0:
            head = (
                f"decisions at {self.as_of:%Y-%m-%d} by {self.model_versions} were already "
                "logged: nothing added"
            )
        else:
            head = (
                f"{self.logged:,} decisions logged as served at {self.as_of:%Y-%m-%d} "
                f"(features at that date, champions {self.model_versions}); mean churn "
                f"probability {self.mean_churn_probability:.3f}; decisions: {chosen}"
            )
        return (
            f"{head}\nchurn window closed: data end {self.data_end:%Y-%m-%d}; the champion "
            f"learnt from cutoffs up to {self.reference_cutoff:%Y-%m-%d}\n"
            f"log: {self.log_dir}\nnext: `omniretain monitor outcomes` scores them against "
            "what happened"
        )


# ---- pure ------------------------------------------------------------------------------------
def day_floor(moment: datetime) -> datetime:
    """Midnight UTC of ``moment``'s day."""
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def replay_date(
    data_end: datetime,
    window_days: int,
    reference_cutoff: datetime,
    as_of: datetime | None = None,
) -> datetime:
    """The day to replay: ``as_of`` checked, or the latest day whose churn window has closed.

    Raises:
        ReplayError: the window after ``as_of`` is still open at ``data_end``, or ``as_of`` is
            not after the newest cutoff the champion learnt from (that would score training
            rows).
    """
    latest = day_floor(data_end) - timedelta(days=window_days)
    chosen = latest if as_of is None else as_of.astimezone(UTC)
    if chosen > latest:
        raise ReplayError(
            f"the {window_days}-day churn window after {chosen:%Y-%m-%d} has not closed by the "
            f"newest purchase ({data_end:%Y-%m-%d}): replay {latest:%Y-%m-%d} or earlier"
        )
    if chosen <= reference_cutoff:
        raise ReplayError(
            f"{chosen:%Y-%m-%d} is not after the newest cutoff the champion learnt from "
            f"({reference_cutoff:%Y-%m-%d}): its outcomes would be training labels"
        )
    return chosen


# ---- I/O edge --------------------------------------------------------------------------------
def _newest_purchase(settings: Settings) -> datetime:
    import duckdb

    if not settings.warehouse_path.exists():
        raise ReplayError(f"no warehouse at {settings.warehouse_path}: run `omniretain ingest`")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        [(newest,)] = con.execute(
            "SELECT max(occurred_at) FROM purchases WHERE customer_id IS NOT NULL "
            "AND NOT coalesce(is_return, false)"
        ).fetchall()
    if newest is None:
        raise ReplayError("the warehouse has no purchase: nothing to replay against")
    stamp = pd.Timestamp(newest)  # TIMESTAMP columns hold naive UTC
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def _reference_cutoff(settings: Settings) -> datetime:
    from monitoring.drift import TIMESTAMP_COLUMN, reference_path

    path = reference_path(settings)
    if not path.exists():
        raise ReplayError(f"no training reference at {path}: run `omniretain train` first")
    cutoffs = pd.read_parquet(path, columns=[TIMESTAMP_COLUMN])[TIMESTAMP_COLUMN]
    return pd.to_datetime(cutoffs, utc=True).max().to_pydatetime()


def _already_logged(settings: Settings, as_of: datetime, churn_version: str) -> bool:
    from monitoring.logs import read_decisions

    logged = read_decisions(settings, since=as_of, until=as_of + timedelta(seconds=1))
    return bool((logged["churn_model_version"].astype(str) == churn_version).any())


def replay_decisions(settings: Settings, as_of: datetime | None = None) -> ReplayReport:
    """Serve the champions at ``as_of`` (default: the latest closed day) into the decision log.

    Raises:
        ReplayError: no warehouse, no training reference, or an unusable date.
        ModelNotFoundError: no champion registered.
    """
    import duckdb

    from features.build import compute_features
    from monitoring.drift import scored_population
    from monitoring.logs import decisions_dir, log_decision_frame
    from serving.batch import score_frame
    from serving.models import load_model_set

    data_end = _newest_purchase(settings)
    reference_cutoff = _reference_cutoff(settings)
    day = replay_date(data_end, settings.labels.churn_window_days, reference_cutoff, as_of)
    models = load_model_set(settings)
    churn, repurchase = models.churn, models.repurchase
    versions = {kind: v for kind, v in models.versions.items() if v is not None}
    report = ReplayReport(
        as_of=day,
        data_end=data_end,
        reference_cutoff=reference_cutoff,
        customers=0,
        logged=0,
        model_versions=versions,
        log_dir=decisions_dir(settings),
    )
    if _already_logged(settings, day, versions["churn"]):
        return report

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        frame = compute_features(con, [day], settings.features.lookback_days)
    frame = scored_population(frame)  # the customers the models score: bought at least once
    if frame.empty:
        raise ReplayError(f"no customer had bought anything by {day:%Y-%m-%d}")
    scored = score_frame(
        frame,
        churn.model,
        repurchase.model,
        settings.actions,
        value_model=models.value.model if models.value else None,
        uplift_model=models.uplift.model if models.uplift else None,
    )
    names = list(churn.model.feature_names)
    log_decision_frame(settings, scored, frame[names], REPLAY_SOURCE, day, versions)
    counts = scored["action"].value_counts()
    report.customers = len(scored)
    report.logged = len(scored)
    report.actions = {str(name): int(n) for name, n in counts.items()}
    report.mean_churn_probability = float(scored["churn_probability"].mean())
    return report
