"""Which snapshot rows a load writes, and how pushed events merge with stored fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.online_writer import ViewLayout
from features.store import FeatureStoreError, latest_rows_in_window, merge_realtime_fields

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
LAYOUT = ViewLayout(
    name="customer_realtime",
    features=("last_cart_abandoned_at", "last_case_opened_at", "cart_value"),
    kinds=("int64", "int64", "float64"),
)


def stamps(moments: list[datetime | None]) -> pa.Array:
    return pa.array(moments, type=pa.timestamp("us", tz="UTC"))


def test_latest_row_per_customer_inside_the_window() -> None:
    ids = pa.array(["a", "b", "a", "a", "c", "b"])
    events = stamps([T0, T0, T0 + DAY, T0 + 5 * DAY, T0 - 10 * DAY, T0 + DAY])
    mask = latest_rows_in_window(ids, events, None, T0, T0 + 2 * DAY)
    assert mask.tolist() == [False, False, True, False, False, True]


def test_window_bounds_are_inclusive_and_empty_windows_select_nothing() -> None:
    ids = pa.array(["a", "b"])
    events = stamps([T0, T0 + DAY])
    assert latest_rows_in_window(ids, events, None, T0, T0 + DAY).tolist() == [True, True]
    assert not latest_rows_in_window(ids, events, None, T0 + 2 * DAY, T0 + 3 * DAY).any()
    assert latest_rows_in_window(pa.array([], pa.string()), stamps([]), None, T0, T0).size == 0


def test_ties_on_event_time_go_to_the_newest_created_time_then_the_later_row() -> None:
    ids = pa.array(["a", "a", "b", "b"])
    events = stamps([T0, T0, T0, T0])
    created = stamps([T0 + DAY, T0, T0, T0])
    mask = latest_rows_in_window(ids, events, created, T0, T0)
    assert mask.tolist() == [True, False, False, True]


def test_selection_matches_a_pandas_groupby_on_random_rows() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "id": rng.choice(list("abcdefgh"), 200),
            "ts": [T0 + int(d) * DAY for d in rng.integers(0, 30, 200)],
        }
    )
    mask = latest_rows_in_window(
        pa.array(frame["id"]), stamps(list(frame["ts"])), None, T0 + 5 * DAY, T0 + 20 * DAY
    )
    window = frame[(frame["ts"] >= T0 + 5 * DAY) & (frame["ts"] <= T0 + 20 * DAY)]
    expected = window.reset_index().sort_values(["ts", "index"]).groupby("id")["index"].last()
    assert sorted(np.flatnonzero(mask).tolist()) == sorted(expected.tolist())


class StoredRows:
    """A stand-in for the online store's current real-time rows (pure merge test)."""

    def __init__(self, rows: dict[str, list]) -> None:
        self.rows = rows

    def read(self, ids: list[str]) -> list[list]:
        return [[self.rows.get(customer)] for customer in ids]


def test_merge_keeps_stored_fields_the_event_does_not_carry() -> None:
    stored = StoredRows({"a": [100, 200, 9.5]})
    events = pd.DataFrame(
        {"customer_id": ["a", "b"], "event_timestamp": [T0, T0], "cart_value": [3.0, 4.0]}
    )
    merged = merge_realtime_fields(events, LAYOUT, stored).set_index("customer_id")
    assert merged.loc["a", "last_cart_abandoned_at"] == 100
    assert merged.loc["a", "last_case_opened_at"] == 200
    assert merged.loc["a", "cart_value"] == 3.0
    assert pd.isna(merged.loc["b", "last_case_opened_at"]) and merged.loc["b", "cart_value"] == 4.0
    assert str(merged["last_case_opened_at"].dtype) == "Int64"


def test_merge_collapses_events_of_one_customer_to_the_newest_values() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a"],
            "event_timestamp": [T0 + DAY, T0, T0 + 2 * DAY],
            "cart_value": [2.0, 1.0, None],
            "last_case_opened_at": [None, 7, None],
        }
    )
    merged = merge_realtime_fields(events, LAYOUT, None)
    assert len(merged) == 1
    assert merged.loc[0, "cart_value"] == 2.0 and merged.loc[0, "last_case_opened_at"] == 7
    assert merged.loc[0, "event_timestamp"] == pd.Timestamp(T0 + 2 * DAY)


def test_merge_rejects_missing_keys_and_unknown_fields() -> None:
    with pytest.raises(FeatureStoreError, match="lack the columns"):
        merge_realtime_fields(pd.DataFrame({"customer_id": ["a"]}), LAYOUT, None)
    with pytest.raises(FeatureStoreError, match="unknown real-time fields"):
        merge_realtime_fields(
            pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0], "x": [1]}), LAYOUT, None
        )
