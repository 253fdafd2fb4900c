"""Ingestion: raw per-channel feeds -> validated staging tables -> identities -> unified tables.

Every file of ``<source>/<feed>/`` (CSV, Parquet or JSON Lines) is read with all columns as text
by DuckDB, validated and cast in SQL against the feed's contract (:mod:`features.contract`), and
split three ways: accepted rows go to the staging table ``raw_<feed>`` (typed, with ``_file`` and
``_line``), failing rows go to ``quarantine`` with the reason and the raw row, and rows whose key
was already accepted are counted as duplicates. Nothing is dropped silently: for every file,
``read = accepted + quarantined + duplicates``.

Why this shape:
    * Text first, then ``TRY_CAST`` in SQL: one vectorised pass validates millions of rows, and a
      bad value becomes a quarantine reason instead of a parser error that loses the whole file.
      One statement per file reads, checks and types it into the feed's batch; the reason text
      and the raw row (as JSON) are built only for the rows that fail.
    * One DuckDB transaction per feed for all its new files, each file keyed by its sha256 in
      ``ingested_files``: a crash leaves the previous good state, and re-running adds nothing (a
      new month adds only itself). Files are validated into a batch, as many side by side as
      DuckDB has threads (a CSV read with line numbers runs on one thread, so one file at a
      time left a core idle); duplicates, near duplicates, staging and bookkeeping then run
      once per feed, set-based: per-file statements and commits (each a disk sync) dominated
      the time on large histories.
    * Identity resolution and the unified tables are rebuilt from the staging tables whenever
      the staging tables changed: simple, idempotent, and a fix to the resolver applies to all
      history.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from features.contract import FEEDS, UNIFIED_TABLES, Column, Feed
from features.identity import create_raw_customers, record_customer_sql, resolve_identities
from features.sql import sql_identifier, sql_string
from features.suppression import ERASED_REASON, quarantine_erased

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow as pa
    from rich.console import Group

    from omniretain.settings import CrmAttribute, Settings

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".jsonl")
SQL_TYPES: dict[str, str] = {
    "str": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "float": "DOUBLE",
    "int": "BIGINT",
    "bool": "BOOLEAN",
}
TRUE_WORDS: tuple[str, ...] = ("true", "1", "yes")
FALSE_WORDS: tuple[str, ...] = ("false", "0", "no")
FUTURE_TOLERANCE = timedelta(days=1)  # clocks of source systems drift; a day later is fine
# The usual export shape, ``2025-03-01T14:05:00`` naive or with a literal UTC suffix: fixed
# width, so no offset can hide in it and the plain TIMESTAMP cast (which ignores offsets) is
# exact; it is several times cheaper than the zone-aware cast that every other shape takes.
_ISO_SECONDS_PATTERN = "____-__-__T__:__:__%"
_UTC_SUFFIXES = ((19, ""), (20, "Z"), (25, "+00:00"))  # total length, suffix
_QUOTED_VALUE_CHARS = 60  # long raw values are cut in reasons (the full row is in ``raw``)


class NotAFeedError(ValueError):
    """A file that is not the feed its folder says (missing required columns, unreadable)."""


# ---- report ---------------------------------------------------------------------------------
class FileCounts(BaseModel):
    """What happened to one file."""

    feed: str
    file: str
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0  # same key as an accepted row
    near_duplicates: int = 0  # another key, but the same event (see Feed.near_duplicate_columns)
    erased: int = 0  # of quarantined: rows of an erased person (features/suppression.py)


class FeedCounts(BaseModel):
    """Totals of one feed over this run."""

    files_ingested: int = 0
    files_skipped: int = 0  # already ingested (same sha256)
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    erased: int = 0

    def add(self, counts: FileCounts) -> None:
        self.files_ingested += 1
        self.read += counts.read
        self.accepted += counts.accepted
        self.quarantined += counts.quarantined
        self.duplicates += counts.duplicates
        self.near_duplicates += counts.near_duplicates
        self.erased += counts.erased


_COLUMN_HEADERS: dict[str, str] = {
    "files_ingested": "files",
    "files_skipped": "skipped",
    "read": "read",
    "accepted": "accepted",
    "quarantined": "quarant.",
    "duplicates": "dupl.",
    "near_duplicates": "near dupl.",
    "erased": "erased",
}


class IdentitySummary(BaseModel):
    """The identity graph after this run (all history, not only this run's rows)."""

    customers: int = 0
    identifiers: int = 0  # distinct normalised identifiers
    links: int = 0  # (record row, identifier) pairs whose identifier is valid
    records: int = 0  # accepted records of every feed
    linked_records: int = 0  # records with a customer_id
    records_without_identifier: int = 0  # customer_id NULL (e.g. anonymous web sessions)
    merges: int = 0  # customers absorbed by an older one, over all runs


class IngestReport(BaseModel):
    """Counts per feed and per file, the identity summary and where everything was written."""

    warehouse_path: Path
    source_dir: Path
    feeds: dict[str, FeedCounts] = Field(default_factory=dict)
    files: list[FileCounts] = Field(default_factory=list)
    identity: IdentitySummary = Field(default_factory=IdentitySummary)
    identity_rebuilt: bool = False
    unknown_folders: list[str] = Field(default_factory=list)
    ignored_files: list[str] = Field(default_factory=list)
    empty_files: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    identity_seconds: float = 0.0  # identity resolution + unified tables, inside ``seconds``
    identity_cpu_seconds: float = 0.0  # the same, process CPU time (all threads)

    def totals(self) -> FeedCounts:
        total = FeedCounts()
        for counts in self.feeds.values():
            for name in FeedCounts.model_fields:
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        return total

    def render(self) -> Group:
        """A rich table (one line per feed, totals), then identity and warnings as lines."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"ingest -> {self.warehouse_path}", show_footer=True)
        total = self.totals()
        table.add_column("feed", footer="total")
        for name, header in _COLUMN_HEADERS.items():
            table.add_column(header, justify="right", footer=f"{getattr(total, name):,}")
        for feed, counts in self.feeds.items():
            table.add_row(feed, *(f"{getattr(counts, name):,}" for name in _COLUMN_HEADERS))
        identity = self.identity
        lines = [
            f"identity{'' if self.identity_rebuilt else ' (unchanged)'}: "
            f"{identity.customers:,} customers, {identity.identifiers:,} identifiers, "
            f"{identity.links:,} links, {identity.linked_records:,}/{identity.records:,} records "
            f"linked, {identity.records_without_identifier:,} without any identifier, "
            f"{identity.merges:,} merges",
            f"{self.seconds:.1f} s",
        ]
        if self.unknown_folders:
            lines.append(f"skipped unknown feed folders: {', '.join(self.unknown_folders)}")
        if self.ignored_files:
            lines.append(
                f"ignored files (not {'/'.join(SUPPORTED_SUFFIXES)}): "
                f"{', '.join(self.ignored_files)}"
            )
        if self.empty_files:
            lines.append(f"empty files (nothing to load): {', '.join(self.empty_files)}")
        return Group(table, *(Text(line) for line in lines))


# ---- pure helpers: discovery, columns, validation SQL ---------------------------------------
def discover_files(source_dir: Path) -> tuple[dict[str, list[Path]], list[str], list[str]]:
    """Feed -> its data files (sorted by name), unknown folders, ignored files.

    Files are taken in name order so that monthly exports (``pos_sales_2025-01.csv``) are
    ingested oldest first and a row repeated in the next month counts as the duplicate.
    """
    files: dict[str, list[Path]] = {}
    unknown: list[str] = []
    ignored: list[str] = []
    if not source_dir.is_dir():
        raise FileNotFoundError(
            f"feed folder {source_dir} does not exist: run `omniretain simulate` or pass --source"
        )
    for folder in sorted(p for p in source_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        if folder.name not in FEEDS:
            unknown.append(folder.name)
            continue
        found = []
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                found.append(path)
            else:
                ignored.append(f"{folder.name}/{path.name}")
        files[folder.name] = found
    return files, unknown, ignored


def map_columns(found: list[str], feed: Feed, path: Path) -> dict[str, str | None]:
    """Contract column -> the file's column name (matched trimmed, case-insensitive) or None.

    Raises:
        NotAFeedError: a required column of the feed is missing.
    """
    by_normal_name: dict[str, str] = {}
    for name in found:
        by_normal_name.setdefault(name.strip().lower(), name)
    mapping = {column: by_normal_name.get(column) for column in feed.columns}
    missing = [c for c in feed.required_columns if mapping[c] is None]
    if missing:
        raise NotAFeedError(
            f"{path}: not a '{feed.name}' file: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(found) or 'no columns'}). Move it out of {path.parent} or fix "
            "its header."
        )
    return mapping


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _column_checks(
    name: str, column: Column, future_limit: datetime
) -> tuple[str, str, str, str | None]:
    """SQL for one column: (parsed value, final typed value, reason, fine).

    The parsed value reads the trimmed text ``_t_<name>`` once (one ``TRY_CAST`` per value);
    the reason reads both and is NULL when the value is fine, else names the first problem;
    ``fine`` is the cheap boolean form of "reason is NULL" (None: always fine).
    """
    text = sql_identifier(f"_t_{name}")
    value = sql_identifier(f"_v_{name}")
    quoted = f"'''' || left({text}, {_QUOTED_VALUE_CHARS}) || ''''"
    prefix = sql_string(f"{name}: ")
    missing = sql_string(f"{name}: missing required value") if column.required else "NULL"
    problems: list[tuple[str, str]] = []  # (condition, message) in order, after the NULL check
    final = value
    if column.type == "str":
        parsed = f"lower({text})" if column.allowed else text
        if column.allowed:
            allowed = ", ".join(sql_string(v) for v in column.allowed)
            choices = sql_string(" is not one of " + ", ".join(column.allowed))
            problems.append((f"{value} NOT IN ({allowed})", f"{prefix} || {quoted} || {choices}"))
    elif column.type == "timestamp":
        # Naive text is read in the session zone (UTC); offsets are honoured; stored naive UTC.
        # The common UTC shapes take a strict fast parse; anything else the full cast.
        plain_utc = " OR ".join(
            f"strlen({text}) = {length}" + (f" AND ends_with({text}, '{suffix}')" if suffix else "")
            for length, suffix in _UTC_SUFFIXES
        )
        parsed = (
            f"coalesce(CASE WHEN {text} LIKE '{_ISO_SECONDS_PATTERN}' AND ({plain_utc}) "
            f"THEN TRY_CAST({text} AS TIMESTAMP) END, "
            f"timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)))"
        )
        problems.append((f"{value} IS NULL", f"{prefix} || {quoted} || ' is not a timestamp'"))
        if column.not_future:
            limit = future_limit.strftime("%Y-%m-%d %H:%M:%S")
            problems.append(
                (
                    f"{value} > TIMESTAMP '{limit}'",
                    f"{prefix} || {quoted} || ' is in the future (after {limit} UTC)'",
                )
            )
    elif column.type in ("float", "int"):
        parsed = f"TRY_CAST({text} AS DOUBLE)"
        if column.type == "float":
            problems.append(
                (
                    f"{value} IS NULL OR NOT isfinite({value})",
                    f"{prefix} || {quoted} || ' is not a number'",
                )
            )
        else:
            # TRY_CAST('1.5' AS BIGINT) rounds to 2: go through DOUBLE and demand a whole number.
            final = f"CAST({value} AS BIGINT)"
            problems.append(
                (
                    f"{value} IS NULL OR NOT isfinite({value}) OR {value} <> trunc({value})",
                    f"{prefix} || {quoted} || ' is not an integer'",
                )
            )
        if column.minimum is not None:
            bound = _number_text(column.minimum)
            problems.append(
                (f"{value} < {bound}", f"{prefix} || {text} || ' below minimum {bound}'")
            )
        if column.maximum is not None:
            bound = _number_text(column.maximum)
            problems.append(
                (f"{value} > {bound}", f"{prefix} || {text} || ' above maximum {bound}'")
            )
    elif column.type == "bool":
        true_words = ", ".join(sql_string(w) for w in TRUE_WORDS)
        false_words = ", ".join(sql_string(w) for w in FALSE_WORDS)
        parsed = (
            f"CASE WHEN lower({text}) IN ({true_words}) THEN true "
            f"WHEN lower({text}) IN ({false_words}) THEN false END"
        )
        problems.append(
            (
                f"{value} IS NULL",
                f"{prefix} || {quoted} || ' is not a boolean (true/false, 1/0, yes/no)'",
            )
        )
    else:  # pragma: no cover - the contract's Literal forbids it
        raise ValueError(f"column {name}: unknown type {column.type!r}")
    branches = "".join(f" WHEN {condition} THEN {message}" for condition, message in problems)
    reason = f"CASE WHEN {text} IS NULL THEN {missing}{branches} END"
    # The same verdict as a plain boolean: the conditions are never NULL once the text is set.
    passes = f"NOT ({' OR '.join(condition for condition, _ in problems)})" if problems else None
    if column.required:
        fine = f"({text} IS NOT NULL AND {passes})" if passes else f"{text} IS NOT NULL"
    else:
        fine = f"({text} IS NULL OR {passes})" if passes else None
    return parsed, final, reason, fine


def _trimmed_sql(value: str) -> str:
    """``value`` without surrounding spaces, tabs and line ends.

    Most values have none: checking the first and last characters is several times cheaper
    than ``trim`` with a character set, which then only runs on the values that need it.
    """
    return (
        f"CASE WHEN ascii({value}) > 32 AND ascii({value}[-1]) > 32 THEN {value} "
        f"ELSE trim({value}, ' \t\r\n') END"
    )


def validation_sql(
    feed: Feed, now: datetime, source_table: str = "_src", keep: Sequence[str] = ()
) -> str:
    """SELECT over ``source_table`` (``_line`` and one text column per contract column) giving
    ``_line``, the typed contract columns, the ``keep`` columns unchanged and ``_reason`` (''
    when the row is valid).

    Three levels so that each value is trimmed once and cast once: text -> parsed -> checked.
    """
    future_limit = now.astimezone(UTC).replace(tzinfo=None) + FUTURE_TOLERANCE
    trimmed, parsed, typed, reasons, fines = [], [], [], [], []
    for name, column in feed.columns.items():
        parse, final, reason, fine = _column_checks(name, column, future_limit)
        if fine is not None:
            fines.append(fine)
        text = sql_identifier(f"_t_{name}")
        trimmed.append(f"NULLIF({_trimmed_sql(sql_identifier(name))}, '') AS {text}")
        parsed.append(f"{text}, {parse} AS {sql_identifier(f'_v_{name}')}")
        typed.append(f"{final} AS {sql_identifier(name)}")
        reasons.append(reason)
    passed = [*(["_attributes"] if feed.keeps_extra_columns else []), *keep]
    extra = "".join(f", {sql_identifier(name)}" for name in passed)
    return (
        f"SELECT _line, {', '.join(typed)}{extra}, "
        # Reasons are spelled out only for the rows that fail a check.
        f"CASE WHEN {' AND '.join(fines) or 'true'} THEN '' "
        f"ELSE concat_ws('; ', {', '.join(reasons)}) END AS _reason "
        f"FROM (SELECT _line, {', '.join(parsed)}{extra} "
        f"FROM (SELECT _line, {', '.join(trimmed)}{extra} FROM {source_table}))"
    )


def staging_ddl(feed: Feed) -> str:
    """The staging table of a feed: typed contract columns plus provenance."""
    columns = ", ".join(
        f"{sql_identifier(name)} {SQL_TYPES[c.type]}" for name, c in feed.columns.items()
    )
    if feed.keeps_extra_columns:
        columns += ", _attributes VARCHAR"
    return (
        f"CREATE TABLE IF NOT EXISTS raw_{feed.name} ({columns}, _file VARCHAR, "
        "_line BIGINT, _ingested_at TIMESTAMP)"
    )


WAREHOUSE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    feed VARCHAR, file VARCHAR, line BIGINT, reason VARCHAR, raw VARCHAR,
    quarantined_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ingested_files (
    feed VARCHAR, file VARCHAR, sha256 VARCHAR, rows_read BIGINT, rows_accepted BIGINT,
    rows_quarantined BIGINT, rows_duplicate BIGINT, ingested_at TIMESTAMP,
    rows_near_duplicate BIGINT DEFAULT 0);
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS rows_near_duplicate BIGINT DEFAULT 0;
CREATE TABLE IF NOT EXISTS ingest_state (key VARCHAR PRIMARY KEY, value VARCHAR);
"""


# ---- reading files into ``_src`` (text columns) and ``_rejected`` (unparsable lines) --------
def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, csv.Error) as error:
        raise NotAFeedError(f"{path}: unreadable as CSV: {error}") from error


def _rejects_options() -> str:
    return "store_rejects=true, rejects_table='_reject_errors', rejects_scan='_reject_scans'"


def _jsonl_lines_sql(path: Path) -> str:
    # One text column per physical line: a delimiter and quote that JSON lines do not use.
    return (
        f"read_csv({sql_string(str(path))}, columns={{'line': 'VARCHAR'}}, header=false, "
        f"auto_detect=false, delim=E'\\x01', quote='', escape='', {_rejects_options()})"
    )


def file_columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """The column names of a data file (for JSON Lines: every key of any object line)."""
    import duckdb

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _csv_header(path)
        if suffix == ".parquet":
            return [
                row[0]
                for row in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({sql_string(str(path))})"
                ).fetchall()
            ]
        rows = con.execute(f"""
            SELECT DISTINCT unnest(keys) FROM (
                SELECT CASE WHEN json_valid(line) THEN
                    CASE WHEN json_type(line) = 'OBJECT' THEN json_keys(line) END END AS keys
                FROM read_csv({sql_string(str(path))}, columns={{'line': 'VARCHAR'}},
                              header=false, auto_detect=false, delim=E'\\x01', quote='',
                              escape='', ignore_errors=true))""").fetchall()
        return [row[0] for row in rows]
    except duckdb.Error as error:
        raise NotAFeedError(f"{path}: unreadable as {suffix[1:]}: {error}") from error


def _drop_rejects(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP TABLE IF EXISTS _reject_errors; DROP TABLE IF EXISTS _reject_scans")


def _rejected_from_reader(con: duckdb.DuckDBPyConnection, header_lines: int, kind: str) -> int:
    """``_rejected`` from DuckDB's reject table: lines the reader could not split into fields.

    Returns how many lines were rejected.
    """
    has_rejects = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = '_reject_errors'"
    ).fetchall()[0][0]
    if not has_rejects:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _rejected (_line BIGINT, _reason VARCHAR, _raw VARCHAR)"
        )
        return 0
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _rejected AS
        SELECT (line - {header_lines})::BIGINT AS _line,
               'malformed {kind} line: ' || string_agg(DISTINCT lower(error_type), ', ') AS _reason,
               to_json({{'_unparsed': any_value(csv_line)}})::VARCHAR AS _raw
        FROM _reject_errors GROUP BY line""")
    return int(con.execute("SELECT count(*) FROM _rejected").fetchall()[0][0])


def _line_numbers_sql(n_returned: str) -> str:
    """``ordinality -> _line``: the k-th row the reader returned is on the k-th data line that
    ``_rejected`` does not hold (the reader skips the lines it rejects)."""
    return f"""
        SELECT row_number() OVER (ORDER BY i) AS ordinality, i AS _line
        FROM range(1, ({n_returned}) + (SELECT max(_line) FROM _rejected) + 1) t(i)
        WHERE i NOT IN (SELECT _line FROM _rejected)"""


def _renumber_around_rejects(con: duckdb.DuckDBPyConnection) -> None:
    """Give ``_read`` rows their data line numbers when the reader skipped rejected lines."""
    n_rejected = con.execute("SELECT count(*) FROM _rejected").fetchall()[0][0]
    if not n_rejected:
        con.execute("ALTER TABLE _read RENAME COLUMN ordinality TO _line")
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _line_numbers AS "
        + _line_numbers_sql("SELECT count(*) FROM _read")
    )
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _read AS
        SELECT n._line, r.* EXCLUDE (ordinality)
        FROM _read r JOIN _line_numbers n USING (ordinality)""")
    con.execute("DROP TABLE _line_numbers")


def _struct_sql(columns: list[str]) -> str:
    """A struct of the named columns: a row's raw values, turned into JSON only when needed."""
    fields = ", ".join(f"{sql_string(name)}: {sql_identifier(name)}" for name in columns)
    return f"{{{fields}}}"


@dataclass(frozen=True)
class FileSource:
    """How :func:`load_file` exposed a file as ``_src``.

    Attributes:
        raw_json: SQL over ``_src._raw_row`` giving the row's raw values as JSON text.
        rejects_pending: the view reads the file itself (CSV): lines the reader rejects are
            known only after the statement that scans it, and the returned rows are then
            numbered by :func:`_renumber_around_reader_rejects`. Otherwise ``_rejected``
            already holds them and ``_line`` is final.
    """

    raw_json: str
    rejects_pending: bool


def load_file(
    con: duckdb.DuckDBPyConnection, path: Path, feed: Feed, columns: list[str] | None = None
) -> FileSource:
    """Expose one file as the temp view ``_src`` for :func:`validation_sql`.

    ``_src`` holds ``_line``, one text column per contract column (NULL when the file lacks an
    optional column), ``_attributes`` when the feed keeps extra columns, and ``_raw_row`` (the
    row's own values). A CSV or Parquet file is read by the view itself, inside the statement
    that validates it: no copy of the text. JSON Lines are split first into ``_read``, and
    lines that are not objects go to ``_rejected``.

    Raises:
        NotAFeedError: required columns missing, or DuckDB cannot read the file.
    """
    import duckdb

    if columns is None:
        columns = file_columns(con, path)
    mapping = map_columns(columns, feed, path)
    suffix = path.suffix.lower()
    location = sql_string(str(path))
    _drop_rejects(con)
    try:
        extra = ""
        if feed.keeps_extra_columns:
            mapped = {source for source in mapping.values() if source is not None}
            extra = ", " + _extra_columns_json_sql([c for c in columns if c not in mapped], suffix)
        text = _text_columns_sql(mapping, suffix)
        if suffix == ".csv":
            names = ", ".join(f"{sql_string(name)}: 'VARCHAR'" for name in columns)
            con.execute(f"""
                CREATE OR REPLACE TEMP VIEW _src AS
                SELECT ordinality AS _line, {text}{extra}, {_struct_sql(columns)} AS _raw_row
                FROM read_csv({location}, columns={{{names}}}, header=true, auto_detect=false,
                              delim=',', quote='"', escape='"', {_rejects_options()})
                     WITH ORDINALITY""")
            return FileSource("to_json(_raw_row)::VARCHAR", rejects_pending=True)
        if suffix == ".parquet":
            con.execute(f"""
                CREATE OR REPLACE TEMP VIEW _src AS
                SELECT file_row_number + 1 AS _line, {text}{extra},
                       {_struct_sql(columns)} AS _raw_row
                FROM read_parquet({location}, file_row_number=true)""")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _rejected (_line BIGINT, _reason VARCHAR, "
                "_raw VARCHAR)"
            )
            return FileSource("to_json(_raw_row)::VARCHAR", rejects_pending=False)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _read AS SELECT * FROM "
            f"{_jsonl_lines_sql(path)} WITH ORDINALITY"
        )
        _rejected_from_reader(con, header_lines=0, kind="JSON Lines")
        _renumber_around_rejects(con)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _read AS
            SELECT _line, line,
                   CASE WHEN json_valid(line) THEN
                       CASE WHEN json_type(line) = 'OBJECT' THEN line END END AS doc
            FROM _read WHERE trim(line, ' \t\r') <> ''""")
        con.execute("""
            INSERT INTO _rejected
            SELECT _line, 'malformed JSON Lines line: not a JSON object',
                   to_json({'_unparsed': line})::VARCHAR
            FROM _read WHERE doc IS NULL""")
        con.execute("DELETE FROM _read WHERE doc IS NULL")
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW _src AS SELECT _line, {text}{extra}, line AS _raw_row "
            "FROM _read"
        )
        return FileSource("_raw_row", rejects_pending=False)
    except duckdb.Error as error:
        raise NotAFeedError(f"{path}: unreadable as {suffix[1:]}: {error}") from error
    finally:
        if suffix != ".csv":
            _drop_rejects(con)


def _text_columns_sql(mapping: dict[str, str | None], suffix: str) -> str:
    """``<text of the source column> AS "<contract column>"``, NULL for absent columns."""
    parts = []
    for column, source in mapping.items():
        if source is None:
            value = "NULL"
        elif suffix == ".jsonl":
            value = f"json_extract_string(doc, {sql_string('$.' + _json_key(source))})"
        else:
            value = sql_identifier(source)
        parts.append(f"CAST({value} AS VARCHAR) AS {sql_identifier(column)}")
    return ", ".join(parts)


def _extra_columns_json_sql(extra: list[str], suffix: str) -> str:
    """``_attributes``: the columns outside the contract as one JSON object of text values.

    Keys are the trimmed, lower-cased column names, as contract columns are matched.
    """
    if suffix == ".jsonl":
        return "doc AS _attributes"  # the whole object; contract keys are simply never read
    if not extra:
        return "'{}' AS _attributes"
    fields = ", ".join(
        f"{sql_string(name.strip().lower())}: CAST({sql_identifier(name)} AS VARCHAR)"
        for name in extra
    )
    return f"to_json({{{fields}}})::VARCHAR AS _attributes"


def _json_key(key: str) -> str:
    """A JSONPath member name: quoted so keys with spaces or dots work."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- unified tables -------------------------------------------------------------------------
# Constant channels of the feeds whose channel is implied by the source system.
IMPLIED_CHANNEL: dict[str, str] = {
    "pos_sales": "store",
    "email_events": "email",
    "sms_events": "sms",
}
# Columns added to the contract's unified tables (allowed: "ingestion may add columns").
EXTRA_UNIFIED_COLUMNS: dict[str, tuple[str, ...]] = {"purchases": ("store_id",)}
# A purchase row without a return flag is a sale: downstream filters use ``NOT is_return``,
# which would silently drop rows whose flag is NULL.
UNIFIED_DEFAULTS: dict[tuple[str, str], str] = {("purchases", "is_return"): "false"}


def _null_safe_equal(columns: Sequence[str], left: str, right: str) -> str:
    return " AND ".join(
        f"{left}.{sql_identifier(c)} IS NOT DISTINCT FROM {right}.{sql_identifier(c)}"
        for c in columns
    )


def _near_key_sql(feed: Feed, column: str, alias: str) -> str:
    """A value to compare for near duplicates: identifiers in a cheap normal form.

    Two exports spell one identifier differently (case, spaces, ``07911 123456`` vs
    ``+44 7911 123456``); comparing emails lower-cased, phones by their last nine digits and
    other ids without case or separators catches that without the full normalisers, and the
    amount and the one-minute window keep false matches away.
    """
    value = f"{alias}.{sql_identifier(column)}"
    id_type = feed.id_columns.get(column)
    if id_type == "email":
        return f"lower({value})"
    if id_type == "phone":
        return f"nullif(right(regexp_replace({value}, '[^0-9]', '', 'g'), 9), '')"
    if id_type is not None:
        return f"nullif(lower(regexp_replace({value}, '[\\s./@-]', '', 'g')), '')"
    return value


def near_duplicate_lines_sql(feed: Feed) -> str:
    """SELECT ``_seq`` of the ``_fresh`` rows that repeat an event under another key.

    Such a row has the same values in ``feed.near_duplicate_columns`` (identifiers compared in
    a normal form, nulls equal, at least one identifier set) and a time within
    ``feed.near_duplicate_seconds`` of an accepted row, or of an earlier row of this batch
    (``_seq`` orders the batch by file, then line). Accepted rows are read only inside the
    batch's own time span (plus the tolerance), which keeps the check cheap on a large staging
    table when a new month arrives.
    """
    key, time_column = sql_identifier(feed.key), sql_identifier(feed.time_column)
    compared = feed.near_duplicate_columns
    names = [sql_identifier(f"_n{i}") for i in range(len(compared))]
    identifiers = [n for n, c in zip(names, compared, strict=True) if c in feed.id_columns]
    tolerance = f"INTERVAL {int(feed.near_duplicate_seconds)} SECOND"

    def keyed(alias: str) -> str:
        return ", ".join(
            f"{_near_key_sql(feed, c, alias)} AS {n}" for c, n in zip(compared, names, strict=True)
        )

    equal = " AND ".join(f"f.{n} IS NOT DISTINCT FROM o.{n}" for n in names)
    # Rows without any identifier never match (and would collide in the join's hash table).
    has_identifier = f"coalesce({', '.join(identifiers) or 'NULL'}) IS NOT NULL"
    return f"""
        WITH span AS (SELECT min({time_column}) - {tolerance} AS lo,
                             max({time_column}) + {tolerance} AS hi FROM _fresh),
        mine AS (SELECT * FROM (
                     SELECT {keyed("x")}, x.{time_column}, x.{key}, x._seq FROM _fresh x)
                 WHERE {has_identifier}),
        others AS (
            SELECT * FROM (
                SELECT {keyed("s")}, s.{time_column}, s.{key}, NULL::BIGINT AS _seq
                FROM raw_{feed.name} s, span WHERE s.{time_column} BETWEEN span.lo AND span.hi)
            WHERE {has_identifier}
            UNION ALL SELECT * FROM mine)
        SELECT DISTINCT f._seq FROM mine f JOIN others o
            ON {equal}
           AND o.{key} <> f.{key}
           AND o.{time_column} BETWEEN f.{time_column} - {tolerance}
                                   AND f.{time_column} + {tolerance}
           AND (o._seq IS NULL OR o._seq < f._seq)"""


def _column_sql_type(table: str, column: str) -> str:
    for feed in FEEDS.values():
        if feed.target_table == table and column in feed.columns:
            return SQL_TYPES[feed.columns[column].type]
    return "VARCHAR"


def unified_select(feed: Feed) -> str:
    """SELECT of one feed's staging rows in the shape of its unified table, with customer_id."""
    table = feed.target_table
    joins, customer = record_customer_sql(feed.name, "s")
    expressions = []
    for column in UNIFIED_TABLES[table] + EXTRA_UNIFIED_COLUMNS.get(table, ()):
        if column == "customer_id":
            value = customer
        elif column == "occurred_at":
            value = f"s.{sql_identifier(feed.time_column)}"
        elif column == "source_feed":
            value = sql_string(feed.name)
        elif column == "source_id":
            value = f"s.{sql_identifier(feed.key)}"
        elif column == "attributes" and feed.keeps_extra_columns:
            value = "s._attributes"
        elif column == "channel" and feed.name in IMPLIED_CHANNEL:
            value = sql_string(IMPLIED_CHANNEL[feed.name])
        elif column in feed.columns:
            value = f"s.{sql_identifier(column)}"
            if (table, column) in UNIFIED_DEFAULTS:
                value = f"coalesce({value}, {UNIFIED_DEFAULTS[table, column]})"
        else:
            value = f"CAST(NULL AS {_column_sql_type(table, column)})"
        expressions.append(f"{value} AS {sql_identifier(column)}")
    return f"SELECT {', '.join(expressions)} FROM raw_{feed.name} s {joins}"


def build_unified_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild every event table from the staging tables (idempotent by construction).

    Each row's ``customer_id`` comes from its raw identifiers (``_raw_customers``, see
    :func:`features.identity.record_customer_sql`).
    """
    create_raw_customers(con)
    targets: dict[str, list[Feed]] = {}
    for feed in FEEDS.values():
        targets.setdefault(feed.target_table, []).append(feed)
    for table, feeds in targets.items():
        union = "\nUNION ALL\n".join(unified_select(feed) for feed in feeds)
        con.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM ({union}) "
            "ORDER BY occurred_at, source_feed, source_id"
        )
    con.execute("DROP TABLE _raw_customers")


def update_category_codes(
    con: duckdb.DuckDBPyConnection, attributes: Sequence[CrmAttribute]
) -> int:
    """Give every new value of a categorical CRM attribute the next integer code; return how many.

    Codes are only ever appended (``crm_category_codes``), so a value keeps its code across
    runs and a model trained last month reads today's features the same way. Values are
    trimmed and lower-cased; new values of one run are numbered in text order.
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS crm_category_codes (attribute VARCHAR, value VARCHAR, "
        "code BIGINT)"
    )
    tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "crm_attributes" not in tables:
        return 0
    added = 0
    for attribute in attributes:
        if attribute.type != "categorical":
            continue
        path = sql_string("$." + _json_key(attribute.name))
        added += int(
            con.execute(
                f"""
            INSERT INTO crm_category_codes
            SELECT ?, value, (SELECT coalesce(max(code), -1) FROM crm_category_codes
                              WHERE attribute = ?) + row_number() OVER (ORDER BY value)
            FROM (SELECT DISTINCT lower(nullif(trim(json_extract_string(attributes, {path})), ''))
                      AS value FROM crm_attributes) v
            WHERE value IS NOT NULL AND value NOT IN (
                SELECT value FROM crm_category_codes WHERE attribute = ?)""",
                [attribute.name] * 3,
            ).fetchall()[0][0]
        )
    return added


# ---- the ingest command ---------------------------------------------------------------------
def is_empty_file(path: Path) -> bool:
    """No bytes, or only blanks: nothing to load, and no header to check either."""
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


@dataclass(frozen=True)
class NewFile:
    """A file to ingest: where it is, its name in the report, its digest and its columns."""

    path: Path
    name: str  # relative to the source folder, as stored in ``_file`` and the quarantine
    sha256: str
    columns: list[str]


_SEQ_FILE_SHIFT = 1 << 32  # ``_seq`` = file index * 2**32 + line: batch order, file by file


def _renumber_around_reader_rejects(
    con: duckdb.DuckDBPyConnection, rows: pa.Table, index: int
) -> pa.Table:
    """After a CSV scan: ``_rejected`` from the reader's reject table, and the file's ``rows``
    renumbered to their data lines when the reader skipped some."""
    try:
        n_rejected = _rejected_from_reader(con, header_lines=1, kind="CSV")
    finally:
        _drop_rejects(con)
    if not n_rejected:
        return rows
    con.register("_file_rows", rows)
    try:
        return con.sql(f"""
            SELECT r.* REPLACE (n._line AS _line, {index * _SEQ_FILE_SHIFT} + n._line AS _seq)
            FROM _file_rows r JOIN ({_line_numbers_sql(str(rows.num_rows))}) n
                 ON r._line = n.ordinality
            ORDER BY n._line""").to_arrow_table()
    finally:
        con.unregister("_file_rows")


def _validate_file(
    con: duckdb.DuckDBPyConnection, feed: Feed, new_file: NewFile, index: int, now: datetime
) -> list[pa.Table]:
    """Validate one file into rows of the batch table ``_batch``, as Arrow tables.

    One statement reads, checks and types every row, keeping the raw values (as JSON) of
    failing rows only; lines the reader could not split are added with their reason.
    Duplicates are decided later, for the whole batch. ``con`` is a cursor of this file's own:
    reading a CSV file with line numbers runs on one thread, so :func:`_validate_files` runs
    files side by side, and only the typed result goes back to the connection that writes.
    """
    import duckdb

    source = load_file(con, new_file.path, feed, new_file.columns)
    names = [*feed.columns, *(["_attributes"] if feed.keeps_extra_columns else [])]
    plain = ", ".join(sql_identifier(name) for name in names)
    try:
        rows = con.sql(f"""
            SELECT {index}::BIGINT AS _file_index, _line::BIGINT AS _line,
                   ({index * _SEQ_FILE_SHIFT} + _line)::BIGINT AS _seq, {plain}, _reason,
                   CASE WHEN _reason <> '' THEN {source.raw_json} END AS _raw
            FROM ({validation_sql(feed, now, keep=("_raw_row",))})""").to_arrow_table()
    except duckdb.Error as error:
        if source.rejects_pending:
            _drop_rejects(con)
        # Validation itself never fails on a value: an error here is the file's bytes.
        kind = new_file.path.suffix.lower()[1:]
        raise NotAFeedError(f"{new_file.path}: unreadable as {kind}: {error}") from error
    if source.rejects_pending:
        rows = _renumber_around_reader_rejects(con, rows, index)
    nulls = ", ".join(f"NULL::{SQL_TYPES[column.type]}" for column in feed.columns.values()) + (
        ", NULL::VARCHAR" if feed.keeps_extra_columns else ""
    )
    rejected = con.sql(f"""
        SELECT {index}::BIGINT, _line::BIGINT, ({index * _SEQ_FILE_SHIFT} + _line)::BIGINT,
               {nulls}, _reason::VARCHAR, _raw::VARCHAR
        FROM _rejected""").to_arrow_table()
    con.execute("DROP VIEW IF EXISTS _src")
    for table in ("_read", "_rejected"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return [rows, rejected] if rejected.num_rows else [rows]


def _validate_files(
    con: duckdb.DuckDBPyConnection, feed: Feed, new_files: Sequence[NewFile], now: datetime
) -> None:
    """Validate ``new_files`` into ``_batch``, as many files at a time as DuckDB has threads.

    Each file is validated on a cursor of its own (same database, own temp objects) in a
    worker thread; DuckDB releases the GIL while it works, so two files use two cores. The
    rows are appended to ``_batch`` on ``con``, inside its transaction, in file order.
    """
    from concurrent.futures import ThreadPoolExecutor
    from queue import SimpleQueue

    workers = max(1, min(len(new_files), _count(con, "SELECT current_setting('threads')")))
    time_zone = sql_string(str(con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0]))
    # Cursors are opened here: ``con`` refuses calls from other threads while it is busy.
    cursors: SimpleQueue[duckdb.DuckDBPyConnection] = SimpleQueue()
    opened = [con.cursor() for _ in range(workers)]
    for cursor in opened:
        cursor.execute(f"SET TimeZone = {time_zone}")
        cursors.put(cursor)

    def validate(index: int) -> list[pa.Table]:
        cursor = cursors.get()
        try:
            return _validate_file(cursor, feed, new_files[index], index, now)
        finally:
            cursors.put(cursor)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(validate, index) for index in range(len(new_files))]
            try:
                for future in futures:
                    for part in future.result():
                        con.register("_file_rows", part)
                        con.execute("INSERT INTO _batch SELECT * FROM _file_rows")
                        con.unregister("_file_rows")
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        for cursor in opened:
            cursor.close()


def ingest_feed(
    con: duckdb.DuckDBPyConnection, feed: Feed, new_files: Sequence[NewFile], now: datetime
) -> list[FileCounts]:
    """Validate the new files of one feed and commit them together in one transaction.

    Each file is read and validated in one vectorised statement into the batch; duplicates,
    staging and the bookkeeping then run once for the whole batch, in set-based SQL: the fixed
    costs of a statement and of a commit are paid per feed, not per file. A valid row is
    accepted unless its key is already staged, or appeared on an earlier line of the batch
    (earlier file, or earlier line of the same file); those are counted as duplicates of the
    file they are in.
    """
    stamp = now.astimezone(UTC).replace(tzinfo=None)
    names = [*feed.columns, *(["_attributes"] if feed.keeps_extra_columns else [])]
    typed = ", ".join(
        f"{sql_identifier(name)} {SQL_TYPES[column.type]}" for name, column in feed.columns.items()
    )
    if feed.keeps_extra_columns:
        typed += ", _attributes VARCHAR"
    keys = ", ".join(sql_identifier(name) for name in feed.unique_columns)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _batch (_file_index BIGINT, _line BIGINT, _seq BIGINT, "
            f"{typed}, _reason VARCHAR, _raw VARCHAR)"
        )
        _validate_files(con, feed, new_files, now)
        quarantine_erased(con, feed)  # rows of erased persons: quarantined, no content
        # Rows left out as duplicates: a key repeated in the batch after its first occurrence
        # (found with a hash aggregate: repeats are rare), and keys staged already.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _dropped AS
            SELECT _seq FROM (
                SELECT v._seq, {", ".join(f"v.{sql_identifier(c)}" for c in feed.unique_columns)}
                FROM _batch v SEMI JOIN (
                    SELECT {keys} FROM _batch WHERE _reason = '' GROUP BY ALL
                    HAVING count(*) > 1) r
                ON {_null_safe_equal(feed.unique_columns, "v", "r")}
                WHERE v._reason = '')
            QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _seq) > 1""")
        if _count(con, f"SELECT count(*) FROM (SELECT 1 FROM raw_{feed.name} LIMIT 1)"):
            con.execute(f"""
                INSERT INTO _dropped
                SELECT _seq FROM _batch c WHERE _reason = '' AND EXISTS (
                    SELECT 1 FROM raw_{feed.name} s
                    WHERE {_null_safe_equal(feed.unique_columns, "c", "s")})""")
        con.execute("""
            CREATE OR REPLACE TEMP VIEW _fresh AS
            SELECT * FROM _batch WHERE _reason = '' AND _seq NOT IN (SELECT _seq FROM _dropped)""")
        con.execute("CREATE OR REPLACE TEMP TABLE _near (_seq BIGINT)")
        if feed.near_duplicate_columns:
            con.execute(f"INSERT INTO _near {near_duplicate_lines_sql(feed)}")
        columns = ", ".join(sql_identifier(name) for name in names)
        file_names = "[" + ", ".join(sql_string(new_file.name) for new_file in new_files) + "]"
        con.execute(
            f"""
            INSERT INTO raw_{feed.name}
            SELECT {columns}, {file_names}[_file_index + 1], _line, ?::TIMESTAMP
            FROM _fresh WHERE _seq NOT IN (SELECT _seq FROM _near)""",
            [stamp],
        )
        counts = [FileCounts(feed=feed.name, file=new_file.name) for new_file in new_files]
        per_file = con.execute(f"""
            SELECT _file_index, count(*), count(*) FILTER (WHERE bad),
                   count(*) FILTER (WHERE NOT bad AND dropped), count(*) FILTER (WHERE near),
                   count(*) FILTER (WHERE _reason = '{ERASED_REASON}')
            FROM (SELECT _file_index, _reason, _reason <> '' AS bad,
                         _seq IN (SELECT _seq FROM _dropped) AS dropped,
                         _seq IN (SELECT _seq FROM _near) AS near
                  FROM _batch)
            GROUP BY _file_index""").fetchall()
        for index, read, quarantined, duplicates, near, erased in per_file:
            file_counts = counts[index]
            file_counts.read, file_counts.quarantined = int(read), int(quarantined)
            file_counts.duplicates, file_counts.near_duplicates = int(duplicates), int(near)
            file_counts.accepted = int(read - quarantined - duplicates - near)
            file_counts.erased = int(erased)
        con.execute(
            f"""
            INSERT INTO quarantine
            SELECT ?, {file_names}[_file_index + 1], _line, _reason, _raw, ?::TIMESTAMP
            FROM _batch WHERE _reason <> '' ORDER BY _file_index, _line""",
            [feed.name, stamp],
        )
        con.executemany(
            "INSERT INTO ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    feed.name,
                    new_file.name,
                    new_file.sha256,
                    file_counts.read,
                    file_counts.accepted,
                    file_counts.quarantined,
                    file_counts.duplicates,
                    stamp,
                    file_counts.near_duplicates,
                ]
                for new_file, file_counts in zip(new_files, counts, strict=True)
            ],
        )
        con.execute("DROP VIEW _fresh")
        for table in ("_batch", "_dropped", "_near"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return counts


def limit_memory(con: duckdb.DuckDBPyConnection, memory_limit: str | None) -> None:
    """Bound DuckDB's memory (``features.warehouse_memory_limit``); past it, it spills to disk.

    Without a limit DuckDB keeps up to 80 % of the RAM: on a large population the feature
    query's hash tables alone reached several GB. The spill folder is DuckDB's default,
    ``<warehouse>.tmp`` beside the warehouse file, removed when the connection closes.
    """
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_string(memory_limit)}")


def connect_warehouse(path: Path, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open (or create) the warehouse with UTC as the session zone and every table present."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    limit_memory(con, memory_limit)
    # Naive timestamps in the feeds are UTC; TIMESTAMPTZ casts read them in the session zone.
    con.execute("SET TimeZone = 'UTC'")
    con.execute(WAREHOUSE_DDL)
    for feed in FEEDS.values():
        con.execute(staging_ddl(feed))
    return con


def _state(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = con.execute("SELECT value FROM ingest_state WHERE key = ?", [key]).fetchall()
    return str(rows[0][0]) if rows else None


def _set_state(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?)", [key, value])


def _unified_tables_present(con: duckdb.DuckDBPyConnection) -> bool:
    present = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
        ).fetchall()
    }
    return all(table in present for table in UNIFIED_TABLES)


def ingest(
    settings: Settings,
    source_dir: Path | None = None,
    progress: bool = True,
    now: datetime | None = None,
) -> IngestReport:
    """Ingest every new file of every feed, then resolve identities and rebuild unified tables.

    Args:
        settings: the project settings (warehouse path, phone region).
        source_dir: folder of feed folders; ``settings.raw_dir`` by default.
        progress: show a progress bar over files.
        now: the ingest time (``not_future`` checks and timestamps); the clock by default.

    Raises:
        NotAFeedError: a new file lacks a required column of its feed or cannot be read. Every
            new file's columns are checked before anything is written, so nothing is ingested.
        FileNotFoundError: ``source_dir`` does not exist.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    source = Path(source_dir) if source_dir is not None else Path(settings.raw_dir)
    files, unknown, ignored = discover_files(source)
    report = IngestReport(
        warehouse_path=Path(settings.warehouse_path),
        source_dir=source,
        unknown_folders=unknown,
        ignored_files=ignored,
        feeds={name: FeedCounts() for name in files},
    )
    con = connect_warehouse(Path(settings.warehouse_path), settings.features.warehouse_memory_limit)
    try:
        known = {row[0] for row in con.execute("SELECT sha256 FROM ingested_files").fetchall()}
        todo: dict[str, list[NewFile]] = {}
        queued: set[str] = set()
        for feed_name, paths in files.items():
            for path in paths:
                digest = file_sha256(path)
                if digest in known or digest in queued:
                    report.feeds[feed_name].files_skipped += 1
                    continue
                if is_empty_file(path):  # an export of a day without data: nothing to load
                    report.empty_files.append(path.relative_to(source).as_posix())
                    continue
                # Fail before writing anything when a file is not its folder's feed.
                columns = file_columns(con, path)
                map_columns(columns, FEEDS[feed_name], path)
                queued.add(digest)
                todo.setdefault(feed_name, []).append(
                    NewFile(path, path.relative_to(source).as_posix(), digest, columns)
                )
        for feed_name, new_files in tqdm(
            todo.items(), desc="ingest", unit="feed", disable=not progress
        ):
            for counts in ingest_feed(con, FEEDS[feed_name], new_files, now):
                report.files.append(counts)
                report.feeds[feed_name].add(counts)

        n_files = _count(con, "SELECT count(*) FROM ingested_files")
        if _state(con, "identity_files") != str(n_files) or not _unified_tables_present(con):
            identity_started, identity_cpu_started = time.perf_counter(), time.process_time()
            con.execute("BEGIN TRANSACTION")
            try:
                stats = resolve_identities(con, settings.identity.default_phone_region, now)
                summary = IdentitySummary(**stats)
                _set_state(con, "identity_files", str(n_files))
                _set_state(con, "identity_summary", summary.model_dump_json())
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            report.identity_rebuilt = True
            report.identity_seconds = round(time.perf_counter() - identity_started, 3)
            report.identity_cpu_seconds = round(time.process_time() - identity_cpu_started, 3)
        update_category_codes(con, settings.crm.attributes)
        stored = _state(con, "identity_summary")
        if stored:
            report.identity = IdentitySummary.model_validate_json(stored)
    finally:
        con.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report
