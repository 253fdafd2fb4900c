"""Hand-made warehouses: the contract's unified tables that the feature build reads, with the
rows a test gives. Used by the feature, Feast and training tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pandas as pd

from features.build import FEATURE_SOURCE_TABLES
from features.contract import UNIFIED_TABLES

COLUMN_TYPES = {
    "occurred_at": "TIMESTAMP",
    "first_seen_at": "TIMESTAMP",
    "n_source_ids": "INTEGER",
    "amount": "DOUBLE",
    "items": "INTEGER",
    "discount_amount": "DOUBLE",
    "is_return": "BOOLEAN",
    "unit_price": "DOUBLE",
    "price_seen": "DOUBLE",
    "price": "DOUBLE",
    "resolved": "BOOLEAN",
    "handle_minutes": "DOUBLE",
    "sentiment": "DOUBLE",
    "score": "DOUBLE",
    "granted": "BOOLEAN",
}  # every other column is text


def create_unified_tables(
    con: duckdb.DuckDBPyConnection,
    rows: Mapping[str, pd.DataFrame | Sequence[Mapping[str, Any]]],
) -> None:
    """Create every table the feature build reads (the contract's exact columns) and insert the
    given rows: a frame or a list of dicts per table, columns left out are NULL."""
    for table in FEATURE_SOURCE_TABLES:
        columns = UNIFIED_TABLES[table]
        ddl = ", ".join(f"{c} {COLUMN_TYPES.get(c, 'VARCHAR')}" for c in columns)
        con.execute(f"CREATE TABLE {table} ({ddl})")
        given = rows.get(table)
        if given is None or len(given) == 0:
            continue
        if not isinstance(given, pd.DataFrame):
            given = pd.DataFrame([{c: row.get(c) for c in columns} for row in given])
        names = ", ".join(c for c in columns if c in given.columns)
        con.register("_rows", given)
        con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _rows")
        con.unregister("_rows")
