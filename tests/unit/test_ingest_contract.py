"""The feed contract: its generated documentation and its example rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from features.contract import (
    FEEDS,
    PURCHASE_CHANNELS,
    UNIFIED_TABLES,
    contract_markdown,
    example_row,
)
from features.ingest import validation_sql

DOC = Path(__file__).resolve().parents[2] / "docs" / "feeds.md"


def test_docs_are_generated_from_the_contract() -> None:
    assert DOC.read_text() == contract_markdown(), (
        "docs/feeds.md is stale: run `python -m features.contract > docs/feeds.md`"
    )


@pytest.mark.parametrize("name", list(FEEDS))
def test_every_feed_is_documented_with_each_column(name: str) -> None:
    text = contract_markdown()
    section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    for column in FEEDS[name].columns:
        assert f"| `{column}` |" in section
    assert "```csv" in section


@pytest.mark.parametrize("name", list(FEEDS))
def test_example_row_passes_validation(name: str) -> None:
    feed = FEEDS[name]
    row = example_row(feed)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f'CAST(? AS VARCHAR) AS "{c}"' for c in feed.columns)
    extra = ", '{}' AS _attributes" if feed.keeps_extra_columns else ""
    con.execute(
        f"CREATE TEMP TABLE _src AS SELECT 1 AS _line, {columns}{extra}",
        [row.get(c) or None for c in feed.columns],
    )
    result = con.execute(validation_sql(feed, datetime(2026, 1, 1, tzinfo=UTC))).df()
    assert result["_reason"].iloc[0] == ""


def test_feeds_land_in_unified_tables_and_ids_are_columns() -> None:
    for feed in FEEDS.values():
        assert feed.target_table in UNIFIED_TABLES
        assert feed.key in feed.columns and feed.time_column in feed.columns
        assert set(feed.unique_columns) <= set(feed.columns)
        assert set(feed.near_duplicate_columns) <= set(feed.columns)
        if feed.near_duplicate_columns:
            assert set(feed.near_duplicate_columns) & set(feed.id_columns), feed.name


def test_campaign_history_carries_what_uplift_training_needs() -> None:
    columns = FEEDS["campaign_history"].columns
    for name in ("action", "channel", "randomised", "propensity", "is_control", "sent_at"):
        assert columns[name].required
    assert FEEDS["campaign_history"].id_columns  # to join outcomes (purchases) per customer


def test_transactions_and_price_observations_use_purchase_channels() -> None:
    assert FEEDS["transactions"].columns["channel"].allowed == PURCHASE_CHANNELS
    assert FEEDS["price_observations"].columns["channel"].allowed == PURCHASE_CHANNELS
