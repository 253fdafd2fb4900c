"""Decision and feedback logs: every decision served, written off the request path.

A request must never wait for a disk or fail because of one, so :meth:`PartitionedLog.log` only
puts the record on a bounded in-memory queue (``put_nowait``); a daemon thread drains it and
writes Parquet files, one per flush and day, partitioned Hive-style::

    <monitoring_dir>/decisions/date=YYYY-MM-DD/part-<UTC time>-<random>.parquet
    <monitoring_dir>/feedback/date=YYYY-MM-DD/part-<UTC time>-<random>.parquet

When the queue is full (the disk is slower than the traffic for longer than the queue lasts) the
record is dropped and counted in :attr:`LogStats.dropped`; a write error is counted in
``write_errors`` and the writer goes on. Files appear atomically (written under a dot-name, then
renamed), so a reader never sees half a file. Read them with DuckDB::

    SELECT * FROM read_parquet('<monitoring_dir>/decisions/*/*.parquet', hive_partitioning = 1,
                               union_by_name = 1)

or with :func:`read_decisions` / :func:`read_feedback`.

The feature values a decision saw are stored typed, as a struct of float64 fields
(``feature_values``, one Parquet column per feature, NaN and inf as null, ``features`` null), by
the service's writer and by a batch (:func:`log_decision_frame`: a million decisions at once):
no JSON text to encode and compress per decision. A service record whose values are not all
numbers (a string, say) is stored as before, as a JSON object in ``features``.
:func:`read_decisions` gives every row its ``features`` JSON either way (files of different
feature lists are read apart, so that a row gets no field of the others').
"""

from __future__ import annotations

import atexit

# pyarrow imports its pandas shim, which imports concurrent.futures.thread, which registers an
# exit hook, on first use; during interpreter exit that registration raises and the final flush
# would lose the queued records. Imported before any exit, it is only looked up then.
import concurrent.futures.thread  # noqa: F401
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.sql import sql_identifier, sql_string
from omniretain.settings import Settings

logger = logging.getLogger(__name__)

DecisionSource = Literal["single", "batch", "campaign"]
DECISIONS_DIR = "decisions"
FEEDBACK_DIR = "feedback"
PARTITION_COLUMN = "date"
DRAIN_INTERVAL_S = 0.2  # the writer polls the queue this often (see PartitionedLog._run)

DECISION_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.string()),
        ("source", pa.string()),
        ("churn_probability", pa.float64()),
        ("repurchase_probability", pa.float64()),
        ("action", pa.string()),
        ("channel", pa.string()),
        ("expected_value", pa.float64()),
        ("propensity", pa.float64()),
        ("is_control", pa.bool_()),
        ("churn_model_version", pa.string()),
        ("repurchase_model_version", pa.string()),
        ("feature_service", pa.string()),
        ("features", pa.string()),  # JSON object: feature name -> value used for the decision
    ]
)
# Typed part files (the service's writer, batches): ``features`` is null and the values are this
# struct (feature name -> float64, NaN and inf as null); read_decisions turns it into the same
# JSON object.
FEATURE_VALUES_COLUMN = "feature_values"
# The service's writer converts this many records, then hands the GIL over (time.sleep(0)) to a
# worker's event loop waiting for it: no single stretch of the writer holds it long.
SLICE_RECORDS = 64
FEEDBACK_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.string()),
        ("outcome", pa.string()),  # e.g. accepted, converted, ignored, unsubscribed
        ("revenue", pa.float64()),
    ]
)


@dataclass
class DecisionRecord:
    """One decision as served: what was known, what was chosen, by which models.

    ``features`` are the values the models saw (NaN and None become JSON null); ``propensity``
    is the probability with which the policy picked this action (1.0 for a greedy choice, below
    1 under exploration); ``is_control`` marks a hold-out customer who was deliberately not
    contacted, so that treated vs control can be compared later.
    """

    customer_id: str
    churn_probability: float
    repurchase_probability: float
    action: str
    channel: str
    churn_model_version: str
    repurchase_model_version: str
    features: Mapping[str, float | None] = field(default_factory=dict)
    expected_value: float = 0.0
    propensity: float = 1.0
    is_control: bool = False
    source: DecisionSource = "single"
    feature_service: str = ""
    decision_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    decided_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class FeedbackRecord:
    """What became of a decision, as reported back (``POST /feedback``) or from a later feed."""

    decision_id: str
    outcome: str
    customer_id: str = ""
    revenue: float | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class LogStats:
    """Counters of one logger; ``dropped`` and ``write_errors`` should stay at 0."""

    logged: int = 0
    written: int = 0
    dropped: int = 0
    write_errors: int = 0
    files: int = 0


# ---- pure conversions ------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return None if math.isnan(number) or math.isinf(number) else number


def features_json(features: Mapping[str, Any]) -> str:
    """Feature values as a compact JSON object, NaN/inf as null (JSON has no NaN).

    Served features are plain finite floats with string names almost always: those are dumped
    as they are (the writer thread shares the GIL with the requests); anything else goes
    through :func:`_json_value`.
    """
    if all(type(v) is float and math.isfinite(v) for v in features.values()) and all(
        type(k) is str for k in features
    ):
        return json.dumps(features, separators=(",", ":"))
    return json.dumps({str(k): _json_value(v) for k, v in features.items()}, separators=(",", ":"))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _decision_fields(
    record: DecisionRecord | Mapping[str, Any],
) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """A record's row of :data:`DECISION_SCHEMA` but ``features`` (defaults filled in), and its
    feature values."""
    # Attributes, not dataclasses.asdict: asdict deep-copies the features of every record.
    values = record.__dict__ if isinstance(record, DecisionRecord) else dict(record)
    row = {name: values.get(name) for name in DECISION_SCHEMA.names if name != "features"}
    row["decision_id"] = str(row["decision_id"] or uuid.uuid4().hex)
    row["decided_at"] = _utc(row["decided_at"] or datetime.now(UTC))
    row["propensity"] = 1.0 if row["propensity"] is None else float(row["propensity"])
    row["is_control"] = bool(row["is_control"])
    row["source"] = row["source"] or "single"
    return row, values.get("features") or {}


def decision_row(record: DecisionRecord | Mapping[str, Any]) -> dict[str, Any]:
    """A record as one row of :data:`DECISION_SCHEMA` (a mapping may omit optional fields)."""
    row, features = _decision_fields(record)
    row["features"] = features_json(features)
    return row


_NUMBERS = (float, int, np.integer, np.floating, np.bool_)  # bool is an int


def typed_feature_names(features: Mapping[Any, Any]) -> tuple[str, ...] | None:
    """The feature names, in order, when the values can be stored as the float64 struct (every
    name a string, every value None or a real number: what :func:`_json_value` writes as a JSON
    number or null); None when they cannot (a string value, say, or no features: stored as
    JSON)."""
    names = tuple(features)
    if not names or not all(type(name) is str for name in names):
        return None  # Parquet has no struct without fields: no features, JSON "{}"
    for value in features.values():
        if value is not None and type(value) is not float and not isinstance(value, _NUMBERS):
            return None
    return names


def _let_requests_run() -> None:
    """Release the GIL for a moment: a worker's event loop waiting for it takes it now instead
    of after the interpreter's switch interval (5 ms)."""
    time.sleep(0)


def typed_decision_table(
    items: Sequence[tuple[dict[str, Any], Mapping[str, Any]]], names: tuple[str, ...]
) -> pa.Table:
    """Decisions of the same feature names (rows of :func:`_decision_fields`, values) as a table
    of :data:`DECISION_SCHEMA` plus the values as :data:`FEATURE_VALUES_COLUMN`, built column by
    column, the values :data:`SLICE_RECORDS` records at a time (the writer thread shares the GIL
    with the requests)."""
    n = len(items)
    columns: dict[str, Any] = {
        name: pa.array([row[name] for row, _ in items], DECISION_SCHEMA.field(name).type)
        for name in DECISION_SCHEMA.names
        if name != "features"
    }
    columns["features"] = pa.nulls(n, pa.string())
    slices = []
    for start in range(0, n, SLICE_RECORDS):
        _let_requests_run()
        part = items[start : start + SLICE_RECORDS]
        # None -> NaN; int, bool and numpy numbers -> float64, as float() in _json_value
        slices.append(np.array([tuple(values.values()) for _, values in part], dtype=np.float64))
    matrix = np.asfortranarray(np.concatenate(slices))  # column by column below
    struct = float64_struct([matrix[:, index] for index in range(len(names))], names)
    columns[FEATURE_VALUES_COLUMN] = struct
    schema = DECISION_SCHEMA.append(pa.field(FEATURE_VALUES_COLUMN, struct.type))
    return pa.table(columns, schema=schema)


def feedback_row(record: FeedbackRecord | Mapping[str, Any]) -> dict[str, Any]:
    """A feedback record as one row of :data:`FEEDBACK_SCHEMA`."""
    values = asdict(record) if isinstance(record, FeedbackRecord) else dict(record)
    row = {name: values.get(name) for name in FEEDBACK_SCHEMA.names}
    row["received_at"] = _utc(row["received_at"] or datetime.now(UTC))
    return row


def partition_rows(rows: list[dict[str, Any]], time_column: str) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the UTC day of ``time_column`` (``YYYY-MM-DD``), in arrival order."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row[time_column].strftime("%Y-%m-%d"), []).append(row)
    return by_day


# ---- the background writer -------------------------------------------------------------------
class _FlushMarker:
    """Queued by :meth:`PartitionedLog.flush`; set once everything queued before is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class PartitionedLog:
    """A bounded queue drained by one daemon thread into day-partitioned Parquet files."""

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        time_column: str,
        to_row: Any,
        queue_size: int = 10000,
        flush_rows: int = 500,
        flush_seconds: float = 2.0,
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.time_column = time_column
        self.to_row = to_row
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.stats = LogStats()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._count_lock = threading.Lock()
        self._wake = threading.Event()  # set by flush and close; records wait for the poll
        self._thread = threading.Thread(
            target=self._run, name=f"omniretain-{directory.name}-log", daemon=True
        )
        self._thread.start()
        # A server that stops normally (SIGTERM to uvicorn, end of a script) writes what is
        # queued: atexit runs while daemon threads are still alive.
        atexit.register(self.close, 10.0)

    def log(self, record: Any) -> bool:
        """Queue one record; never blocks, never raises. False when it was dropped."""
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(record)
        except Exception:  # noqa: BLE001 - queue.Full or anything: the request never sees it
            with self._count_lock:
                self.stats.dropped += 1
            return False
        with self._count_lock:
            self.stats.logged += 1
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record queued before this call is on disk (not for requests)."""
        if self._closed or not self._thread.is_alive():
            return False
        marker = _FlushMarker()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer thread."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._wake.set()
        self._thread.join(timeout)

    def __enter__(self) -> PartitionedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread --
    def _run(self) -> None:
        """Drain the queue every ``DRAIN_INTERVAL_S`` (or at once on flush/close).

        The writer never blocks in ``queue.get``: a blocked reader is woken by every ``put``,
        which costs the request thread a context switch and a GIL hand-over (about 1.6 ms per
        request, measured). Polling leaves ``put`` a plain append.
        """
        pending: list[Any] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            self._wake.wait(DRAIN_INTERVAL_S)
            self._wake.clear()
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._write(pending)
                    return
                if isinstance(item, _FlushMarker):
                    self._write(pending)
                    pending = []
                    item.done.set()
                    deadline = time.monotonic() + self.flush_seconds
                    continue
                pending.append(item)
                if len(pending) >= self.flush_rows:
                    self._write(pending)
                    pending = []
                    deadline = time.monotonic() + self.flush_seconds
            if time.monotonic() >= deadline:
                self._write(pending)
                pending = []
                deadline = time.monotonic() + self.flush_seconds

    def _write(self, records: list[Any]) -> None:
        if not records:
            return
        for (day, kind), items in self._groups(records).items():
            count = len(items)
            try:
                table = self._table(kind, items)
                count = table.num_rows
                self._write_file(day, table)
                self.stats.written += count
            except Exception:  # noqa: BLE001 - a full disk must not kill the writer
                logger.exception("decision log: could not write %d rows", count)
                self.stats.write_errors += count

    def _groups(self, records: list[Any]) -> dict[tuple[str, Any], list[Any]]:
        """The records as rows by UTC day (one part file each; the second key tells
        :meth:`_table` how to convert them); a malformed one is counted and left out."""
        rows: list[dict[str, Any]] = []
        for record in records:
            try:
                rows.append(self.to_row(record))
            except Exception:  # noqa: BLE001 - one malformed record must not lose the batch
                logger.exception("decision log: malformed record dropped")
                self.stats.write_errors += 1
        return {(day, None): group for day, group in partition_rows(rows, self.time_column).items()}

    def _table(self, kind: Any, rows: list[Any]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _write_file(self, day: str, table: pa.Table) -> Path:
        path = write_partition(self.directory, day, table)
        self.stats.files += 1
        return path


def write_partition(directory: Path, day: str, table: pa.Table) -> Path:
    """One part file of a day partition, atomically (written under a dot-name, then renamed).

    Dictionary encoding is tried on the flat columns only (actions, channels, versions repeat):
    on a struct of feature values it would cost five times the rest of the write and find few
    repeats.
    """
    folder = directory / f"{PARTITION_COLUMN}={day}"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = folder / f".{name}.tmp"
    flat = [f.name for f in table.schema if not pa.types.is_nested(f.type)]
    pq.write_table(table, temporary, use_dictionary=flat)
    os.replace(temporary, folder / name)
    return folder / name


HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def random_ids(n: int) -> pa.Array:
    """``n`` random 128-bit ids as 32 hex digits (what ``uuid4().hex`` gives), built as one
    byte array: no Python string per id."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = HEX_DIGITS[raw & 0x0F]
    return pa.array(digits.view("S32").ravel(), pa.binary(32)).cast(pa.string())


def float64_struct(columns: Sequence[np.ndarray], names: Sequence[str]) -> pa.StructArray:
    """Float64 columns as a struct, NaN and inf as null (what :func:`features_json` writes as
    JSON null): one Parquet column per feature, no text."""
    children = [pa.array(values, mask=~np.isfinite(values)) for values in columns]
    return pa.StructArray.from_arrays(children, names=list(names))


def feature_values_column(features: pd.DataFrame) -> pa.StructArray:
    """Each row's feature values as the struct of :data:`FEATURE_VALUES_COLUMN`."""
    return float64_struct(
        # column by column: no strided copy of the frame
        [
            features.iloc[:, index].to_numpy(dtype=np.float64, na_value=np.nan)
            for index in range(features.shape[1])
        ],
        [str(name) for name in features.columns],
    )


def log_decision_frame(
    settings: Settings,
    decisions: pd.DataFrame,
    features: pd.DataFrame,
    source: DecisionSource,
    decided_at: datetime,
    model_versions: Mapping[str, str],
) -> Path | None:
    """Log many decisions taken at one moment (batch scoring, replay) as one part file.

    The same rows as :class:`DecisionLogger` writes one by one, without its queue: the caller is
    a batch job, not a request, so it waits for the file. The feature values go in typed
    (:data:`FEATURE_VALUES_COLUMN`); :func:`read_decisions` reads them back as the ``features``
    JSON of every other row. ``decisions`` has ``customer_id``,
    ``churn_probability``, ``repurchase_probability``, ``action``, ``channel``,
    ``expected_value`` and optionally ``propensity`` and ``control_group``; ``features`` holds
    the values the models saw, row for row.
    """
    if decisions.empty:
        return None
    n = len(decisions)
    moment = _utc(decided_at)

    def column(name: str, default: Any) -> Any:
        return decisions[name].to_numpy() if name in decisions else [default] * n

    columns: dict[str, Any] = {
        "decision_id": random_ids(n),
        # one numpy timestamp repeated: a list of a million datetimes costs seconds
        "decided_at": pa.array(np.full(n, np.datetime64(moment.replace(tzinfo=None), "us"))).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "customer_id": decisions["customer_id"].astype(str).to_numpy(),
        "source": [source] * n,
        "churn_probability": decisions["churn_probability"].astype("float64").to_numpy(),
        "repurchase_probability": decisions["repurchase_probability"].astype("float64").to_numpy(),
        "action": decisions["action"].astype(str).to_numpy(),
        "channel": decisions["channel"].astype(str).to_numpy(),
        "expected_value": decisions["expected_value"].astype("float64").to_numpy(),
        "propensity": np.asarray(column("propensity", 1.0), dtype=np.float64),
        "is_control": np.asarray(column("control_group", False), dtype=bool),
        "churn_model_version": [str(model_versions.get("churn", ""))] * n,
        "repurchase_model_version": [str(model_versions.get("repurchase", ""))] * n,
        "feature_service": [settings.features.feature_service] * n,
        "features": pa.nulls(n, pa.string()),
    }
    schema = DECISION_SCHEMA
    if len(features.columns):  # Parquet has no struct without fields: no features, JSON "{}"
        columns[FEATURE_VALUES_COLUMN] = feature_values_column(features)
        schema = schema.append(pa.field(FEATURE_VALUES_COLUMN, columns[FEATURE_VALUES_COLUMN].type))
    else:
        columns["features"] = ["{}"] * n
    table = pa.table(columns, schema=schema)
    return write_partition(decisions_dir(settings), moment.strftime("%Y-%m-%d"), table)


class DecisionLogger(PartitionedLog):
    """The decision log of :class:`DecisionRecord` (or mappings with the same keys).

    The feature values are written typed (:func:`typed_decision_table`); records of other
    feature names (a model version changed within a flush) go to another part file, and records
    whose values are not all numbers to one with the ``features`` JSON (:func:`decision_row`).
    """

    def __init__(self, settings: Settings) -> None:
        config = settings.monitoring.decision_log
        super().__init__(
            decisions_dir(settings),
            DECISION_SCHEMA,
            "decided_at",
            decision_row,
            config.queue_size,
            config.flush_rows,
            config.flush_seconds,
        )

    def _groups(self, records: list[Any]) -> dict[tuple[str, Any], list[Any]]:
        """(row, feature values) by UTC day and feature names (None: not storable typed)."""
        groups: dict[tuple[str, Any], list[Any]] = {}
        for index, record in enumerate(records):
            if index % SLICE_RECORDS == SLICE_RECORDS - 1:
                _let_requests_run()
            try:
                row, features = _decision_fields(record)
                day = row["decided_at"].strftime("%Y-%m-%d")
            except Exception:  # noqa: BLE001 - one malformed record must not lose the batch
                logger.exception("decision log: malformed record dropped")
                self.stats.write_errors += 1
                continue
            groups.setdefault((day, typed_feature_names(features)), []).append((row, features))
        return groups

    def _table(self, kind: Any, items: list[Any]) -> pa.Table:
        if kind is not None:
            try:
                return typed_decision_table(items, kind)
            except Exception:  # noqa: BLE001 - a value numpy cannot take: the JSON path decides
                logger.debug("decision log: typed conversion failed, writing JSON", exc_info=True)
        rows = []
        for row, features in items:
            try:
                rows.append({**row, "features": features_json(features)})
            except Exception:  # noqa: BLE001 - one malformed record must not lose the batch
                logger.exception("decision log: malformed record dropped")
                self.stats.write_errors += 1
        return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)


class FeedbackLogger(PartitionedLog):
    """The feedback log of :class:`FeedbackRecord` (``POST /feedback`` writes here)."""

    def __init__(self, settings: Settings) -> None:
        config = settings.monitoring.decision_log
        super().__init__(
            feedback_dir(settings),
            FEEDBACK_SCHEMA,
            "received_at",
            feedback_row,
            config.queue_size,
            config.flush_rows,
            config.flush_seconds,
        )


# ---- reading (DuckDB) ------------------------------------------------------------------------
def decisions_dir(settings: Settings) -> Path:
    return settings.monitoring_dir / DECISIONS_DIR


def feedback_dir(settings: Settings) -> Path:
    return settings.monitoring_dir / FEEDBACK_DIR


def parquet_glob(directory: Path) -> str:
    """The glob DuckDB reads: every visible part file of every day partition."""
    return str(directory / f"{PARTITION_COLUMN}=*" / "*.parquet")


def _files_by_feature_names(con: Any, glob: str) -> dict[tuple[str, ...], list[str]]:
    """The part files of ``glob`` grouped by the fields of their :data:`FEATURE_VALUES_COLUMN`
    (``()``: none, the ``features`` are JSON; that group first), read from the footers only."""
    rows = con.execute(
        f"""WITH elements AS (
                SELECT file_name, name, num_children, row_number() OVER () AS position
                FROM parquet_schema(?)),
            structs AS (
                SELECT file_name, position, num_children FROM elements
                WHERE name = '{FEATURE_VALUES_COLUMN}' AND num_children > 0)
        SELECT files.file_name, list(field.name ORDER BY field.position)
        FROM (SELECT DISTINCT file_name FROM elements) AS files
        LEFT JOIN structs USING (file_name)
        LEFT JOIN elements AS field ON field.file_name = files.file_name
            AND field.position > structs.position
            AND field.position <= structs.position + structs.num_children
        GROUP BY files.file_name""",
        [glob],
    ).fetchall()
    groups: dict[tuple[str, ...], list[str]] = {}
    for file_name, names in rows:
        groups.setdefault(tuple(name for name in names if name is not None), []).append(file_name)
    return dict(sorted(groups.items(), key=lambda group: (group[0] != (), min(group[1]))))


def _read_log(
    directory: Path,
    schema: pa.Schema,
    where: str = "",
    params: list[Any] | None = None,
    feature_columns: bool = False,
) -> pd.DataFrame:
    """Every part file's rows; a typed file's :data:`FEATURE_VALUES_COLUMN` becomes the row's
    ``features`` JSON, as the JSON files store it.

    Files are read in groups of the same feature names: read together (``union_by_name``), a
    row would get the fields of the other files as null. ``feature_columns`` adds the typed
    values as columns ``feature_values.<name>`` and a boolean :data:`FEATURE_VALUES_COLUMN`
    (the row has them), for :func:`decision_features`.
    """
    import duckdb

    if not any(directory.glob(f"{PARTITION_COLUMN}=*/*.parquet")):
        return schema.empty_table().to_pandas()
    source = "read_parquet(?, hive_partitioning = 1, union_by_name = 1)"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        glob = parquet_glob(directory)
        groups = _files_by_feature_names(con, glob)
        frames = []
        for names, files in groups.items():
            columns = f"* EXCLUDE ({PARTITION_COLUMN})"
            if names:
                columns = (
                    f"* EXCLUDE ({PARTITION_COLUMN}, {FEATURE_VALUES_COLUMN}) REPLACE "
                    f"(coalesce(features, to_json({FEATURE_VALUES_COLUMN})::VARCHAR) AS features)"
                )
            if names and feature_columns:
                columns += f", {FEATURE_VALUES_COLUMN} IS NOT NULL AS {FEATURE_VALUES_COLUMN}"
                for name in names:
                    alias = sql_identifier(f"{FEATURE_VALUES_COLUMN}.{name}")
                    columns += (
                        f", struct_extract({FEATURE_VALUES_COLUMN}, {sql_string(name)}) AS {alias}"
                    )
            query = f"SELECT {columns} FROM {source} {where}"  # the listed files: none newer
            frames.append(con.execute(query, [files, *(params or [])]).df())
    found = [frame for frame in frames if not frame.empty]
    if len(found) <= 1:
        return (found or frames)[0]
    return pd.concat(found, ignore_index=True)


def read_decisions(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    feature_columns: bool = False,
) -> pd.DataFrame:
    """Decisions logged in ``[since, until)`` (all when None), one row per decision;
    ``feature_columns``: also the typed feature values as columns (:func:`_read_log`)."""
    clauses, params = [], []
    if since is not None:
        clauses.append("decided_at >= ?")
        params.append(_utc(since))
    if until is not None:
        clauses.append("decided_at < ?")
        params.append(_utc(until))
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return _read_log(decisions_dir(settings), DECISION_SCHEMA, where, params, feature_columns)


def read_feedback(settings: Settings) -> pd.DataFrame:
    """Every feedback row, oldest first."""
    return _read_log(feedback_dir(settings), FEEDBACK_SCHEMA, "ORDER BY received_at")


def decision_features(decisions: pd.DataFrame) -> pd.DataFrame:
    """The logged feature values as columns (one per feature), beside id, time and score.

    This is the served-traffic frame drift monitoring compares with the training reference.
    Rows read with ``read_decisions(..., feature_columns=True)`` from typed files take their
    values from those columns (no JSON to parse); the others parse ``features``. The columns
    come in the order the rows name them (JSON rows first, as ``read_decisions`` returns them).
    """
    prefix = f"{FEATURE_VALUES_COLUMN}."
    typed_columns = [c for c in decisions.columns if isinstance(c, str) and c.startswith(prefix)]
    typed = (
        decisions[FEATURE_VALUES_COLUMN].eq(True).to_numpy()
        if FEATURE_VALUES_COLUMN in decisions and typed_columns
        else np.zeros(len(decisions), dtype=bool)
    )
    texts = decisions["features"][~typed]
    from_json = (  # from_records cannot take an empty index
        pd.DataFrame.from_records(
            [json.loads(text) if text else {} for text in texts], index=texts.index
        )
        if len(texts)
        else pd.DataFrame(index=texts.index)
    )
    from_struct = decisions.loc[typed, typed_columns]
    from_struct.columns = [column[len(prefix) :] for column in typed_columns]
    parts = [part for part in (from_json, from_struct) if not part.empty]
    parsed = pd.concat(parts).reindex(decisions.index) if parts else from_json
    parsed = parsed.astype("float64")
    out = pd.DataFrame(
        {
            "customer_id": decisions["customer_id"].astype(str),
            "event_timestamp": pd.to_datetime(decisions["decided_at"], utc=True),
            "churn_probability": decisions["churn_probability"].astype("float64"),
        },
        index=decisions.index,
    )
    return pd.concat([out, parsed.drop(columns=out.columns, errors="ignore")], axis=1)
