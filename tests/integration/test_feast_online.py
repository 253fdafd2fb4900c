"""Our fast materialize, push source and direct reader against stock Feast, on SQLite and Redis.

Each store is filled twice, once by our writer and once by stock ``materialize``, from the same
snapshot parquet; Feast's own ``get_online_features`` must answer the same for both.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import FEATURES_FILE_NAME, feature_specs
from omniretain.settings import Settings, load_settings

CUSTOMERS = [f"c{n:03d}" for n in range(30)] + ["ünï-cödé", ""]
CUTOFFS = [datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)]


def snapshot_frame(seed: int, cutoffs: list[datetime], customers: list[str]) -> pd.DataFrame:
    """Random snapshots with NaNs, negative and zero values, in the build's column layout."""
    rng = np.random.default_rng(seed)
    specs = feature_specs(load_settings().features.lookback_days)
    rows = [(customer, cutoff) for cutoff in cutoffs for customer in customers]
    frame = pd.DataFrame(
        {
            "customer_id": [customer for customer, _ in rows],
            "event_timestamp": pd.to_datetime([cutoff for _, cutoff in rows], utc=True),
            "created_timestamp": pd.Timestamp("2025-05-01", tz="UTC"),
        }
    )
    for spec in specs:
        if spec.dtype == "int64":
            frame[spec.name] = rng.integers(-3, 400, len(frame)).astype("int64")
        else:
            values = rng.normal(0, 100, len(frame))
            values[rng.random(len(frame)) < 0.15] = np.nan
            values[rng.random(len(frame)) < 0.05] = 0.0
            frame[spec.name] = values
    return frame


def make_state(root: Path, online_store: str, redis: str | None, frame: pd.DataFrame) -> Settings:
    from features.store import apply_repo

    extra = {"online_store": online_store}
    if redis is not None:
        extra["redis_connection_string"] = redis
    settings = load_settings(state_dir=root, features=extra)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(settings.features_dir / FEATURES_FILE_NAME, index=False)
    apply_repo(settings)
    return settings


def feast_answer(settings: Settings, ids: list[str], service: str) -> dict[str, list]:
    from features.store import get_feature_store

    store = get_feature_store(settings)
    return store.get_online_features(
        features=store.get_feature_service(service),
        entity_rows=[{"customer_id": customer} for customer in ids],
    ).to_dict()


def assert_same_answers(left: dict[str, list], right: dict[str, list]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        for a, b in zip(left[name], right[name], strict=True):
            if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
                assert math.isnan(b), name
            else:
                assert a == b and type(a) is type(b), (name, a, b)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stores(request, tmp_path_factory) -> tuple[Settings, Settings, pd.DataFrame]:
    """(ours, stock) states with the same parquet; Redis states use databases 1 and 2."""
    frame = snapshot_frame(3, CUTOFFS, CUSTOMERS)
    redis = None
    if request.param == "redis":
        redis = request.getfixturevalue("redis_connection_string")
        import redis as redis_py

        host, port = redis.split(":")
        for db in (1, 2):
            redis_py.Redis(host=host, port=int(port), db=db).flushdb()
    ours = make_state(
        tmp_path_factory.mktemp("ours"),
        request.param,
        None if redis is None else f"{redis},db=1",
        frame,
    )
    stock = make_state(
        tmp_path_factory.mktemp("stock"),
        request.param,
        None if redis is None else f"{redis},db=2",
        frame,
    )
    from features.store import materialize

    assert materialize(ours)["customers"] == len(CUSTOMERS)
    assert materialize(stock, engine="feast")["customers"] == len(CUSTOMERS)
    return ours, stock, frame


IDS = [*CUSTOMERS, "nobody"]


def test_fast_materialize_answers_like_stock_materialize(stores) -> None:
    ours, stock, frame = stores
    for service in ("churn_v1", "nba_v1"):
        ours_answer = feast_answer(ours, IDS, service)
        assert_same_answers(ours_answer, feast_answer(stock, IDS, service))
    latest = frame[frame["event_timestamp"] == CUTOFFS[-1]].set_index("customer_id")
    answer = feast_answer(ours, IDS, "churn_v1")
    for position, customer in enumerate(CUSTOMERS):
        value = answer["purchases_90d"][position]
        assert value == latest.loc[customer, "purchases_90d"]
    assert answer["purchases_90d"][-1] is None


def test_direct_reader_returns_what_feast_returns(stores) -> None:
    from features.store import OnlineFeatureReader

    ours, _, _ = stores
    reader = OnlineFeatureReader(ours)
    answer = feast_answer(ours, IDS, "nba_v1")
    rows = reader.get(IDS)
    assert rows[-1] is None
    for position, row in enumerate(rows[:-1]):
        assert row is not None
        for name in reader.feature_names:
            expected = answer[name][position]
            if expected is None:
                assert name not in row or math.isnan(row[name]), name
            else:
                assert row[name] == pytest.approx(float(expected), nan_ok=True), name


def test_incremental_materialize_writes_only_newer_snapshots(stores) -> None:
    from features.store import materialize

    ours, _, frame = stores
    assert materialize(ours)["customers"] == 0  # nothing newer than the previous load
    newer = snapshot_frame(4, [CUTOFFS[-1] + timedelta(days=30)], CUSTOMERS[:5])
    both = pd.concat([frame, newer], ignore_index=True)
    both.to_parquet(ours.features_dir / FEATURES_FILE_NAME, index=False)
    try:
        assert materialize(ours)["customers"] == 5
        answer = feast_answer(ours, CUSTOMERS[:6], "churn_v1")
        assert answer["purchases_90d"][:5] == newer["purchases_90d"].tolist()
        older = frame[(frame["event_timestamp"] == CUTOFFS[-1])].set_index("customer_id")
        assert answer["purchases_90d"][5] == older.loc[CUSTOMERS[5], "purchases_90d"]
    finally:
        frame.to_parquet(ours.features_dir / FEATURES_FILE_NAME, index=False)
        materialize(ours, full=True)


def test_pushed_events_are_read_at_once_and_merge_fields(stores) -> None:
    from features.store import OnlineFeatureReader, push_events

    ours, _, _ = stores
    reader = OnlineFeatureReader(ours)
    customer = CUSTOMERS[7]
    assert "cart_value" not in reader.get([customer])[0]
    moment = datetime(2025, 4, 2, 10, tzinfo=UTC)
    pushed = push_events(
        ours,
        pd.DataFrame(
            {
                "customer_id": [customer],
                "event_timestamp": [moment],
                "last_cart_abandoned_at": [int(moment.timestamp())],
                "cart_value": [42.5],
            }
        ),
    )
    assert pushed == 1
    row = reader.get([customer])[0]
    assert row["cart_value"] == 42.5 and row["last_cart_abandoned_at"] == moment.timestamp()
    assert "last_case_opened_at" not in row
    later = moment + timedelta(hours=1)
    push_events(
        ours,
        pd.DataFrame(
            {
                "customer_id": [customer],
                "event_timestamp": [later],
                "last_case_opened_at": [int(later.timestamp())],
            }
        ),
    )
    row = reader.get([customer])[0]
    assert row["last_case_opened_at"] == later.timestamp()
    assert row["cart_value"] == 42.5  # kept from the earlier push
    answer = feast_answer(ours, [customer], "nba_v1")
    assert answer["cart_value"] == [42.5]
    assert answer["last_case_opened_at"] == [int(later.timestamp())]


def test_push_rejects_unknown_fields(stores) -> None:
    from features.store import FeatureStoreError, push_events

    ours, _, _ = stores
    with pytest.raises(FeatureStoreError, match="unknown real-time fields"):
        push_events(
            ours,
            pd.DataFrame({"customer_id": ["x"], "event_timestamp": [CUTOFFS[0]], "basket": [1.0]}),
        )


# ---- SQLite: the rebuilt table ----------------------------------------------------------------
def online_table(settings: Settings) -> tuple[sqlite3.Connection, str]:
    from features.store import ONLINE_STORE_FILE, PROJECT

    connection = sqlite3.connect(settings.feast_dir / ONLINE_STORE_FILE)
    return connection, f"{PROJECT}_customer_features"


def test_first_sqlite_load_is_one_primary_key_tree_that_feast_reads_and_writes(
    tmp_path: Path,
) -> None:
    """WITHOUT ROWID, Feast's reads use the key, ``apply`` keeps it, stock Feast upserts into it."""
    from features.store import apply_repo, materialize

    frame = snapshot_frame(5, CUTOFFS, CUSTOMERS)
    ours = make_state(tmp_path / "ours", "sqlite", None, frame)
    stock = make_state(tmp_path / "stock", "sqlite", None, frame)
    materialize(ours)
    materialize(stock, engine="feast")
    connection, table = online_table(ours)
    with connection:
        (ddl,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        plan = connection.execute(
            f'EXPLAIN QUERY PLAN SELECT entity_key, feature_name, value, event_ts FROM "{table}" '
            "WHERE entity_key IN (?, ?) ORDER BY entity_key",
            (b"a", b"b"),
        ).fetchall()
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    connection.close()
    assert ddl.endswith("WITHOUT ROWID") and "PRIMARY KEY" in " ".join(row[-1] for row in plan)
    assert not any(name.endswith("__loading") for name in names)
    apply_repo(ours)  # Feast's CREATE INDEX IF NOT EXISTS finds the name: nothing to rebuild
    assert_same_answers(feast_answer(ours, IDS, "churn_v1"), feast_answer(stock, IDS, "churn_v1"))
    materialize(ours, engine="feast", full=True)  # Feast's own upsert into our table
    assert_same_answers(feast_answer(ours, IDS, "churn_v1"), feast_answer(stock, IDS, "churn_v1"))


def test_an_interrupted_first_load_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """Batches of a first load land in a side table: without the final swap nothing is served."""
    import pyarrow as pa

    from features.online_writer import open_writer
    from features.store import (
        apply_repo,
        get_feature_store,
        materialize,
        online_target,
        view_layout,
    )

    frame = snapshot_frame(6, CUTOFFS[-1:], CUSTOMERS)
    ours = make_state(tmp_path, "sqlite", None, frame)
    layout = view_layout(get_feature_store(ours).get_feature_view("customer_features"))
    writer = open_writer(online_target(ours), layout, "customer_id")
    writer.write(pa.Table.from_pandas(frame.iloc[:10], preserve_index=False))
    writer._wait()  # noqa: SLF001 - the batch committed, then the process "dies" before close
    writer._pool.shutdown()  # noqa: SLF001
    writer._connection.close()  # noqa: SLF001
    assert all(
        value is None for value in feast_answer(ours, CUSTOMERS, "churn_v1")["purchases_90d"]
    )
    apply_repo(ours)  # as the next build-features does
    assert materialize(ours)["customers"] == len(CUSTOMERS)
    answer = feast_answer(ours, CUSTOMERS, "churn_v1")
    assert answer["purchases_90d"] == frame["purchases_90d"].tolist()
    connection, _ = online_table(ours)
    names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    connection.close()
    assert not any(name.endswith("__loading") for name in names)
