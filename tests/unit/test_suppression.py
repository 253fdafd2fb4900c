"""The suppression list: keyed hashes of erased identifiers, and ingest keeping them out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from features.suppression import (
    KEY_ENV,
    KEY_FILE_ENV,
    SuppressionKeyError,
    candidate_values,
    configured_key,
    identifier_hash,
    is_suppressed,
    key_fingerprint,
    suppress,
)
from omniretain.settings import PROJECT_ROOT, load_settings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def test_hash_is_keyed_and_typed() -> None:
    digest = identifier_hash(b"k1", "email", "jane@example.com")
    assert len(digest) == 64 and "jane" not in digest
    assert digest != identifier_hash(b"k2", "email", "jane@example.com")
    assert digest != identifier_hash(b"k1", "device_id", "jane@example.com")
    assert key_fingerprint(b"k1") != key_fingerprint(b"k2")


def test_any_spelling_of_a_suppressed_identifier_is_suppressed() -> None:
    con = duckdb.connect()
    added = suppress(
        con,
        [("email", "jane@example.com"), ("phone", "+447911123456"), ("loyalty_card", "lc0012")],
        "GB",
        NOW,
    )
    assert added == 3
    assert suppress(con, [("email", " JANE@example.com ")], "GB", NOW) == 0  # already listed
    assert is_suppressed(con, "email", "  Jane@Example.COM")
    assert is_suppressed(con, "phone", "07911 123456")  # national form, read in GB
    assert is_suppressed(con, "loyalty_card", "LC-0012")
    assert not is_suppressed(con, "email", "john@example.com")
    assert not is_suppressed(con, "device_id", "jane@example.com")  # types do not mix
    stored = " ".join(
        str(row) for row in con.execute("SELECT * FROM suppressed_identifiers").fetchall()
    )
    assert "jane" not in stored and "7911" not in stored  # hashes only, never the values


def test_a_different_key_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    con = duckdb.connect()
    suppress(con, [("email", "jane@example.com")], "GB", NOW)  # the default key
    monkeypatch.setenv(KEY_ENV, "another secret")
    with pytest.raises(SuppressionKeyError, match=KEY_ENV):
        is_suppressed(con, "email", "jane@example.com")
    monkeypatch.delenv(KEY_ENV)
    assert is_suppressed(con, "email", "jane@example.com")

    key_file = tmp_path / "suppression.key"
    key_file.write_text("from a secret store\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    fresh = duckdb.connect()
    suppress(fresh, [("email", "jane@example.com")], "GB", NOW)
    assert is_suppressed(fresh, "email", "JANE@example.com")
    assert fresh.execute("SELECT secret FROM suppression_state").fetchone()[0] is None
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(SuppressionKeyError):  # the default key is not the one used
        is_suppressed(fresh, "email", "jane@example.com")


def test_key_file_must_exist_and_live_outside_the_project(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_FILE_ENV, str(PROJECT_ROOT / "configs" / "omniretain.yaml"))
    with pytest.raises(SuppressionKeyError, match="inside the project"):
        configured_key()
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(SuppressionKeyError, match="cannot read"):
        configured_key()


def test_candidate_values_of_quarantined_rows() -> None:
    assert candidate_values('{"email": "a@b.co", "amount": "-5"}') == {"a@b.co", "-5"}
    assert "07911 123456" in candidate_values('{"_unparsed": "T1,07911 123456,\\"x\\""}')
    assert candidate_values(None) == set()


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


POS_HEADER = "transaction_id,store_id,purchased_at,loyalty_card,phone,email,amount,items"


def test_ingest_quarantines_rows_of_erased_persons_without_their_content(tmp_path: Path) -> None:
    """Real ingest on small files: erased rows (valid or not) go to quarantine, content-free."""
    from features.ingest import ingest

    settings = load_settings(state_dir=tmp_path / "state")
    settings.ensure_dirs()
    source = tmp_path / "drop"
    write_csv(
        source / "pos_sales" / "pos_sales_2025-06-01.csv",
        POS_HEADER,
        [
            "T1,S1,2025-06-01T10:00:00,LC-0012,,,10.0,1",
            "T2,S1,2025-06-01T11:00:00,,07911 123456,,12.0,1",
            "T3,S1,2025-06-01T12:00:00,,,Jane@Example.com,-3,1",  # invalid amount, and erased
            "T4,S1,2025-06-01T13:00:00,,,john@example.com,9.0,1",
            "T5,S1,2025-06-01T14:00:00,,,bob@example.com,-1,1",  # invalid, not erased
        ],
    )
    with duckdb.connect(str(settings.warehouse_path)) as con:
        suppress(con, [("email", "jane@example.com"), ("loyalty_card", "lc0012")], "GB", NOW)
        suppress(con, [("phone", "+447911123456")], "GB", NOW)
    report = ingest(settings, source_dir=source, progress=False, now=NOW)
    counts = report.feeds["pos_sales"]
    assert (counts.read, counts.accepted, counts.quarantined, counts.erased) == (5, 1, 4, 3)
    assert report.files[0].erased == 3
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        assert con.execute("SELECT transaction_id FROM raw_pos_sales").fetchall() == [("T4",)]
        quarantine = con.execute(
            "SELECT line, reason, raw FROM quarantine ORDER BY line"
        ).fetchall()
        assert [(line, reason) for line, reason, _ in quarantine if reason == "erased"] == [
            (1, "erased"),
            (2, "erased"),
            (3, "erased"),
        ]
        assert all(raw is None for _, reason, raw in quarantine if reason == "erased")
        assert any("bob@example.com" in (raw or "") for _, _, raw in quarantine)
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] == 1
        text = " ".join(
            str(row)
            for table in ("quarantine", "identity_links", "identifier_normalisation")
            for row in con.execute(f"SELECT * FROM {table}").fetchall()
        ).lower()
    assert "jane" not in text and "7911" not in text and "lc-0012" not in text


def test_an_erased_customer_id_is_never_handed_out_again(tmp_path: Path) -> None:
    """Erase the newest customer: the next new person gets a fresh id, not theirs."""
    from features.ingest import ingest
    from omniretain.erase import erase_customer

    settings = load_settings(state_dir=tmp_path / "state")
    settings.ensure_dirs()
    write_csv(
        tmp_path / "day1" / "pos_sales" / "a.csv",
        POS_HEADER,
        ["T1,S1,2025-06-01T10:00:00,,,a@x.org,10,1", "T2,S1,2025-06-01T11:00:00,,,b@x.org,10,1"],
    )
    ingest(settings, source_dir=tmp_path / "day1", progress=False, now=NOW)
    report = erase_customer(settings, "C000000002", requested_by="test")
    assert report.removed["warehouse.customers"] == 1 and report.suppressed == 2
    write_csv(
        tmp_path / "day2" / "pos_sales" / "b.csv",
        POS_HEADER,
        ["T3,S1,2025-06-02T10:00:00,,,c@x.org,10,1", "T4,S1,2025-06-02T11:00:00,,,B@X.org,7,1"],
    )
    result = ingest(settings, source_dir=tmp_path / "day2", progress=False, now=NOW)
    assert result.feeds["pos_sales"].erased == 1
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        links = con.execute(
            "SELECT customer_id, id_value FROM identity_links ORDER BY 1"
        ).fetchall()
    assert links == [("C000000001", "a@x.org"), ("C000000003", "c@x.org")]
