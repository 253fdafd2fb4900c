"""Ingest of small hand-written feeds: near duplicates across exports; CRM attributes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from features.build import compute_features, feature_columns
from features.ingest import ingest
from omniretain.settings import CrmAttribute, Settings, load_settings

NOW = datetime(2025, 6, 1, tzinfo=UTC)
ORDERS_HEADER = "order_id,ordered_at,channel,email,phone,device_id,loyalty_card,amount,items\n"
EXPORT_A = ORDERS_HEADER + (
    "A-1,2025-01-10T08:00:00,web,ann@example.com,,,,30,2\n"
    "A-2,2025-01-10T09:00:00,web,ann@example.com,,,,30,2\n"  # an hour later: a second order
    "A-3,2025-01-10T08:00:00,web,,,,,30,2\n"  # no identifier: never a near duplicate
)
EXPORT_B = ORDERS_HEADER + (
    "B-77,2025-01-10T08:00:40,web, ANN@example.com ,,,,30,2\n"  # A-1 from the other system
    "B-78,2025-01-10T08:00:40,web,ann@example.com,,,,31,2\n"  # another amount
    "B-79,2025-01-10T08:00:10,web,,,,,30,2\n"  # anonymous
    "B-80,2025-01-11T10:00:00,web,bob@example.com,,,,5,1\n"
    "B-81,2025-01-11T10:00:30,web,bob@example.com,,,,5,1\n"  # same file, 30 s later
)
CRM_V1 = (
    "crm_id,updated_at,email,Plan,region,age\n"
    "K1,,ann@example.com,Gold,north,41\n"
    "K2,,bob@example.com,silver,,29\n"
)
CRM_V2 = (
    "crm_id,updated_at,email,plan,region,age\n"
    "K1,2025-03-01T00:00:00,ann@example.com,Bronze,north,41\n"
)
ATTRIBUTES = [
    CrmAttribute(name="plan", type="categorical"),
    CrmAttribute(name="region", type="categorical"),
    CrmAttribute(name="age", type="numeric"),
]


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        state_dir=tmp_path, crm={"attributes": [a.model_dump() for a in ATTRIBUTES]}
    )


def test_near_duplicates_across_exports_are_removed_and_counted(settings: Settings) -> None:
    write(settings.raw_dir, "web_orders/a.csv", EXPORT_A)
    write(settings.raw_dir, "web_orders/b.csv", EXPORT_B)
    report = ingest(settings, progress=False, now=NOW)
    by_file = {counts.file: counts for counts in report.files}
    assert by_file["web_orders/a.csv"].near_duplicates == 0
    b = by_file["web_orders/b.csv"]
    assert (b.read, b.accepted, b.near_duplicates, b.duplicates, b.quarantined) == (5, 3, 2, 0, 0)
    assert report.feeds["web_orders"].near_duplicates == 2
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        keys = {row[0] for row in con.execute("SELECT order_id FROM raw_web_orders").fetchall()}
        stored = con.execute(
            "SELECT rows_near_duplicate FROM ingested_files ORDER BY file"
        ).fetchall()
    assert keys == {"A-1", "A-2", "A-3", "B-78", "B-79", "B-80"}
    assert stored == [(0,), (2,)]
    again = ingest(settings, progress=False, now=NOW)
    assert again.feeds["web_orders"].files_skipped == 2 and not again.files


def test_crm_attributes_become_coded_point_in_time_features(settings: Settings) -> None:
    write(
        settings.raw_dir,
        "web_orders/a.csv",
        EXPORT_A + "A-9,2025-01-12T08:00:00,web,bob@example.com,,,,5,1\n",
    )
    write(settings.raw_dir, "crm_attributes/crm_2025-01.csv", CRM_V1)
    ingest(settings, progress=False, now=NOW)
    write(settings.raw_dir, "crm_attributes/crm_2025-03.csv", CRM_V2)
    ingest(settings, progress=False, now=NOW)
    before, after = datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        codes = dict(
            ((a, v), c)
            for a, v, c in con.execute(
                "SELECT attribute, value, code FROM crm_category_codes"
            ).fetchall()
        )
        frame = compute_features(con, [before, after], crm_attributes=ATTRIBUTES)
        owners = dict(
            con.execute(
                "SELECT id_value, customer_id FROM identity_links WHERE id_type = 'email'"
            ).fetchall()
        )
    # first run: bob's silver, ann's gold (text order); bronze is appended later, codes stay
    assert codes == {
        ("plan", "gold"): 0,
        ("plan", "silver"): 1,
        ("plan", "bronze"): 2,
        ("region", "north"): 0,
    }
    rows = frame.set_index(["customer_id", "event_timestamp"])
    ann, bob = owners["ann@example.com"], owners["bob@example.com"]
    assert rows.loc[(ann, before), "crm_plan"] == 0  # the dated change is not known yet
    assert rows.loc[(ann, after), "crm_plan"] == 2
    assert rows.loc[(ann, after), "crm_age"] == 41.0
    assert rows.loc[(bob, after), "crm_region"] == -1  # empty value: unknown
    assert rows.loc[(bob, after), "crm_plan"] == 1
    assert str(frame["crm_plan"].dtype) == "int64" and str(frame["crm_age"].dtype) == "float64"
    assert feature_columns(crm_attributes=ATTRIBUTES)[-3:] == ["crm_plan", "crm_region", "crm_age"]
