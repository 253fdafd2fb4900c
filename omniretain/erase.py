"""The right to be forgotten: ``omniretain erase --customer ID`` removes a customer everywhere.

A customer is a resolved id plus every id merged into it, every identifier (email address, phone
number, loyalty card, device, handle) the identity graph links to them, in raw and normalised form,
and every source record they own. All of it goes from:

- the warehouse (DuckDB): the raw staging tables, the unified tables, the quarantine (matched on
  the identifiers in the raw line), the identity graph and its normalisation cache;
- the raw feed files under ``state/raw`` (lines naming one of the identifiers or records; the
  ingest ledger gets the new file hashes, so a re-ingest does not load the rest twice);
- every parquet file of the state with a ``customer_id`` column: feature snapshots (Feast's
  offline source), the real-time events file, the drift reference, decision and feedback logs;
- every CSV with a ``customer_id`` column (campaign exports);
- SQLite stores: the contact store (contacts, consent changes) and Feast's online store (SQLite
  rows by entity key, or the Redis hashes when Redis is the online store).

The person's normalised identifiers (and customer ids) go on the suppression list as keyed
hashes, in the same warehouse transaction as the deletion (:mod:`features.suppression`): when
their rows come back in a feed (the next daily export, an old file ingested again), ingest
quarantines them with the reason ``erased`` and without their content, and the customer is
never re-created.

The erasure is recorded in ``state/audit/erasures.jsonl``: when, who asked, and what was removed
where, as counts only (no id, no contact address). Running it again removes nothing more and
says so: it is idempotent. The simulator's ground truth (``state/truth``) is not product data and
is left alone; MLflow holds models and metrics, not rows.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import re
import sqlite3
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omniretain.settings import Settings

AUDIT_FILE = Path("audit") / "erasures.jsonl"
CUSTOMER_COLUMN = "customer_id"
SKIPPED_FOLDERS = frozenset({"truth", "mlflow", "audit"})  # not customer data (see the docstring)
TOKEN_SEPARATORS = re.compile(r'[,;\t|"{}\[\]\r\n]')


class EraseError(ValueError):
    """An erasure that cannot run (e.g. an empty customer id)."""


@dataclass
class Person:
    """Everything that identifies one customer: ids, identifiers (raw and normalised), records."""

    customer_ids: set[str]
    identifiers: set[tuple[str, str]] = field(default_factory=set)  # (id_type, normalised)
    raw_values: set[str] = field(default_factory=set)
    records: set[tuple[str, str]] = field(default_factory=set)  # (source_feed, source_id)

    def tokens(self) -> set[str]:
        """Strings whose presence as a field of a raw line marks the line as this person's."""
        values = {value for _, value in self.identifiers} | self.raw_values
        values |= {source_id for _, source_id in self.records}
        return {value.strip().lower() for value in values if value and value.strip()}


@dataclass
class EraseReport:
    """What was removed where (counts only): printed, and written to the audit log."""

    erasure_id: str
    erased_at: str
    requested_by: str
    removed: Counter[str] = field(default_factory=Counter)
    suppressed: int = 0  # identifiers newly on the suppression list (hashes)

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def audit_record(self) -> dict[str, object]:
        return {
            "erasure_id": self.erasure_id,
            "erased_at": self.erased_at,
            "requested_by": self.requested_by,
            "removed": dict(sorted(self.removed.items())),
            "total": self.total,
            "suppressed_identifiers": self.suppressed,
        }


# ---- who is it ---------------------------------------------------------------------------------
def _tables(con: duckdb.DuckDBPyConnection, views: bool = True) -> dict[str, list[str]]:
    """Columns of every table of the warehouse, and of every view unless ``views`` is False
    (``record_customers`` is a view over the event tables: read from, never deleted from)."""
    rows = con.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = 'main' AND (? OR t.table_type <> 'VIEW') "
        "ORDER BY c.table_name, c.ordinal_position",
        [views],
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def _merged_ids(con: duckdb.DuckDBPyConnection, customer_id: str, tables: dict) -> set[str]:
    """The id and every id merged into it or that it was merged into, transitively."""
    ids = {customer_id}
    if "customer_merges" not in tables:
        return ids
    merges = con.execute("SELECT merged_customer_id, into_customer_id FROM customer_merges")
    pairs = merges.fetchall()
    while True:
        grown = ids | {a for a, b in pairs if b in ids} | {b for a, b in pairs if a in ids}
        if grown == ids:
            return ids
        ids = grown


def find_person(con: duckdb.DuckDBPyConnection, customer_id: str) -> Person:
    """The ids, identifiers, raw values and records of ``customer_id`` in the warehouse."""
    from features.contract import FEEDS

    tables = _tables(con)
    person = Person(customer_ids=_merged_ids(con, customer_id, tables))
    ids = sorted(person.customer_ids)
    if "identity_links" in tables:
        person.identifiers = set(
            con.execute(
                "SELECT id_type, id_value FROM identity_links WHERE list_contains(?, customer_id)",
                [ids],
            ).fetchall()
        )
    if "record_customers" in tables:
        person.records = set(
            con.execute(
                "SELECT source_feed, source_id FROM record_customers "
                "WHERE list_contains(?, customer_id)",
                [ids],
            ).fetchall()
        )
    if "identifier_normalisation" in tables and person.identifiers:
        con.register("_erase_identifiers", pa.table(_pairs(person.identifiers)))
        person.raw_values = {
            raw
            for (raw,) in con.execute(
                "SELECT n.raw_value FROM identifier_normalisation n JOIN _erase_identifiers i "
                "ON n.id_type = i.id_type AND n.id_value = i.id_value"
            ).fetchall()
        }
    for feed in FEEDS.values():  # the raw values on the person's own records, whatever they are
        table = f"raw_{feed.name}"
        keys = [source_id for source_feed, source_id in person.records if source_feed == feed.name]
        if table not in tables or not keys or not feed.id_columns:
            continue
        columns = ", ".join(f'"{column}"' for column in feed.id_columns)
        for row in con.execute(
            f'SELECT {columns} FROM {table} WHERE list_contains(?, CAST("{feed.key}" AS VARCHAR))',
            [keys],
        ).fetchall():
            person.raw_values |= {str(value) for value in row if value is not None}
    return person


def _pairs(identifiers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    ordered = sorted(identifiers)
    return {"id_type": [t for t, _ in ordered], "id_value": [v for _, v in ordered]}


# ---- the warehouse -----------------------------------------------------------------------------
def suppressed_identifiers(person: Person) -> set[tuple[str, str]]:
    """What goes on the suppression list: identifiers, customer ids, person-level record keys."""
    from features.suppression import CUSTOMER_ID_TYPE, PERSON_KEY_TYPES

    pairs = set(person.identifiers) | {(CUSTOMER_ID_TYPE, i) for i in person.customer_ids}
    for feed_name, (_, id_type) in PERSON_KEY_TYPES.items():
        pairs |= {(id_type, source_id) for f, source_id in person.records if f == feed_name}
    return pairs


def erase_warehouse(
    con: duckdb.DuckDBPyConnection, person: Person, report: EraseReport, phone_region: str = "GB"
) -> None:
    """Delete the person's rows from every warehouse table and suppress their identifiers,
    in one transaction."""
    from features.contract import FEEDS
    from features.suppression import retire_customer_ids, suppress

    tables = _tables(con, views=False)
    ids = sorted(person.customer_ids)
    tokens = sorted(person.tokens())
    con.execute("BEGIN TRANSACTION")
    try:
        erased_at = datetime.fromisoformat(report.erased_at)
        report.suppressed = suppress(con, suppressed_identifiers(person), phone_region, erased_at)
        retire_customer_ids(con, person.customer_ids)
        for feed in FEEDS.values():
            table = f"raw_{feed.name}"
            keys = [s for f, s in person.records if f == feed.name]
            if table in tables and keys:
                report.removed[f"warehouse.{table}"] += _delete(
                    con, table, f'list_contains(?, CAST("{feed.key}" AS VARCHAR))', [keys]
                )
        if "quarantine" in tables and tokens:
            report.removed["warehouse.quarantine"] += _delete(
                con,
                "quarantine",
                "list_has_any(?, list_transform(regexp_split_to_array(lower(raw), "
                "'[,;\\t|\"{}\\[\\]\\r\\n]'), lambda x: trim(x)))",
                [tokens],
            )
        if "identifier_normalisation" in tables and person.identifiers:
            con.register("_erase_identifiers", pa.table(_pairs(person.identifiers)))
            report.removed["warehouse.identifier_normalisation"] += _delete(
                con,
                "identifier_normalisation",
                "(id_type, id_value) IN (SELECT (id_type, id_value) FROM _erase_identifiers)"
                " OR list_contains(?, raw_value)",
                [sorted(person.raw_values)],
            )
        if "customer_merges" in tables:
            report.removed["warehouse.customer_merges"] += _delete(
                con,
                "customer_merges",
                "list_contains(?, merged_customer_id) OR list_contains(?, into_customer_id)",
                [ids, ids],
            )
        for table, columns in tables.items():
            if CUSTOMER_COLUMN in columns:
                report.removed[f"warehouse.{table}"] += _delete(
                    con, table, "list_contains(?, customer_id)", [ids]
                )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _delete(con: duckdb.DuckDBPyConnection, table: str, where: str, parameters: list) -> int:
    # fetchall, not fetchone: DuckDB 2 keeps a result open until a fetch comes back empty, and
    # the next register() on the connection then fails ("unfinished result").
    [(count,)] = con.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', parameters).fetchall()
    if count:
        con.execute(f'DELETE FROM "{table}" WHERE {where}', parameters).fetchall()
    return int(count)


# ---- files ---------------------------------------------------------------------------------------
def _replace_atomically(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".erase.tmp")
    with os.fdopen(handle, "wb") as out:
        out.write(content)
    os.replace(temporary, path)


def line_names_person(line: str, tokens: set[str]) -> bool:
    """True when one field of a raw line (CSV or JSON lines) is one of the person's tokens."""
    return any(part.strip().lower() in tokens for part in TOKEN_SEPARATORS.split(line))


def scrub_raw_file(path: Path, tokens: set[str]) -> int:
    """Drop the lines of a raw feed file that name the person; the bytes of the rest unchanged."""
    content = path.read_bytes()
    lines = content.splitlines(keepends=True)
    kept = [
        line
        for line in lines
        if not line_names_person(line.decode("utf-8", errors="replace"), tokens)
    ]
    removed = len(lines) - len(kept)
    if removed:
        _replace_atomically(path, b"".join(kept))
    return removed


def scrub_parquet(path: Path, ids: set[str]) -> int:
    schema = pq.read_schema(path)
    if CUSTOMER_COLUMN not in schema.names:
        return 0
    table = pq.read_table(path)
    mask = pc.is_in(table[CUSTOMER_COLUMN].cast(pa.string()), value_set=pa.array(sorted(ids)))
    removed = int(pc.sum(mask).as_py() or 0)
    if removed:
        buffer = io.BytesIO()
        pq.write_table(table.filter(pc.invert(mask)), buffer)
        _replace_atomically(path, buffer.getvalue())
    return removed


def scrub_csv(path: Path, ids: set[str]) -> int:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or CUSTOMER_COLUMN not in rows[0]:
        return 0
    column = rows[0].index(CUSTOMER_COLUMN)
    kept = [rows[0]] + [
        row for row in rows[1:] if not (len(row) > column and row[column].strip() in ids)
    ]
    removed = len(rows) - len(kept)
    if removed:
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\n").writerows(kept)
        _replace_atomically(path, out.getvalue().encode("utf-8", errors="surrogateescape"))
    return removed


def _owned(value: object, ids: set[str]) -> bool:
    return isinstance(value, dict) and str(value.get(CUSTOMER_COLUMN, "")).strip() in ids


def scrub_json(path: Path, ids: set[str]) -> int:
    """A JSON answer about the person is deleted; JSON lines about them are dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not _owned(_json_or_none(line), ids)]
        if len(kept) < len(lines):
            _replace_atomically(path, "".join(kept).encode("utf-8"))
        return len(lines) - len(kept)
    document = _json_or_none(text)
    if _owned(document, ids):
        path.unlink()
        return 1
    if isinstance(document, list) and any(_owned(item, ids) for item in document):
        kept_items = [item for item in document if not _owned(item, ids)]
        _replace_atomically(path, json.dumps(kept_items, indent=2).encode("utf-8"))
        return len(document) - len(kept_items)
    return 0


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def scrub_sqlite(path: Path, ids: set[str], entity_keys: list[bytes]) -> Counter[str]:
    """Rows of the person in a SQLite file: by ``customer_id``, or Feast's ``entity_key``."""
    removed: Counter[str] = Counter()
    connection = sqlite3.connect(path, timeout=30)
    connection.execute("PRAGMA secure_delete = ON")  # zero the freed pages: no trace in the file
    try:
        with connection:
            names = [
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            ]
            for name in names:
                columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')}
                if CUSTOMER_COLUMN in columns and ids:
                    marks = ",".join("?" * len(ids))
                    cursor = connection.execute(
                        f'DELETE FROM "{name}" WHERE customer_id IN ({marks})', sorted(ids)
                    )
                    removed[f"{path.name}.{name}"] += cursor.rowcount
                if "entity_key" in columns and entity_keys:
                    marks = ",".join("?" * len(entity_keys))
                    cursor = connection.execute(
                        f'DELETE FROM "{name}" WHERE entity_key IN ({marks})', entity_keys
                    )
                    removed[f"{path.name}.{name}"] += cursor.rowcount
        if removed:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # nor in the write-ahead log
    finally:
        connection.close()
    return removed


def is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def state_files(settings: Settings) -> Iterable[Path]:
    """Every file of the state that may hold customer rows (not truth, MLflow or the audit)."""
    root = Path(settings.state_dir)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] not in SKIPPED_FOLDERS:
            yield path


# ---- the online store ------------------------------------------------------------------------
def online_entity_keys(settings: Settings, ids: set[str]) -> tuple[list[bytes], object | None]:
    """Feast's serialized entity keys of the ids, and the online target (None: no Feast repo)."""
    if not (settings.feast_dir / "feature_store.yaml").exists():
        return [], None
    from features.contract import ENTITY_KEY
    from features.online_writer import entity_key_encoder
    from features.store import online_target

    target = online_target(settings)
    encode = entity_key_encoder(ENTITY_KEY, target.entity_key_serialization_version)
    return [encode(customer_id) for customer_id in sorted(ids)], target


def erase_redis(target: object, entity_keys: list[bytes]) -> int:
    from features.online_writer import redis_client

    client = redis_client(target.redis_connection_string)  # type: ignore[attr-defined]
    try:
        suffix = target.project.encode("utf8")  # type: ignore[attr-defined]
        return int(client.delete(*[key + suffix for key in entity_keys])) if entity_keys else 0
    finally:
        client.close()


# ---- the command ------------------------------------------------------------------------------
def erase_customer(
    settings: Settings, customer_id: str, requested_by: str | None = None
) -> EraseReport:
    """Remove ``customer_id`` (and all that identifies them) from every store; audit it.

    Raises:
        EraseError: for an empty customer id.
    """
    customer_id = customer_id.strip()
    if not customer_id:
        raise EraseError("--customer: give the resolved customer id to erase")
    report = EraseReport(
        erasure_id=uuid.uuid4().hex,
        erased_at=datetime.now(UTC).isoformat(timespec="seconds"),
        requested_by=requested_by or getpass.getuser(),
    )
    person = Person(customer_ids={customer_id})
    warehouse = settings.warehouse_path
    if warehouse.exists():
        with duckdb.connect(str(warehouse)) as con:
            person = find_person(con, customer_id)
            erase_warehouse(con, person, report, settings.identity.default_phone_region)
            con.execute("CHECKPOINT")
    tokens = person.tokens()
    entity_keys, target = online_entity_keys(settings, person.customer_ids)
    rewritten_raw: list[Path] = []
    for path in state_files(settings):
        if path.parent.parent == settings.raw_dir and tokens:
            count = scrub_raw_file(path, tokens)
            report.removed["raw_files.lines"] += count
            if count:
                rewritten_raw.append(path)
        elif path.suffix == ".parquet":
            report.removed[f"parquet.{path.parent.name}"] += scrub_parquet(
                path, person.customer_ids
            )
        elif path.suffix == ".csv":
            report.removed[f"csv.{path.parent.name}"] += scrub_csv(path, person.customer_ids)
        elif path.suffix in {".json", ".jsonl"}:
            report.removed[f"json.{path.parent.name}"] += scrub_json(path, person.customer_ids)
        elif path.suffix in {".db", ".sqlite"} and is_sqlite(path):
            report.removed.update(scrub_sqlite(path, person.customer_ids, entity_keys))
    if target is not None and getattr(target, "kind", None) == "redis":
        report.removed["redis.online_store"] += erase_redis(target, entity_keys)
    from serving.erased import add_erased

    add_erased(settings.state_dir, person.customer_ids)  # the service refuses them from now on
    if rewritten_raw and warehouse.exists():
        _update_ingest_ledger(settings, rewritten_raw)
    report.removed = Counter({name: count for name, count in report.removed.items() if count})
    write_audit(settings, report)
    return report


def _update_ingest_ledger(settings: Settings, paths: list[Path]) -> None:
    """The ledger knows raw files by hash: give it the scrubbed files' new hashes."""
    from features.ingest import file_sha256

    with duckdb.connect(str(settings.warehouse_path)) as con:
        if "ingested_files" not in _tables(con):
            return
        for path in paths:
            con.execute(
                "UPDATE ingested_files SET sha256 = ? WHERE file = ?",
                [file_sha256(path), path.relative_to(settings.raw_dir).as_posix()],
            )


def write_audit(settings: Settings, report: EraseReport) -> Path:
    """Append the erasure to the audit log: counts only, no personal data."""
    path = Path(settings.state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as audit:
        audit.write(json.dumps(report.audit_record()) + "\n")
    return path
