"""Drift monitoring: compare the latest feature snapshot with the rows the model was trained on.

A model is only as good as the match between the data it scores and the data it learnt from. This
module runs Evidently's ``DataDriftPreset`` on the numeric features both sides share (and on the
``churn_probability`` score when both sides carry it: prediction drift), keeps Evidently's HTML for
a person and its JSON for machines, and writes our own ``summary.json`` verdict: the share of
drifted columns against ``settings.monitoring.drift_share_threshold``.

Layout written under ``settings.monitoring_dir / "drift"``::

    <UTC timestamp>/report.html   Evidently's report, open it in a browser
    <UTC timestamp>/report.json   Evidently's snapshot (metrics and per-column tests)
    <UTC timestamp>/summary.json  our verdict (see :class:`DriftReport`)
    latest -> <UTC timestamp>     symlink to the newest run (a copy where symlinks fail)

Evidently costs about 8 s to import: it is imported inside :func:`run_evidently` only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, computed_field

from features.contract import ENTITY_KEY
from omniretain.settings import DriftSettings, Settings

if TYPE_CHECKING:  # pragma: no cover - typing only, evidently is imported lazily
    from evidently.core.report import Snapshot

PREDICTION_COLUMN = "churn_probability"
TIMESTAMP_COLUMN = "event_timestamp"
CREATED_COLUMN = "created_timestamp"
NON_FEATURE_COLUMNS: frozenset[str] = frozenset({ENTITY_KEY, TIMESTAMP_COLUMN, CREATED_COLUMN})
# Fixed so that two runs over the same files sample the same rows and give the same verdict.
SAMPLE_SEED = 0
LATEST_LINK = "latest"
# Evidently switches from p-value tests to distances above this many reference rows.
SMALL_REFERENCE_ROWS = 1000
# Why a tested column is left out of the verdict (``ColumnDrift.excluded``).
EXCLUDED_CUMULATIVE = "cumulative"
EXCLUDED_TRUNCATED = "truncated window"
# ``purchases_365d_web`` -> 365: the look-back of a windowed feature.
WINDOW_PATTERN = re.compile(r"_(\d+)d(?:_|$)")

# How Evidently's drift methods decide, by the name it reports (``ValueDrift.method``). Used only
# when a column has no Evidently test result to read the decision from. p-value tests drift when
# the p-value is at or below the threshold, distances when the distance reaches it.
P_VALUE_METHODS: frozenset[str] = frozenset(
    {
        "K-S p_value",
        "Z-test p_value",
        "chi-square p_value",
        "Anderson-Darling",
        "Cramer-von Mises",
        "Epps-Singleton",
        "Fisher's Exact test",
        "g_test",
        "Mann-Whitney U-rank test",
        "t_test",
        "empirical_mmd",
        "Total-Variation-Distance",
    }
)
DISTANCE_METHODS: frozenset[str] = frozenset(
    {
        "Wasserstein distance (normed)",
        "Jensen-Shannon distance",
        "Hellinger distance",
        "Kullback-Leibler divergence",
        "PSI",
        "Energy-distance",
    }
)


# ---- errors ----------------------------------------------------------------------------------
class DriftError(Exception):
    """Base class of the errors the ``monitor`` command turns into a message and an exit code."""


class ReferenceNotFoundError(DriftError, FileNotFoundError):
    """The training reference is missing: nothing to compare against yet."""


class CurrentFeaturesNotFoundError(DriftError, FileNotFoundError):
    """The feature table is missing: no current snapshot to check."""


class NoComparableColumnsError(DriftError):
    """Reference and current share no numeric column with data on both sides."""


class EmptyDataError(DriftError):
    """One side of the comparison has no rows."""


class DriftParseError(DriftError):
    """Evidently's snapshot did not have the structure this module reads."""


# ---- results ---------------------------------------------------------------------------------
class ColumnDrift(BaseModel):
    """Evidently's drift result for one column.

    ``score`` means what ``method`` says: a p-value (small = drift) or a distance (large = drift),
    so compare ``drifted``, never the raw score, across columns.
    """

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    excluded: str | None = None  # why it does not count in the verdict (cumulative...)


class DriftReport(BaseModel):
    """One drift run: where its files are and what it concluded."""

    output_dir: Path
    html_path: Path
    json_path: Path
    summary_path: Path
    latest_dir: Path
    generated_at: datetime
    current_snapshot: datetime | None
    n_reference: int
    n_current: int
    n_reference_before_sampling: int
    n_current_before_sampling: int
    columns: list[ColumnDrift]
    columns_skipped: dict[str, str]
    columns_excluded: list[ColumnDrift] = []
    prediction_column: str | None
    share_drifted: float
    threshold: float
    drift_detected: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def columns_tested(self) -> list[str]:
        return [c.column for c in self.columns]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drifted_columns(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def prediction_drifted(self) -> bool | None:
        """Whether the score distribution moved; None when scores were not on both sides."""
        for result in self.columns:
            if result.column == self.prediction_column:
                return result.drifted
        return None

    def render(self, top: int = 10) -> Any:
        """A short rich summary for the terminal: verdict, the most drifted columns, the files."""
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"most drifted of {len(self.columns)} columns tested")
        for name in ("column", "method", "score", "threshold"):
            table.add_column(name, justify="right" if name in ("score", "threshold") else "left")
        ranked = sorted(self.drifted_columns, key=lambda c: -(c.score or 0.0))
        for result in ranked[:top]:
            table.add_row(
                result.column, result.method, f"{result.score:.3f}", f"{result.threshold:.3f}"
            )
        verdict = "[bold red]DRIFT[/]" if self.drift_detected else "[bold green]no drift[/]"
        excluded = [
            f"{c.column} ({'drifted' if c.drifted else 'stable'})" for c in self.columns_excluded
        ]
        reasons = sorted({str(c.excluded) for c in self.columns_excluded})
        return Group(
            f"{verdict}: {len(self.drifted_columns)}/{len(self.columns)} columns drifted "
            f"(share {self.share_drifted:.2f}, threshold {self.threshold:.2f}); "
            f"{self.n_current} current rows vs {self.n_reference} reference rows",
            table,
            *(
                [f"excluded: {', '.join(reasons)} ({len(excluded)}): {', '.join(excluded)}"]
                if excluded
                else []
            ),
            f"report: {self.html_path}\nsummary: {self.summary_path}",
        )


@dataclass(frozen=True)
class DriftColumns:
    """Which columns get drift-tested, and why the others do not."""

    features: list[str]
    prediction: str | None
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # tested, shown, not in the verdict

    @property
    def tested(self) -> list[str]:
        return self.features + ([self.prediction] if self.prediction else [])

    @property
    def verdict_columns(self) -> list[str]:
        return [c for c in self.tested if c not in self.excluded]


# ---- pure functions --------------------------------------------------------------------------
def drift_verdict(per_column: dict[str, bool], share_threshold: float) -> bool:
    """True when the share of drifted columns reaches ``share_threshold``.

    Same rule as Evidently's dataset drift (``share >= threshold``), so our verdict and the HTML
    agree. A verdict over no column would be meaningless: that raises.
    """
    if not 0.0 < share_threshold <= 1.0:
        raise ValueError(f"share_threshold must be in (0, 1], got {share_threshold}")
    if not per_column:
        raise ValueError("drift_verdict needs at least one tested column")
    return drifted_share(per_column) >= share_threshold


def drifted_share(per_column: dict[str, bool]) -> float:
    """Share of the tested columns that drifted (0.0 when none was tested)."""
    return sum(per_column.values()) / len(per_column) if per_column else 0.0


def declared_columns(frame: pd.DataFrame, config: DriftSettings) -> pd.DataFrame:
    """The configured id and timestamp columns under the names this module declares.

    Feeds from elsewhere may call them differently; renamed here, they are declared to
    Evidently as id and timestamp and never drift-tested.
    """
    renames = {
        config.id_column: ENTITY_KEY,
        config.timestamp_column: TIMESTAMP_COLUMN,
    }
    renames = {k: v for k, v in renames.items() if k != v and k in frame.columns}
    return frame.rename(columns=renames) if renames else frame


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def select_drift_columns(reference: pd.DataFrame, current: pd.DataFrame) -> DriftColumns:
    """Pick the numeric feature columns both frames share, plus the score when both have it.

    A column missing on one side, non-numeric, or with no value on one side cannot be tested
    (Evidently raises on an all-missing column); it is listed in ``skipped`` with the reason.
    """
    skipped: dict[str, str] = {}
    usable: list[str] = []
    for column in current.columns:
        if column in NON_FEATURE_COLUMNS:
            continue
        if column not in reference.columns:
            skipped[column] = "not in the reference"
        elif not (_is_numeric(current[column]) and _is_numeric(reference[column])):
            skipped[column] = "not numeric on both sides"
        elif current[column].isna().all():
            skipped[column] = "no value in the current data"
        elif reference[column].isna().all():
            skipped[column] = "no value in the reference"
        else:
            usable.append(column)
    for column in reference.columns:
        if column not in NON_FEATURE_COLUMNS and column not in current.columns:
            skipped[column] = "not in the current data"
    features = [c for c in usable if c != PREDICTION_COLUMN]
    prediction = PREDICTION_COLUMN if PREDICTION_COLUMN in usable else None
    return DriftColumns(features=features, prediction=prediction, skipped=skipped)


def window_days_of(column: str) -> int | None:
    """The look-back in days of a windowed feature (``spend_365d_web`` -> 365), else None."""
    match = WINDOW_PATTERN.search(column)
    return int(match.group(1)) if match else None


def history_days_at(reference: pd.DataFrame, history_start: datetime | None) -> float | None:
    """Days of behaviour data the reference had at its (newest) cutoff; None when unknown."""
    if history_start is None or TIMESTAMP_COLUMN not in reference.columns or reference.empty:
        return None
    cutoff = pd.to_datetime(reference[TIMESTAMP_COLUMN], utc=True).max()
    return float((cutoff - pd.Timestamp(history_start)).total_seconds() / 86400.0)


def calendar_exclusions(
    columns: list[str], config: DriftSettings, history_days: float | None = None
) -> dict[str, str]:
    """Columns that move with the calendar whatever customers do, and why.

    The reference is the newest *training* cutoff, at least a label window before the served
    snapshot. Between the two, tenure, lifetime totals and "days since" grow for everyone, so
    they differ whatever happened: ``cumulative`` (``config.calendar_columns``, glob patterns).
    A window longer than the history the reference had at its cutoff (a 365-day total with 300
    days of data) was truncated there and is full later: ``truncated window``. Both are still
    tested and shown; the verdict is taken on the rest. The score is never excluded.
    """
    excluded: dict[str, str] = {}
    history = history_days if config.exclude_truncated_windows else None
    for column in columns:
        if column == PREDICTION_COLUMN:
            continue
        if any(fnmatchcase(column, pattern) for pattern in config.calendar_columns):
            excluded[column] = EXCLUDED_CUMULATIVE
            continue
        days = window_days_of(column)
        if history is not None and days is not None and days > history:
            excluded[column] = EXCLUDED_TRUNCATED
    return excluded


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int = SAMPLE_SEED) -> pd.DataFrame:
    """At most ``max_rows`` rows, drawn with a fixed seed: Evidently holds everything in memory."""
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed)


def to_evidently_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The id, the timestamp (naive UTC) and the tested columns as floats.

    Evidently's time plots convert to periods, which drops (and warns about) the time zone, so
    it gets naive UTC times. Booleans and integers become floats so every tested column is read
    as numerical.
    """
    keep = [c for c in (ENTITY_KEY, TIMESTAMP_COLUMN) if c in frame.columns] + columns
    out = frame.loc[:, keep].reset_index(drop=True)
    if ENTITY_KEY in out.columns:
        out[ENTITY_KEY] = out[ENTITY_KEY].astype(str)
    if TIMESTAMP_COLUMN in out.columns:
        timestamps = pd.to_datetime(out[TIMESTAMP_COLUMN], utc=True)
        out[TIMESTAMP_COLUMN] = timestamps.dt.tz_localize(None)
    for column in columns:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    return out


def _status_name(status: Any) -> str:
    """``TestStatus.FAIL`` in ``dict()``, ``"FAIL"`` once through JSON: both become ``"FAIL"``."""
    return str(getattr(status, "value", status)).upper()


def _drifted_by_method(method: str, score: float, threshold: float) -> bool:
    if method in P_VALUE_METHODS:
        return score <= threshold
    if method in DISTANCE_METHODS:
        return score >= threshold
    raise DriftParseError(
        f"drift method {method!r} has no test result and is not a known p-value or distance "
        "method; add it to monitoring.drift.P_VALUE_METHODS or DISTANCE_METHODS"
    )


def parse_column_drift(snapshot: dict[str, Any]) -> dict[str, ColumnDrift]:
    """Per-column drift results out of an Evidently 0.7 snapshot's ``dict()`` (or its JSON).

    Each ``ValueDrift`` metric carries the column, the method Evidently chose for its type
    (K-S or Wasserstein for numbers, Z-test or Jensen-Shannon for few distinct values...), the
    threshold and the score. Whether the score means drift depends on the method, so the decision
    is read from Evidently's own per-column test (status ``FAIL`` = drift) when the report ran
    with tests, and derived from the method's kind otherwise.
    """
    metrics = snapshot.get("metrics")
    if not isinstance(metrics, list):
        raise DriftParseError("Evidently snapshot has no 'metrics' list")
    statuses: dict[str, str] = {}
    for test in snapshot.get("tests") or []:
        metric_id = (test.get("metric_config") or {}).get("metric_id")
        if metric_id is not None and "status" in test:
            statuses[metric_id] = _status_name(test["status"])

    results: dict[str, ColumnDrift] = {}
    for metric in metrics:
        config = metric.get("config") or {}
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        try:
            column = str(config["column"])
            method = str(config["method"])
            threshold = float(config["threshold"])
            score = float(metric["value"])
        except (KeyError, TypeError, ValueError) as error:
            raise DriftParseError(f"unexpected ValueDrift entry {metric!r}: {error}") from error
        status = statuses.get(str(metric.get("id")))
        if status in ("FAIL", "SUCCESS"):
            drifted = status == "FAIL"
        else:
            drifted = _drifted_by_method(method, score, threshold)
        results[column] = ColumnDrift(
            column=column, method=method, score=score, threshold=threshold, drifted=drifted
        )
    if not results:
        raise DriftParseError("Evidently snapshot has no ValueDrift metric: nothing was tested")
    return results


def small_sample_methods(
    current: pd.DataFrame, reference: pd.DataFrame, columns: list[str]
) -> dict[str, str]:
    """K-S instead of chi-square for numeric columns of 3 to 5 values when the reference is small.

    Up to ``SMALL_REFERENCE_ROWS`` reference rows, Evidently tests such columns (counts like
    ``open_cases``) with a chi-square goodness of fit that takes the reference frequencies as
    exact and returns p = 0 as soon as the current data holds a value the reference lacks: on
    same-distribution samples of 200 rows it flagged them in about 40 % of runs. The two-sample
    K-S test stays valid (conservative) on discrete values. Larger references get Evidently's
    distances, which do not have this problem, so they keep its defaults.
    """
    if len(reference) > SMALL_REFERENCE_ROWS:
        return {}
    methods: dict[str, str] = {}
    for column in columns:
        distinct = pd.concat([reference[column], current[column]]).nunique()
        if 2 < distinct <= 5:
            methods[column] = "ks"
    return methods


def column_methods(
    small_sample: dict[str, str], columns: list[str], config: DriftSettings
) -> tuple[dict[str, str], dict[str, float]]:
    """Method and threshold per tested column: configured ones win over the small-sample K-S.

    A configured default method replaces the small-sample choice too (the user asked for it);
    only columns actually tested are passed on, so a config naming a feature the model no
    longer has does not break the report.
    """
    methods = {} if config.default_method else dict(small_sample)
    methods.update({c: m for c, m in config.per_feature_method.items() if c in columns})
    thresholds = {c: t for c, t in config.per_feature_threshold.items() if c in columns}
    return {c: m for c, m in methods.items() if c in columns}, thresholds


# ---- Evidently (lazy import) -----------------------------------------------------------------
def run_evidently(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    columns: list[str],
    share_threshold: float,
    config: DriftSettings | None = None,
    excluded: list[str] | None = None,
) -> Snapshot:
    """Run ``DataDriftPreset`` on ``columns`` (current first, as Evidently 0.7 wants).

    The id and timestamp are declared in the data definition so they are not drift-tested, and
    the preset's share threshold is ours, so the HTML's dataset verdict matches ``summary.json``.
    The ``excluded`` columns get a ``ValueDrift`` each, outside the preset: shown in the HTML,
    not counted in its share of drifted columns.
    Evidently picks each column's method, except as :func:`small_sample_methods` says and as
    ``config`` (``monitoring.drift`` in ``configs/``) overrides: a default method and threshold,
    and a method and threshold per feature.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    excluded = [c for c in excluded or [] if c not in columns]
    every = columns + excluded
    # An id or timestamp on one side only would break the shared definition: drop it there.
    shared = [c for c in (ENTITY_KEY, TIMESTAMP_COLUMN) if c in current and c in reference]
    current = current.loc[:, [c for c in current.columns if c in shared or c in every]]
    reference = reference.loc[:, [c for c in reference.columns if c in shared or c in every]]
    definition = DataDefinition(
        id_column=ENTITY_KEY if ENTITY_KEY in shared else None,
        timestamp=TIMESTAMP_COLUMN if TIMESTAMP_COLUMN in shared else None,
        numerical_columns=every,
    )
    methods, thresholds = column_methods(
        small_sample_methods(current, reference, every), every, config or DriftSettings()
    )
    default_method = config.default_method if config else None
    default_threshold = config.default_threshold if config else None
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                drift_share=share_threshold,
                method=default_method,
                threshold=default_threshold,
                per_column_method={c: m for c, m in methods.items() if c in columns} or None,
                per_column_threshold={c: t for c, t in thresholds.items() if c in columns} or None,
            ),
            *(
                ValueDrift(
                    column=column,
                    method=methods.get(column, default_method),
                    threshold=thresholds.get(column, default_threshold),
                )
                for column in excluded
            ),
        ],
        include_tests=True,
    )
    return report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


# ---- I/O at the edges ------------------------------------------------------------------------
def reference_path(settings: Settings) -> Path:
    """Where ``omniretain train`` leaves the feature rows it trained on."""
    return settings.state_dir / "training" / "reference_features.parquet"


def current_features_path(settings: Settings) -> Path:
    """The feature table (Feast offline source) written by ``omniretain build-features``."""
    return settings.features_dir / "customer_features.parquet"


def load_reference(settings: Settings) -> pd.DataFrame:
    """The training reference; a missing file means the model was never trained here."""
    path = reference_path(settings)
    if not path.exists():
        raise ReferenceNotFoundError(
            f"no drift reference at {path}: run `omniretain train` first (it saves the feature "
            "rows it trained on there)"
        )
    return newest_snapshot(pd.read_parquet(path))


def newest_snapshot(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the rows of the newest ``event_timestamp``.

    Cumulative features (tenure, totals, recency) grow with every cutoff, so pooling all the
    training cutoffs against one current snapshot would flag them whatever happened. One
    snapshot against one snapshot compares like with like.
    """
    if TIMESTAMP_COLUMN not in frame.columns or frame.empty:
        return frame
    newest = frame[TIMESTAMP_COLUMN].max()
    return frame.loc[frame[TIMESTAMP_COLUMN] == newest].reset_index(drop=True)


def scored_population(frame: pd.DataFrame) -> pd.DataFrame:
    """The customers the models score: those with at least one purchase (as in training)."""
    if "purchases_total" not in frame.columns:
        return frame
    return frame.loc[frame["purchases_total"] > 0].reset_index(drop=True)


def history_start(settings: Settings) -> datetime | None:
    """The first behaviour event in the warehouse (the feature grid's start); None without one."""
    if not settings.warehouse_path.exists():
        return None
    import duckdb

    from features.build import event_time_range

    try:
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            return event_time_range(con)[0]
    except Exception:  # noqa: BLE001 - no known start: windows are simply not checked
        return None


def load_latest_snapshot(settings: Settings) -> pd.DataFrame:
    """Rows of the newest ``event_timestamp`` of the feature table, read without the rest.

    Only the timestamp column is read to find the newest cutoff; the row filter is pushed into
    the Parquet reader so older snapshots never reach memory.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = current_features_path(settings)
    if not path.exists():
        raise CurrentFeaturesNotFoundError(
            f"no feature table at {path}: run `omniretain build-features` first"
        )
    timestamps = pq.read_table(path, columns=[TIMESTAMP_COLUMN]).column(TIMESTAMP_COLUMN)
    if len(timestamps) == 0:
        raise EmptyDataError(f"the feature table {path} has no rows")
    newest = pc.max(timestamps).as_py()
    table = pq.read_table(path, filters=[(TIMESTAMP_COLUMN, "==", newest)])
    return scored_population(table.to_pandas())


def _new_run_dir(drift_root: Path, now: datetime) -> Path:
    """``<root>/<UTC timestamp>``, with a numeric suffix if a run already used that second."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    candidate = drift_root / stamp
    suffix = 1
    while candidate.exists():
        candidate = drift_root / f"{stamp}-{suffix}"
        suffix += 1
    candidate.mkdir(parents=True)
    return candidate


def point_latest(drift_root: Path, run_dir: Path) -> Path:
    """Make ``<root>/latest`` the newest run: a relative symlink, or a copy without symlinks."""
    latest = drift_root / LATEST_LINK
    staging = drift_root / f".{LATEST_LINK}-{run_dir.name}"
    try:
        if staging.is_symlink():
            staging.unlink()
        staging.symlink_to(run_dir.name, target_is_directory=True)
        if latest.exists() and not latest.is_symlink():
            shutil.rmtree(latest)
        os.replace(staging, latest)  # atomic swap of the link: readers never see it missing
    except OSError:
        if staging.is_symlink():
            staging.unlink()
        if latest.is_symlink():
            latest.unlink()
        elif latest.exists():
            shutil.rmtree(latest)
        shutil.copytree(run_dir, latest)
    return latest


def _snapshot_time(current: pd.DataFrame) -> datetime | None:
    if TIMESTAMP_COLUMN not in current.columns or current[TIMESTAMP_COLUMN].isna().all():
        return None
    return pd.to_datetime(current[TIMESTAMP_COLUMN], utc=True).max().to_pydatetime()


def run_drift(
    settings: Settings,
    current: pd.DataFrame | None = None,
    reference: pd.DataFrame | None = None,
) -> DriftReport:
    """Compare the current features with the training reference and save the reports.

    Args:
        settings: paths, the drift share threshold and the sample size.
        current: the rows to check; by default the newest snapshot of the feature table.
        reference: the rows the model learnt from; by default the file ``train`` wrote.

    Raises:
        ReferenceNotFoundError: no reference was given and ``train`` has not run.
        CurrentFeaturesNotFoundError: no current frame was given and no feature table exists.
        EmptyDataError / NoComparableColumnsError: nothing could be compared.
    """
    if reference is None:
        reference = load_reference(settings)
    if current is None:
        current = load_latest_snapshot(settings)
    reference = declared_columns(reference, settings.monitoring.drift)
    current = declared_columns(current, settings.monitoring.drift)
    if reference.empty:
        raise EmptyDataError("the drift reference has no rows: re-run `omniretain train`")
    if current.empty:
        raise EmptyDataError("the current feature snapshot has no rows")

    selection = select_drift_columns(reference, current)
    selection.excluded.update(
        calendar_exclusions(
            selection.tested,
            settings.monitoring.drift,
            history_days_at(reference, history_start(settings)),
        )
    )
    if not selection.verdict_columns:
        raise NoComparableColumnsError(
            "reference and current data share no numeric column with values on both sides "
            f"(besides those excluded from the verdict: {selection.excluded}); "
            f"skipped: {selection.skipped}"
        )
    max_rows = settings.monitoring.sample_rows
    threshold = settings.monitoring.drift_share_threshold
    current_sample = to_evidently_frame(sample_rows(current, max_rows), selection.tested)
    reference_sample = to_evidently_frame(sample_rows(reference, max_rows), selection.tested)

    verdict_columns = selection.verdict_columns
    excluded_columns = [c for c in selection.tested if c in selection.excluded]
    snapshot = run_evidently(
        current_sample,
        reference_sample,
        verdict_columns,
        threshold,
        settings.monitoring.drift,
        excluded=excluded_columns,
    )
    per_column = parse_column_drift(snapshot.dict())
    missing = set(selection.tested) - set(per_column)
    if missing:
        raise DriftParseError(f"Evidently returned no drift result for {sorted(missing)}")
    results = [per_column[c] for c in verdict_columns]
    excluded_results = [
        per_column[c].model_copy(update={"excluded": selection.excluded[c]})
        for c in excluded_columns
    ]

    generated_at = datetime.now(UTC)
    drift_root = settings.monitoring_dir / "drift"
    run_dir = _new_run_dir(drift_root, generated_at)
    html_path = run_dir / "report.html"
    json_path = run_dir / "report.json"
    summary_path = run_dir / "summary.json"
    snapshot.save_html(str(html_path))
    json_path.write_text(snapshot.json())

    decisions = {r.column: r.drifted for r in results}
    report = DriftReport(
        output_dir=run_dir,
        html_path=html_path,
        json_path=json_path,
        summary_path=summary_path,
        latest_dir=drift_root / LATEST_LINK,
        generated_at=generated_at,
        current_snapshot=_snapshot_time(current),
        n_reference=len(reference_sample),
        n_current=len(current_sample),
        n_reference_before_sampling=len(reference),
        n_current_before_sampling=len(current),
        columns=results,
        columns_skipped=selection.skipped,
        columns_excluded=excluded_results,
        prediction_column=selection.prediction,
        share_drifted=drifted_share(decisions),
        threshold=threshold,
        drift_detected=drift_verdict(decisions, threshold),
    )
    summary_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    point_latest(drift_root, run_dir)
    return report
