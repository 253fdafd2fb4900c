"""``omniretain erase``: after it, no store holds a trace of the customer (issue 8).

A small simulated retailer goes through the real ingest and feature build (warehouse, identity
graph, quarantine, raw files, features parquet, Feast SQLite online store); decisions, feedback,
a consent change, a campaign export and a demo answer are written with the product's own writers.
Before erasing, the test reads from the warehouse itself (its own SQL, not the erase module's)
every id merged into the customer, every identifier raw and normalised, every record key. After
erasing, it searches every DuckDB table, every parquet file, every SQLite file byte by byte and
every text file of the state for each of them. Then the original raw exports (copied aside before
the erasure) and a new day's export holding the person's rows under other spellings are
ingested again: the suppression list keeps every one of those rows out (quarantined as
``erased``, without content), the counts say how many, and the search still finds nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from omniretain.settings import Settings, load_settings


@pytest.fixture(scope="module")
def erase_state(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from features.build import build_features
    from features.ingest import ingest
    from omniretain.simulator import simulate

    settings = load_settings(state_dir=tmp_path_factory.mktemp("erase_state"))
    settings.ensure_dirs()
    simulate(settings, 40, 3, 11, progress=False)
    ingest(settings, progress=False)
    build_features(settings, progress=False)
    shutil.copytree(settings.raw_dir, exports_of(settings))  # the retailer's files, kept aside
    return settings


def exports_of(settings: Settings) -> Path:
    """A copy of the raw exports as they were before any erasure (outside the state)."""
    return settings.state_dir.parent / f"{settings.state_dir.name}_exports"


def busiest_customer(settings: Settings) -> str:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT customer_id FROM record_customers GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]


def identifiers_of(settings: Settings, customer_id: str) -> list[tuple[str, str]]:
    """The customer's normalised identifiers ``(id_type, value)``, from the warehouse."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT id_type, id_value FROM identity_links WHERE customer_id = ? ORDER BY 1, 2",
            [customer_id],
        ).fetchall()


def traces_of(settings: Settings, customer_id: str) -> set[str]:
    """Every string that identifies the customer, read straight from the warehouse."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        ids = {customer_id}
        merges = con.execute("SELECT merged_customer_id, into_customer_id FROM customer_merges")
        for merged, into in merges.fetchall():
            if into == customer_id or merged == customer_id:
                ids |= {merged, into}
        marks = ",".join("?" * len(ids))
        identifiers = con.execute(
            f"SELECT id_type, id_value FROM identity_links WHERE customer_id IN ({marks})",
            sorted(ids),
        ).fetchall()
        raw = con.execute(
            "SELECT n.raw_value FROM identifier_normalisation n JOIN identity_links l "
            f"USING (id_type, id_value) WHERE l.customer_id IN ({marks})",
            sorted(ids),
        ).fetchall()
        records = con.execute(
            f"SELECT source_id FROM record_customers WHERE customer_id IN ({marks})", sorted(ids)
        ).fetchall()
    traces = ids | {value for _, value in identifiers} | {value for (value,) in raw}
    traces |= {source_id for (source_id,) in records}
    assert any(kind == "email" for kind, _ in identifiers), "pick a customer with an email"
    return {trace.strip().lower() for trace in traces if trace and trace.strip()}


def write_serving_traces(settings: Settings, customer_id: str, other_id: str) -> None:
    """What serving and campaigns leave behind, written by their own code."""
    from monitoring.logs import DecisionLogger, DecisionRecord, FeedbackLogger, FeedbackRecord
    from serving.policy import ContactStore, contacts_path

    with DecisionLogger(settings) as decisions, FeedbackLogger(settings) as feedback:
        for who in (customer_id, other_id):
            record = DecisionRecord(
                customer_id=who,
                churn_probability=0.4,
                repurchase_probability=0.3,
                action="retention_discount",
                channel="email",
                churn_model_version="1",
                repurchase_model_version="1",
            )
            decisions.log(record)
            feedback.log(
                FeedbackRecord(decision_id=record.decision_id, outcome="sent", customer_id=who)
            )
    contacts = ContactStore(contacts_path(settings))
    now = datetime.now(UTC)
    for who in (customer_id, other_id):
        contacts.record_feedback(f"d-{who}", who, "retention_discount", "email", "sent", now)
        contacts.record_consent(who, "sms", False, now)
    campaign = settings.state_dir / "campaigns" / "winback-1"
    campaign.mkdir(parents=True)
    (campaign / "export.csv").write_text(
        f"customer_id,action,channel\n{customer_id},retention_discount,email\n"
        f"{other_id},free_shipping,app\n"
    )
    demo = settings.state_dir / "demo" / "recommendation.json"
    demo.parent.mkdir(parents=True)
    demo.write_text(json.dumps({"customer_id": customer_id, "risk_band": "high"}))


def token_hits(text: str, traces: set[str]) -> list[tuple[int, str]]:
    """Where the traces are in ``text`` as whole tokens (``C000000022`` not in ``CC000000022``).

    ``str.find`` per trace, then a look at the characters around: far faster than one regular
    expression alternating between a hundred traces, on megabytes of text.
    """
    hits = []
    for trace in sorted(traces):
        start = text.find(trace)
        while start != -1:
            end = start + len(trace)
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            if not (before.isascii() and before.isalnum()) and not (
                after.isascii() and after.isalnum()
            ):
                hits.append((start, trace))
            start = text.find(trace, start + 1)
    return hits


def find_traces(settings: Settings, traces: set[str]) -> list[str]:
    """Where any trace is still found: DuckDB tables, parquet rows, any other file's bytes."""
    found: list[str] = []
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall()]
        for table in tables:
            (text,) = con.execute(
                f'SELECT lower(string_agg(CAST(t AS VARCHAR), chr(10))) FROM "{table}" t'
            ).fetchone()
            found += [f"{table}: {hit}" for _, hit in token_hits(text or "", traces)]
    for path in sorted(Path(settings.state_dir).rglob("*")):
        relative = path.relative_to(settings.state_dir)
        if not path.is_file() or relative.parts[0] in {"truth", "mlflow"}:
            continue  # the simulator's ground truth; MLflow holds models, not rows
        if path.suffix == ".duckdb" or path.name.endswith(".wal"):
            continue  # searched above, through SQL
        if path.suffix == ".parquet":
            text = json.dumps(pq.read_table(path).to_pylist(), default=str).lower()
        else:
            text = path.read_bytes().decode("utf-8", errors="replace").lower()
        found += [f"{relative}: {hit}" for _, hit in token_hits(text, traces)]
    return found


def lines_naming(folder: Path, traces: set[str]) -> int:
    """Data lines of the feed files under ``folder`` naming one of the traces (whole tokens)."""
    count = 0
    for path in folder.rglob("*.csv"):
        text = path.read_text(errors="replace").lower()
        lines = {text.count("\n", 0, start) for start, _ in token_hits(text, traces)}
        count += len(lines - {0})  # not the header
    return count


@dataclass
class Erased:
    """The erasure of the module: who, what identified them, and the report."""

    customer_id: str
    other_id: str
    customers_before: int
    identifiers: list[tuple[str, str]]
    traces: set[str]
    report: object


@pytest.fixture(scope="module")
def erased(erase_state: Settings) -> Erased:
    from omniretain.erase import erase_customer

    customer_id = busiest_customer(erase_state)
    with duckdb.connect(str(erase_state.warehouse_path), read_only=True) as con:
        other_id = con.execute(
            "SELECT customer_id FROM customers WHERE customer_id <> ? ORDER BY 1 LIMIT 1",
            [customer_id],
        ).fetchone()[0]
        customers_before = con.execute("SELECT count(*) FROM customers").fetchone()[0]
    write_serving_traces(erase_state, customer_id, other_id)
    traces = traces_of(erase_state, customer_id)
    identifiers = identifiers_of(erase_state, customer_id)
    assert len(find_traces(erase_state, traces)) > 20  # the search does find them, before

    report = erase_customer(erase_state, customer_id, requested_by="dpo-ticket-17")
    return Erased(customer_id, other_id, customers_before, identifiers, traces, report)


def test_erase_leaves_no_trace_and_is_idempotent(erase_state: Settings, erased: Erased) -> None:
    from omniretain.erase import AUDIT_FILE, erase_customer

    customer_id, other_id, traces, report = (
        erased.customer_id,
        erased.other_id,
        erased.traces,
        erased.report,
    )
    customers_before = erased.customers_before

    assert find_traces(erase_state, traces) == []
    removed = report.removed
    assert removed["warehouse.customers"] == 1 and removed["raw_files.lines"] > 0
    assert removed["parquet.features"] > 0 and removed["contacts.sqlite.contacts"] == 1
    assert removed["contacts.sqlite.consent_changes"] == 1
    assert any(name.startswith("online.db.") for name in removed), removed
    with duckdb.connect(str(erase_state.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == customers_before - 1
        assert con.execute(
            "SELECT count(*) FROM identity_links WHERE customer_id = ?", [other_id]
        ).fetchone()[0]
    others = traces_of(erase_state, other_id)  # the others are untouched, everywhere
    assert len(find_traces(erase_state, {other_id.lower()})) > 5
    assert others

    again = erase_customer(erase_state, customer_id, requested_by="dpo-ticket-17")
    assert again.total == 0
    audit_lines = (erase_state.state_dir / AUDIT_FILE).read_text().splitlines()
    audits = [json.loads(line) for line in audit_lines]
    assert [a["total"] for a in audits] == [report.total, 0]
    assert audits[0]["requested_by"] == "dpo-ticket-17" and audits[0]["removed"]
    # every identifier and the customer id went on the suppression list, as hashes only
    assert audits[0]["suppressed_identifiers"] >= len(erased.identifiers) + 1
    assert audits[1]["suppressed_identifiers"] == 0
    audit_text = "\n".join(audit_lines).lower()
    assert not [t for t in traces if t in audit_text], "the audit log holds no personal data"
    from serving.erased import ErasedCustomers

    served_list = ErasedCustomers(erase_state.state_dir)  # the service refuses them (410)
    assert customer_id in served_list and other_id not in served_list


def test_a_rerun_of_ingest_after_erase_does_not_bring_the_customer_back(
    erase_state: Settings, erased: Erased
) -> None:
    from features.ingest import ingest

    report = ingest(erase_state, progress=False)
    assert sum(feed.files_ingested for feed in report.feeds.values()) == 0, report


def respelled(id_type: str, value: str) -> str:
    """Another spelling of a normalised identifier that identity resolution maps back to it."""
    if id_type == "email":
        return f"  {value.upper()} "
    if id_type == "phone" and value.startswith("+44"):
        national = "0" + value[3:]
        return f"{national[:5]} {national[5:]}"
    if id_type == "loyalty_card":
        return f"{value[:2].upper()}-{value[2:]}"
    return value.upper()


def write_new_day(folder: Path, identifiers: list[tuple[str, str]]) -> int:
    """A new day's POS export: the erased person's receipts (one per identifier, re-spelled, one
    of them with a bad amount), and a receipt of a new person who shares nothing with them.
    Returns how many rows are the erased person's."""
    path = folder / "pos_sales" / "pos_sales_2026-11-30.csv"
    path.parent.mkdir(parents=True)
    columns = {"email": 5, "phone": 4, "loyalty_card": 3}
    rows = []
    for number, (id_type, value) in enumerate(identifiers):
        if id_type in columns:
            fields = [f"NEWDAY-{number}", "S01", "2026-11-30T10:00:00", "", "", "", "25.0", "1"]
            fields[columns[id_type]] = respelled(id_type, value)
            rows.append(fields)
    assert rows, "the busiest customer has an email"
    rows[0][6] = "-5"  # a broken row of theirs: quarantined as erased, not with its content
    newcomer = ["NEWDAY-X", "S01", "2026-11-30T11:00:00", "", "", "newcomer@example.org", "9", "1"]
    header = "transaction_id,store_id,purchased_at,loyalty_card,phone,email,amount,items"
    lines = [header, *(",".join(fields) for fields in [*rows, newcomer])]
    path.write_text("\n".join(lines) + "\n")
    return len(rows)


def test_reingesting_old_files_and_a_new_day_keeps_the_erased_customer_out(
    erase_state: Settings, erased: Erased, tmp_path: Path
) -> None:
    """The suppression list: the original exports and a new day's file, ingested again."""
    from features.ingest import ingest

    exports = exports_of(erase_state)
    in_exports = lines_naming(exports, erased.traces)
    assert in_exports > 10  # the retailer's files still hold the person
    report = ingest(erase_state, source_dir=exports, progress=False)
    totals = report.totals()
    assert totals.files_ingested > 0 and totals.accepted == 0, totals  # the rest: duplicates
    assert totals.erased == in_exports, totals  # every row of theirs, counted

    new_day = tmp_path / "new_day"
    n_theirs = write_new_day(new_day, erased.identifiers)
    report = ingest(erase_state, source_dir=new_day, progress=False)
    counts = report.feeds["pos_sales"]
    assert (counts.read, counts.accepted, counts.erased) == (n_theirs + 1, 1, n_theirs)
    assert counts.quarantined == n_theirs  # the erased rows are quarantined, nothing else

    spellings = {respelled(t, v).strip().lower() for t, v in erased.identifiers}
    assert find_traces(erase_state, erased.traces | spellings) == []
    with duckdb.connect(str(erase_state.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT count(*), count(raw) FROM quarantine WHERE reason = 'erased'"
        ).fetchone()
        assert rows == (in_exports + n_theirs, 0)  # feed, file and line only: no content
        customers = con.execute("SELECT count(*) FROM customers").fetchone()[0]
        newcomer = con.execute(
            "SELECT customer_id FROM identity_links WHERE id_value = 'newcomer@example.org'"
        ).fetchall()
    assert customers == erased.customers_before  # one erased, one newcomer: not them again
    assert newcomer and newcomer[0][0] != erased.customer_id
    assert len(find_traces(erase_state, {erased.other_id.lower()})) > 5  # the others stay


def test_erase_removes_the_customer_from_the_redis_online_store(
    redis_connection_string: str,
) -> None:
    """Feast's Redis layout (entity key + project): the customer's hash goes, others stay."""
    from features.online_writer import OnlineTarget, entity_key_encoder, redis_client
    from omniretain.erase import erase_redis

    target = OnlineTarget(
        kind="redis",
        project="omniretain_erase_test",
        entity_key_serialization_version=3,
        redis_connection_string=redis_connection_string,
    )
    encode = entity_key_encoder("customer_id", 3)
    suffix = target.project.encode()
    client = redis_client(redis_connection_string)
    try:
        for customer_id in ("C000000001", "C000000002"):
            client.hset(encode(customer_id) + suffix, mapping={"_ts:view": b"1", "f": b"2"})
        assert erase_redis(target, [encode("C000000001")]) == 1
        assert not client.exists(encode("C000000001") + suffix)
        assert client.exists(encode("C000000002") + suffix)
        assert erase_redis(target, [encode("C000000001")]) == 0  # idempotent
    finally:
        client.close()
