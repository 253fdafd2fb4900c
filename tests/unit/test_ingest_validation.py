"""Validation of feed rows against the contract: one reason per kind of bad value."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from features.contract import FEEDS
from features.ingest import (
    NotAFeedError,
    discover_files,
    map_columns,
    unified_select,
    validation_sql,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GOOD_POS = {
    "transaction_id": "T1",
    "store_id": "S1",
    "purchased_at": "2025-03-01T14:05:00",
    "amount": "12.50",
    "items": "2",
    "is_return": "false",
}
GOOD_ORDER = {
    "order_id": "O1",
    "ordered_at": "2025-03-01T14:05:00Z",
    "channel": "web",
    "amount": "10",
    "items": "1",
}


def check(feed_name: str, row: dict[str, str | None]) -> dict[str, object]:
    """Run the validation SQL of a feed over one text row; return the typed row and reason."""
    feed = FEEDS[feed_name]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f'CAST(? AS VARCHAR) AS "{name}"' for name in feed.columns)
    con.execute(
        f"CREATE TEMP TABLE _src AS SELECT 1 AS _line, '{{}}' AS _raw, {columns}",
        [row.get(name) for name in feed.columns],
    )
    result = con.execute(validation_sql(feed, NOW)).df().iloc[0].to_dict()
    con.close()
    return result


def test_good_row_is_typed_and_has_no_reason() -> None:
    result = check("pos_sales", GOOD_POS | {"store_id": "  S1 ", "is_return": "Yes"})
    assert result["_reason"] == ""
    assert result["amount"] == 12.5 and result["items"] == 2 and result["is_return"]
    assert result["store_id"] == "S1"
    assert result["purchased_at"] == datetime(2025, 3, 1, 14, 5)


def test_offsets_become_naive_utc_and_allowed_values_are_lower_cased() -> None:
    result = check(
        "web_orders", GOOD_ORDER | {"ordered_at": "2025-03-01T14:05:00+02:00", "channel": " APP "}
    )
    assert result["_reason"] == ""
    assert result["ordered_at"] == datetime(2025, 3, 1, 12, 5)
    assert result["channel"] == "app"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T14:05:00", datetime(2025, 3, 1, 14, 5)),  # the fast naive path
        ("\t2025-03-01T14:05:00\r", datetime(2025, 3, 1, 14, 5)),  # trimmed first
        ("2025-03-01 14:05:00", datetime(2025, 3, 1, 14, 5)),
        ("2025-03-01T14:05:00-05:00", datetime(2025, 3, 1, 19, 5)),  # not the naive shape
        ("2025-03-01T14:05:00Z", datetime(2025, 3, 1, 14, 5)),  # fast path with a UTC suffix
        ("2025-03-01T14:05:00+00:00", datetime(2025, 3, 1, 14, 5)),
        ("2025-03-01T14:05:00.250Z", datetime(2025, 3, 1, 14, 5, 0, 250000)),  # full cast
        ("2025-02-30T10:00:00Z", None),
        ("2025-03-01", datetime(2025, 3, 1)),
        ("2025-02-30T10:00:00", None),  # no such day on either path
    ],
)
def test_timestamp_shapes_and_surrounding_whitespace(text: str, expected: datetime | None) -> None:
    result = check("web_orders", GOOD_ORDER | {"ordered_at": text, "order_id": " \tO1\n"})
    assert result["order_id"] == "O1"
    if expected is None:
        assert "ordered_at" in result["_reason"] and "is not a timestamp" in result["_reason"]
    else:
        assert result["_reason"] == "" and result["ordered_at"] == expected


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": "-3.5"}, "amount: -3.5 below minimum 0"),
        ({"amount": "250000"}, "amount: 250000 above maximum 100000"),
        ({"amount": "12,50"}, "amount: '12,50' is not a number"),
        ({"amount": "nan"}, "amount: 'nan' is not a number"),
        ({"items": "1.5"}, "items: '1.5' is not an integer"),
        ({"items": "0"}, "items: 0 below minimum 1"),
        ({"purchased_at": "yesterday"}, "purchased_at: 'yesterday' is not a timestamp"),
        (
            {"purchased_at": "2099-01-01T00:00:00"},
            "purchased_at: '2099-01-01T00:00:00' is in the future (after 2026-01-02 12:00:00 UTC)",
        ),
        ({"store_id": "   "}, "store_id: missing required value"),
        ({"transaction_id": None}, "transaction_id: missing required value"),
        ({"is_return": "maybe"}, "is_return: 'maybe' is not a boolean (true/false, 1/0, yes/no)"),
        ({"discount_amount": "-1"}, "discount_amount: -1 below minimum 0"),
    ],
)
def test_each_kind_of_bad_value_has_its_reason(change: dict[str, str | None], reason: str) -> None:
    assert check("pos_sales", GOOD_POS | change)["_reason"] == reason


def test_value_outside_the_allowed_set() -> None:
    result = check("web_orders", GOOD_ORDER | {"channel": "fax"})
    assert result["_reason"] == "channel: 'fax' is not one of web, app"


def test_a_day_of_clock_drift_is_tolerated() -> None:
    assert check("pos_sales", GOOD_POS | {"purchased_at": "2026-01-02T06:00:00"})["_reason"] == ""


def test_optional_empty_values_are_null_not_errors() -> None:
    result = check("pos_sales", GOOD_POS | {"email": " ", "unit_price": ""})
    assert result["_reason"] == ""
    assert result["email"] is None


def test_several_problems_are_all_reported() -> None:
    reason = check("pos_sales", GOOD_POS | {"amount": "-1", "items": "x"})["_reason"]
    assert reason == "amount: -1 below minimum 0; items: 'x' is not an integer"


def test_missing_required_columns_raise_not_a_feed() -> None:
    with pytest.raises(NotAFeedError, match="missing required column.*store_id, purchased_at"):
        map_columns(["transaction_id", "amount", "items"], FEEDS["pos_sales"], Path("x.csv"))


def test_header_matching_ignores_case_and_spaces_and_optional_columns_may_be_absent() -> None:
    mapping = map_columns(
        [" Transaction_ID", "STORE_ID", "purchased_at", "amount", "items"],
        FEEDS["pos_sales"],
        Path("x.csv"),
    )
    assert mapping["transaction_id"] == " Transaction_ID" and mapping["email"] is None


def test_discovery_reports_unknown_folders_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "pos_sales").mkdir()
    (tmp_path / "pos_sales" / "b.csv").write_text("x")
    (tmp_path / "pos_sales" / "a.jsonl").write_text("x")
    (tmp_path / "pos_sales" / "notes.txt").write_text("x")
    (tmp_path / "printer_logs").mkdir()
    files, unknown, ignored = discover_files(tmp_path)
    assert [p.name for p in files["pos_sales"]] == ["a.jsonl", "b.csv"]
    assert unknown == ["printer_logs"] and ignored == ["pos_sales/notes.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_files(tmp_path / "nowhere")


def test_unified_select_sets_implied_channels() -> None:
    assert "'store' AS \"channel\"" in unified_select(FEEDS["pos_sales"])
    assert 's."channel" AS "channel"' in unified_select(FEEDS["web_orders"])
    assert "'sms' AS \"channel\"" in unified_select(FEEDS["sms_events"])


def test_missing_return_flag_means_a_sale_in_the_unified_table() -> None:
    assert 'coalesce(s."is_return", false) AS "is_return"' in unified_select(FEEDS["pos_sales"])
