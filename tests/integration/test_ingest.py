"""Ingest on small hand-written feeds: idempotence, increments, quarantine, errors, identity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from rich.console import Console

import features.ingest as ingest_module
from features.identity import evaluate_identity
from features.ingest import NotAFeedError, ingest
from omniretain.settings import Settings, load_settings

NOW = datetime(2025, 6, 1, tzinfo=UTC)
POS_HEADER = (
    "transaction_id,store_id,purchased_at,loyalty_card,phone,email,amount,items,"
    "discount_amount,product_id,unit_price,is_return\n"
)
POS_JANUARY = POS_HEADER + (
    "T1,S1,2025-01-03T10:00:00,LC-001,,,12.5,1,0,P1,12.5,false\n"
    "T2,S1,2025-01-04T10:00:00Z,,,,-3.5,1,,,,\n"
    "T3,S2,yesterday,LC-002,,,5,2,,,,no\n"
    "T1,S1,2025-01-03T10:00:00,LC-001,,,12.5,1,0,P1,12.5,false\n"
    "T4,S2,2025-01-05 12:00:00+02:00,lc 001,07911 123456,,7,3,,,,1\n"
)
POS_FEBRUARY = POS_HEADER + (
    "T4,S2,2025-01-05 12:00:00+02:00,lc 001,07911 123456,,7,3,,,,1\n"  # repeated from January
    "T5,S1,2025-02-01T09:00:00,,,Bob@Example.com,20,2,,,,\n"
)
ORDERS = (
    "order_id,ordered_at,channel,email,phone,device_id,loyalty_card,amount,items\n"
    "O1,2025-01-10T08:00:00,APP, ann@example.com ,,DEV1,LC001,30,2\n"
    "O2,2025-01-11T08:00:00,fax,bob@example.com,,,,10,1\n"
)
SESSIONS = (
    "event_id,occurred_at,channel,session_id,device_id,email,event_type\n"
    "W1,2025-01-09T08:00:00,app,s1,dev1,,add_to_cart\n"
    "W2,2025-01-09T08:05:00,web,s2,,,page_view\n"
)
SMS_JSONL = (
    "\n".join(
        [
            json.dumps(
                {
                    "event_id": "M1",
                    "occurred_at": "2025-01-12T10:00:00",
                    "phone": "+447911123456",
                    "event_type": "SENT",
                }
            ),
            "{not json",
            json.dumps(
                {
                    "event_id": "M2",
                    "occurred_at": "2025-01-13T10:00:00",
                    "phone": "07911123456",
                    "event_type": "teleport",
                }
            ),
        ]
    )
    + "\n"
)


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    raw = tmp_path / "raw"
    write(raw, "pos_sales/pos_sales_2025-01.csv", POS_JANUARY)
    write(raw, "web_orders/web_orders_2025-01.csv", ORDERS)
    write(raw, "web_sessions/web_sessions_2025-01.csv", SESSIONS)
    write(raw, "sms_events/sms_events_2025-01.jsonl", SMS_JSONL)
    write(raw, "not_a_feed/whatever.csv", "a,b\n1,2\n")
    return load_settings(state_dir=tmp_path)


def query(settings: Settings, sql: str) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_first_ingest_counts_quarantines_and_links(settings: Settings) -> None:
    report = ingest(settings, progress=False, now=NOW)
    pos = report.feeds["pos_sales"]
    assert (pos.read, pos.accepted, pos.quarantined, pos.duplicates) == (5, 2, 2, 1)
    assert report.unknown_folders == ["not_a_feed"]
    for counts in report.files:
        assert counts.read == counts.accepted + counts.quarantined + counts.duplicates
    quarantine = query(settings, "SELECT feed, file, line, reason FROM quarantine ORDER BY ALL")
    assert quarantine == [
        ("pos_sales", "pos_sales/pos_sales_2025-01.csv", 2, "amount: -3.5 below minimum 0"),
        (
            "pos_sales",
            "pos_sales/pos_sales_2025-01.csv",
            3,
            "purchased_at: 'yesterday' is not a timestamp",
        ),
        (
            "sms_events",
            "sms_events/sms_events_2025-01.jsonl",
            2,
            "malformed JSON Lines line: not a JSON object",
        ),
        (
            "sms_events",
            "sms_events/sms_events_2025-01.jsonl",
            3,
            "event_type: 'teleport' is not one of sent, click, opt_out",
        ),
        (
            "web_orders",
            "web_orders/web_orders_2025-01.csv",
            2,
            "channel: 'fax' is not one of web, app",
        ),
    ]
    raw = json.loads(
        query(settings, "SELECT raw FROM quarantine WHERE line = 3 AND feed = 'pos_sales'")[0][0]
    )
    assert raw["transaction_id"] == "T3" and raw["purchased_at"] == "yesterday"

    # The loyalty card, the app order, the device and the phone all join one customer.
    assert query(settings, "SELECT count(*) FROM purchases WHERE is_return IS NULL") == [(0,)]
    purchases = query(
        settings,
        "SELECT source_id, channel, customer_id, occurred_at FROM purchases ORDER BY source_id",
    )
    assert [(p[0], p[1]) for p in purchases] == [("O1", "app"), ("T1", "store"), ("T4", "store")]
    assert len({p[2] for p in purchases}) == 1 and purchases[0][2] is not None
    assert purchases[2][3] == datetime(2025, 1, 5, 10, 0)  # +02:00 -> UTC
    events = dict(query(settings, "SELECT source_id, customer_id FROM web_events"))
    assert events["W1"] == purchases[0][2] and events["W2"] is None
    messages = query(settings, "SELECT channel, event_type, customer_id FROM messages")
    assert messages == [("sms", "sent", purchases[0][2])]
    assert report.identity.records_without_identifier == 1
    assert report.identity.customers == 1
    console = Console(record=True, width=250)
    console.print(report.render())
    rendered = console.export_text()
    assert "pos_sales" in rendered and "1 without any identifier" in rendered


def test_second_ingest_adds_nothing_and_a_new_month_adds_only_its_rows(settings: Settings) -> None:
    first = ingest(settings, progress=False, now=NOW)
    snapshot = query(
        settings,
        "SELECT (SELECT count(*) FROM raw_pos_sales), "
        "(SELECT count(*) FROM quarantine), "
        "(SELECT list(customer_id ORDER BY customer_id) FROM customers)",
    )
    again = ingest(settings, progress=False, now=NOW)
    assert again.totals().read == 0 and again.totals().files_skipped == 4
    assert not again.identity_rebuilt and again.identity == first.identity
    assert (
        query(
            settings,
            "SELECT (SELECT count(*) FROM raw_pos_sales), "
            "(SELECT count(*) FROM quarantine), "
            "(SELECT list(customer_id ORDER BY customer_id) FROM customers)",
        )
        == snapshot
    )

    write(settings.raw_dir, "pos_sales/pos_sales_2025-02.csv", POS_FEBRUARY)
    third = ingest(settings, progress=False, now=NOW)
    pos = third.feeds["pos_sales"]
    assert (pos.files_ingested, pos.files_skipped, pos.read, pos.accepted, pos.duplicates) == (
        1,
        1,
        2,
        1,
        1,
    )
    assert query(settings, "SELECT count(*) FROM raw_pos_sales")[0][0] == 3
    customers = query(settings, "SELECT customer_id FROM customers ORDER BY 1")
    # The existing customer keeps its id; Bob (only in February) is new.
    assert customers[0][0] == snapshot[0][2][0] and len(customers) == 2
    files = query(
        settings,
        "SELECT file, rows_read, rows_accepted, rows_duplicate FROM "
        "ingested_files WHERE feed = 'pos_sales' ORDER BY file",
    )
    assert files == [
        ("pos_sales/pos_sales_2025-01.csv", 5, 2, 1),
        ("pos_sales/pos_sales_2025-02.csv", 2, 1, 1),
    ]


def test_file_missing_required_columns_raises_and_writes_nothing(settings: Settings) -> None:
    write(settings.raw_dir, "surveys/surveys_2025-01.csv", "response_id,occurred_at\nR1,2025\n")
    with pytest.raises(NotAFeedError, match=r"surveys_2025-01\.csv.*survey_type, score"):
        ingest(settings, progress=False, now=NOW)
    assert query(settings, "SELECT count(*) FROM ingested_files")[0][0] == 0


def test_failure_mid_way_keeps_the_previous_good_state(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ingest_module.validation_sql
    calls = {"n": 0}

    def failing_on_third_file(*args: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "validation_sql", failing_on_third_file)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(settings, progress=False, now=NOW)
    files = query(settings, "SELECT count(*), sum(rows_accepted) FROM ingested_files")[0]
    staged = sum(
        query(settings, f"SELECT count(*) FROM raw_{feed}")[0][0]
        for feed in ("pos_sales", "sms_events", "web_orders", "web_sessions")
    )
    assert files[0] == 2 and staged == files[1]  # two files committed, the third rolled back

    monkeypatch.setattr(ingest_module, "validation_sql", original)
    report = ingest(settings, progress=False, now=NOW)
    assert report.totals().files_ingested == 2 and report.totals().files_skipped == 2
    assert query(settings, "SELECT count(*) FROM ingested_files")[0][0] == 4


def test_parquet_and_evaluation_against_truth(settings: Settings, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "response_id": ["R1", "R2"],
            "occurred_at": pd.to_datetime(["2025-01-20T10:00:00Z", "2025-01-21T10:00:00Z"]),
            "email": ["ANN@example.com", None],
            "survey_type": ["NPS", "ces"],
            "score": [9.0, 11.0],
        }
    )
    (settings.raw_dir / "surveys").mkdir()
    frame.to_parquet(settings.raw_dir / "surveys" / "surveys_2025-01.parquet", index=False)
    report = ingest(settings, progress=False, now=NOW)
    assert (report.feeds["surveys"].accepted, report.feeds["surveys"].quarantined) == (1, 1)
    assert query(settings, "SELECT reason FROM quarantine WHERE feed = 'surveys'") == [
        ("score: 11.0 above maximum 10",)
    ]
    survey = query(settings, "SELECT survey_type, customer_id FROM surveys")
    assert survey[0][0] == "nps" and survey[0][1] is not None

    truth = pd.DataFrame(
        [
            ("pos_sales", "T1", "ann"),
            ("pos_sales", "T4", "ann"),
            ("web_orders", "O1", "ann"),
            ("web_sessions", "W1", "ann"),
            ("web_sessions", "W2", "bob"),
            ("sms_events", "M1", "ann"),
            ("surveys", "R1", "ann"),
            ("pos_sales", "T2", "bob"),
        ],
        columns=["feed", "record_key", "person_id"],
    )
    settings.truth_dir.mkdir(parents=True, exist_ok=True)
    truth.to_parquet(settings.truth_dir / "records.parquet", index=False)
    scores = evaluate_identity(settings)
    assert scores["records_scored"] == 7  # T2 was quarantined
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0  # bob has one record


def test_malformed_csv_lines_are_quarantined_and_line_numbers_stay_right(
    settings: Settings,
) -> None:
    write(
        settings.raw_dir,
        "contact_center/contact_center_2025-01.csv",
        "contact_id,occurred_at,case_id,phone,contact_channel,reason,resolved\n"
        "K1,2025-01-02,case1,07911 123456,phone,delivery,no\n"
        "K2,2025-01-02,case1,07911 123456,phone,delivery,no,surplus,fields\n"
        "K3,2025-01-03,case1,,chat,billing,true\n"
        "K4,2025-01-04,case2,,chat,billing,perhaps\n",
    )
    report = ingest(settings, progress=False, now=NOW)
    counts = report.feeds["contact_center"]
    assert (counts.read, counts.accepted, counts.quarantined) == (4, 2, 2)
    rows = query(
        settings,
        "SELECT line, reason FROM quarantine WHERE feed = 'contact_center' ORDER BY line",
    )
    assert rows[0][0] == 2 and rows[0][1].startswith("malformed CSV line: too many columns")
    assert rows[1] == (4, "resolved: 'perhaps' is not a boolean (true/false, 1/0, yes/no)")
    lines = query(settings, "SELECT contact_id, _line FROM raw_contact_center ORDER BY 1")
    assert lines == [("K1", 1), ("K3", 3)]


def test_files_validated_side_by_side_keep_their_own_lines_and_order(
    settings: Settings,
) -> None:
    """Files of one feed are validated two at a time: each keeps its line numbers, a reader
    reject in a later file renumbers that file only, and a key repeated in a later file is
    that file's duplicate whichever file finished first."""
    header = "contact_id,occurred_at,case_id,phone,contact_channel,reason,resolved\n"
    for month in range(1, 6):
        rows = [f"K{month}{n},2025-0{month}-02,case{month},,chat,billing,true\n" for n in (1, 2)]
        if month == 4:
            rows.insert(0, "K40,2025-04-02,case4,,chat,billing,true,surplus\n")
        if month == 5:
            rows.append("K11,2025-05-03,case5,,chat,billing,true\n")
        write(
            settings.raw_dir,
            f"contact_center/contact_center_2025-0{month}.csv",
            header + "".join(rows),
        )
    report = ingest(settings, progress=False, now=NOW)
    by_file = {
        c.file.rsplit("_", 1)[1]: (c.read, c.accepted, c.quarantined, c.duplicates)
        for c in report.files
        if c.feed == "contact_center"
    }
    assert by_file == {
        "2025-01.csv": (2, 2, 0, 0),
        "2025-02.csv": (2, 2, 0, 0),
        "2025-03.csv": (2, 2, 0, 0),
        "2025-04.csv": (3, 2, 1, 0),
        "2025-05.csv": (3, 2, 0, 1),
    }
    quarantined = "SELECT file, line FROM quarantine WHERE feed = 'contact_center'"
    assert query(settings, quarantined) == [("contact_center/contact_center_2025-04.csv", 1)]
    staged = query(settings, "SELECT contact_id, _line FROM raw_contact_center ORDER BY 1")
    assert staged == [
        ("K11", 1),
        ("K12", 2),
        ("K21", 1),
        ("K22", 2),
        ("K31", 1),
        ("K32", 2),
        ("K41", 2),
        ("K42", 3),
        ("K51", 1),
        ("K52", 2),
    ]


def test_unreadable_parquet_raises_not_a_feed(settings: Settings) -> None:
    write(settings.raw_dir, "social/social_2025-01.parquet", "this is not parquet")
    with pytest.raises(NotAFeedError, match=r"social_2025-01\.parquet: unreadable"):
        ingest(settings, progress=False, now=NOW)


def test_two_new_files_of_a_feed_in_one_run_count_repeats_in_the_later_file(
    settings: Settings,
) -> None:
    """One batch per feed: a key repeated in the next month's file is that file's duplicate."""
    write(settings.raw_dir, "pos_sales/pos_sales_2025-02.csv", POS_FEBRUARY)
    report = ingest(settings, progress=False, now=NOW)
    by_file = {counts.file: counts for counts in report.files}
    january = by_file["pos_sales/pos_sales_2025-01.csv"]
    february = by_file["pos_sales/pos_sales_2025-02.csv"]
    assert (january.read, january.accepted, january.quarantined, january.duplicates) == (5, 2, 2, 1)
    assert (february.read, february.accepted, february.duplicates) == (2, 1, 1)
    staged = query(settings, "SELECT transaction_id, _file, _line FROM raw_pos_sales ORDER BY 1")
    assert staged == [
        ("T1", "pos_sales/pos_sales_2025-01.csv", 1),
        ("T4", "pos_sales/pos_sales_2025-01.csv", 5),
        ("T5", "pos_sales/pos_sales_2025-02.csv", 2),
    ]
