"""Mapping order logs onto the transactions feed (pure parts and file reading)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.contract import FEEDS
from features.transactions import (
    TransactionColumns,
    TransactionImportError,
    read_log,
    transactions_feed,
)

COLUMNS = TransactionColumns(customer="cust", date="day", amount="value", channel="via")


def log(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["cust", "day", "value", "via"], dtype="string")


def test_same_day_rows_are_one_occasion_and_returns_stay_apart() -> None:
    rows, merged, occasions = transactions_feed(
        log(
            [
                ("A1", "2025-01-02", "10.5", "online"),
                ("A1", "2025-01-02", "4.5", "web"),
                ("A1", "2025-01-02", "-3", "web"),
                ("A1", "2025-01-03", "7", "POS"),
                ("B2", "2025-01-02", "1", "app"),
            ]
        ),
        COLUMNS,
    )
    assert (merged, occasions) == (1, 4)
    assert list(rows.columns) == list(FEEDS["transactions"].columns)
    by_id = rows.set_index("transaction_id")
    assert by_id.loc["A1|20250102T000000|web", "amount"] == "15.0"
    assert by_id.loc["A1|20250102T000000|web|return", "is_return"] == "true"
    assert by_id.loc["A1|20250102T000000|web|return", "amount"] == "3.0"
    assert by_id.loc["A1|20250103T000000|store", "channel"] == "store"


def test_unparsable_rows_are_kept_as_text_for_ingest_to_quarantine() -> None:
    rows, merged, occasions = transactions_feed(
        log(
            [
                ("A1", "2025-01-02", "10", "web"),
                ("A1", "not a date", "10", "web"),
                ("", "2025-01-02", "10", "web"),
                ("C3", "2025-01-02", "ten", "web"),
                ("D4", "2025-01-02", "5", "fax"),
            ]
        ),
        COLUMNS,
    )
    assert occasions == 1 and merged == 0 and len(rows) == 5
    bad = rows.iloc[1:]
    assert list(bad["purchased_at"]) == ["not a date", "2025-01-02", "2025-01-02", "2025-01-02"]
    assert list(bad["channel"]) == ["web", "web", "web", "fax"]
    assert bad["transaction_id"].str.endswith(("|line2", "|line3", "|line4", "|line5")).all()


def test_default_channel_and_date_format() -> None:
    columns = TransactionColumns(customer="cust", date="day", amount="value", date_format="%Y%m%d")
    rows, _, _ = transactions_feed(
        pd.DataFrame({"cust": ["7"], "day": ["19970101"], "value": ["29.33"]}, dtype="string"),
        columns,
    )
    assert rows.iloc[0].to_dict() | {} == {
        "transaction_id": "7|19970101T000000|web",
        "purchased_at": "1997-01-01T00:00:00",
        "customer_ref": "7",
        "channel": "web",
        "amount": "29.33",
        "items": "",
        "is_return": "false",
    }


def test_unknown_column_and_default_channel_are_clear_errors() -> None:
    with pytest.raises(TransactionImportError, match="customer column 'who'"):
        transactions_feed(log([]), TransactionColumns(customer="who", date="day", amount="value"))
    with pytest.raises(TransactionImportError, match="default channel"):
        transactions_feed(
            log([]), TransactionColumns("cust", "day", "value", default_channel="fax")
        )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.integers(1, 5),
            st.floats(-50, 50, allow_nan=False).map(lambda v: round(v, 2)),
        ),
        max_size=30,
    )
)
def test_amounts_are_conserved_and_ids_unique(entries: list[tuple[str, int, float]]) -> None:
    frame = log([(c, f"2025-01-0{d}", str(v), "web") for c, d, v in entries])
    rows, merged, occasions = transactions_feed(frame, COLUMNS)
    assert rows["transaction_id"].is_unique
    assert merged + occasions == len(entries)
    signed = rows["amount"].astype(float) * rows["is_return"].map({"true": -1, "false": 1})
    assert signed.sum() == pytest.approx(sum(v for _, _, v in entries), abs=1e-6)


def test_read_log_whitespace_without_header_and_parquet(tmp_path: Path) -> None:
    text = tmp_path / "log.txt"
    text.write_text(" 00004 0001 19970101  2   29.33\r\n 00004 0001 19970118  2   29.73\r\n")
    frame = read_log(text, TransactionColumns("1", "3", "5", header=False))
    assert list(frame.columns) == ["1", "2", "3", "4", "5"]
    assert frame.iloc[1].tolist() == ["00004", "0001", "19970118", "2", "29.73"]
    semicolons = tmp_path / "log.csv"
    semicolons.write_text("id;when;total\nX;2025-01-01;3,5\n")
    assert read_log(semicolons, TransactionColumns("id", "when", "total")).shape == (1, 3)
    parquet = tmp_path / "log.parquet"
    pd.DataFrame({"id": [1, 2], "when": ["2025-01-01", None], "total": [1.5, 2.0]}).to_parquet(
        parquet
    )
    read = read_log(parquet, TransactionColumns("id", "when", "total"))
    assert read["id"].tolist() == ["1", "2"] and pd.isna(read["when"].iloc[1])
    with pytest.raises(TransactionImportError, match="no such file"):
        read_log(tmp_path / "missing.csv", COLUMNS)
