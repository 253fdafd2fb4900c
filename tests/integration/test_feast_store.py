"""The real Feast store in a tmp state dir: build, apply, materialize, offline and online reads."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
from unified_tables import create_unified_tables

from features.build import (
    FEATURE_COLUMNS,
    FEATURE_SOURCE_TABLES,
    FEATURES_FILE_NAME,
    FeatureReport,
    build_features,
)
from omniretain.settings import Settings, load_settings

START = datetime(2025, 1, 1)
LAST_EVENT = datetime(2025, 6, 15, 12)
CUSTOMERS = [f"cust-{n:03d}" for n in range(40)]


def write_small_warehouse(settings: Settings) -> None:
    """40 customers with random purchases, sessions, surveys and consents up to LAST_EVENT."""
    rng = random.Random(11)
    rows: dict[str, list[dict]] = {table: [] for table in FEATURE_SOURCE_TABLES}

    def some_time_after(moment: datetime) -> datetime:
        return moment + (LAST_EVENT - moment) * rng.random()

    for index, customer in enumerate(CUSTOMERS):
        # the last customers appear late: no row at the early cutoffs
        first_seen = START + timedelta(days=index * 4)
        rows["customers"].append(
            {"customer_id": customer, "first_seen_at": first_seen, "n_source_ids": 1 + index % 3}
        )
        for _ in range(rng.randint(1, 12)):
            rows["purchases"].append(
                {
                    "customer_id": customer,
                    "occurred_at": some_time_after(first_seen),
                    "channel": rng.choice(["store", "web", "app"]),
                    "amount": rng.uniform(5, 200),
                    "items": 1,
                    "is_return": rng.random() < 0.1,
                }
            )
        for session in range(rng.randint(0, 6)):
            rows["web_events"].append(
                {
                    "customer_id": customer,
                    "occurred_at": some_time_after(first_seen),
                    "channel": "web",
                    "session_id": f"{customer}-{session}",
                    "event_type": rng.choice(["page_view", "cart_abandoned"]),
                }
            )
        rows["surveys"].append(
            {
                "customer_id": customer,
                "occurred_at": first_seen + timedelta(days=3),
                "survey_type": "nps",
                "score": float(rng.randint(0, 10)),
            }
        )
        rows["consents"].append(
            {
                "customer_id": customer,
                "occurred_at": first_seen,
                "channel": "email",
                "granted": rng.random() < 0.7,
            }
        )
    rows["purchases"].append(
        {
            "customer_id": CUSTOMERS[0],
            "occurred_at": LAST_EVENT,
            "channel": "store",
            "amount": 10.0,
            "items": 1,
        }
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        create_unified_tables(con, rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, FeatureReport]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("state"))
    write_small_warehouse(settings)
    return settings, build_features(settings, progress=False)


@pytest.fixture(scope="module")
def snapshots(built) -> pd.DataFrame:
    settings, _ = built
    return pd.read_parquet(settings.features_dir / FEATURES_FILE_NAME)


def test_build_writes_the_snapshot_table_and_the_feast_config(built, snapshots) -> None:
    settings, report = built
    assert report.path == settings.features_dir / FEATURES_FILE_NAME
    assert report.cutoffs[-1] == datetime(2025, 6, 16, tzinfo=UTC)  # day after the last event
    assert report.rows == len(snapshots) and report.feature_count == len(FEATURE_COLUMNS)
    assert report.customers == len(CUSTOMERS)
    assert list(snapshots.columns) == [
        "customer_id",
        "event_timestamp",
        "created_timestamp",
        *FEATURE_COLUMNS,
    ]
    assert str(snapshots["event_timestamp"].dt.tz) == "UTC"
    assert report.materialized["customers"] == len(CUSTOMERS)
    assert {"compute", "write", "feast_apply", "materialize"} <= set(report.seconds)
    config = (settings.feast_dir / "feature_store.yaml").read_text()
    assert "online_write_batch_size: 10000" in config and "project: omniretain" in config
    assert not list(settings.features_dir.glob(".*tmp"))


def test_online_reader_serves_the_latest_snapshot(built, snapshots) -> None:
    from features.store import OnlineFeatureReader

    settings, report = built
    reader = OnlineFeatureReader(settings)
    assert reader.service_name == "nba_v1"
    realtime = ["last_cart_abandoned_at", "last_case_opened_at", "cart_value"]
    assert reader.feature_names == [*FEATURE_COLUMNS, *realtime]
    latest = snapshots[snapshots["event_timestamp"] == report.cutoffs[-1]].set_index("customer_id")
    ids = [CUSTOMERS[3], "nobody", CUSTOMERS[-1]]
    rows = reader.get(ids)
    assert rows[1] is None
    for customer, row in zip(ids, rows, strict=True):
        if customer == "nobody":
            continue
        assert row is not None and list(row) == FEATURE_COLUMNS
        expected = latest.loc[customer, FEATURE_COLUMNS].astype(float)
        np.testing.assert_allclose(list(row.values()), expected.to_numpy(), equal_nan=True)
    assert reader.get([]) == []


def test_historical_features_pick_the_snapshot_per_timestamp_and_keep_order(
    built, snapshots
) -> None:
    from features.store import historical_features

    settings, report = built
    first, middle, serving = report.cutoffs
    entity_df = pd.DataFrame(
        {
            "customer_id": [
                CUSTOMERS[5],
                CUSTOMERS[0],
                CUSTOMERS[5],
                CUSTOMERS[39],
                "nobody",
                CUSTOMERS[0],
            ],
            "event_timestamp": [serving, middle + timedelta(days=3), first, first, middle, middle],
            "label": [1, 0, 1, 0, 1, 1],
        }
    )
    result = historical_features(settings, entity_df)
    assert len(result) == len(entity_df)
    pd.testing.assert_frame_equal(result[entity_df.columns], entity_df)
    assert list(result.columns) == [*entity_df.columns, *FEATURE_COLUMNS]

    indexed = snapshots.set_index(["customer_id", "event_timestamp"])
    expected_snapshot = {
        0: (CUSTOMERS[5], serving),
        1: (CUSTOMERS[0], middle),
        2: (CUSTOMERS[5], first),
        5: (CUSTOMERS[0], middle),
    }
    for position, key in expected_snapshot.items():
        np.testing.assert_allclose(
            result.loc[position, FEATURE_COLUMNS].astype(float).to_numpy(),
            indexed.loc[key, FEATURE_COLUMNS].astype(float).to_numpy(),
            equal_nan=True,
        )
    # customer 39 is first seen after the first cutoff; "nobody" is unknown: NaN, rows kept
    assert result.loc[[3, 4], FEATURE_COLUMNS].isna().all().all()


def test_apply_is_idempotent_and_survives_a_lost_online_store(built) -> None:
    import sqlite3
    from contextlib import closing

    from features.store import (
        SQLITE_ONLINE_PAGE_SIZE,
        OnlineFeatureReader,
        apply_repo,
        get_feature_store,
        materialize,
    )

    settings, _ = built

    def page_size() -> int:
        with closing(sqlite3.connect(settings.feast_dir / "online.db")) as connection:
            return int(connection.execute("PRAGMA page_size").fetchone()[0])

    assert page_size() == SQLITE_ONLINE_PAGE_SIZE == 65_536  # created by us, not by Feast
    apply_repo(settings)
    apply_repo(settings)
    store = get_feature_store(settings)
    views = sorted(view.name for view in store.list_feature_views())
    assert views == ["customer_features", "customer_realtime"]
    services = sorted(service.name for service in store.list_feature_services())
    assert services == ["churn_v1", "nba_v1"]
    assert OnlineFeatureReader(settings).get([CUSTOMERS[1]])[0] is not None

    (settings.feast_dir / "online.db").unlink()
    apply_repo(settings)
    assert OnlineFeatureReader(settings).get([CUSTOMERS[1]])[0] is None  # empty new store
    assert page_size() == SQLITE_ONLINE_PAGE_SIZE
    assert materialize(settings)["customers"] == len(CUSTOMERS)  # registry reset: full load
    assert OnlineFeatureReader(settings).get([CUSTOMERS[1]])[0] is not None
