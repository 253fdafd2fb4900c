"""Our Redis writer against a real ``redis-server``: DUMP payloads, RESTORE and HSET fallback."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from features.online_writer import (
    OnlineTarget,
    RedisOnlineWriter,
    ViewLayout,
    cells_from_bytes,
    double_value_cells,
    dump_payloads,
    int64_value_cells,
    redis_client,
)

LAYOUT = ViewLayout("customer_features", ("spend_90d", "orders_90d"), ("float64", "int64"))


def snapshot(ids: list[str], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    spend = rng.normal(0, 100, len(ids))
    spend[::4] = np.nan
    orders = pa.array([None if n % 5 == 0 else int(n) for n in rng.integers(-5, 10**6, len(ids))])
    return pa.table(
        {
            "customer_id": ids,
            "event_timestamp": pa.array(
                [datetime(2025, 6, 16, 12, 30, 5, 123456, tzinfo=UTC)] * len(ids),
                pa.timestamp("us", tz="UTC"),
            ),
            "spend_90d": spend,
            "orders_90d": pa.array(orders, pa.int64()),
        }
    )


@pytest.fixture
def redis(redis_connection_string: str):
    client = redis_client(f"{redis_connection_string},db=3")
    client.flushdb()
    yield client, f"{redis_connection_string},db=3"
    client.flushdb()
    client.close()


def test_dump_payloads_are_what_redis_dumps_after_hset(redis) -> None:
    client, _ = redis
    client.config_set("rdbcompression", "no")  # DUMP compresses long strings by default
    fields = [
        (b"_ts:customer_features", cells_from_bytes([b"\x08\x80\xe9\xc3\xc2\x06"] * 4)),
        (b"\x01\xff\x00a", double_value_cells(pa.array([1.5, None, float("nan"), -0.0]))),
        (b"abcd", int64_value_cells(pa.array([3, None, -7, 2**62], pa.int64()))),
    ]
    payloads = dump_payloads(fields)
    assert payloads is not None
    payloads = payloads.to_list()
    for row in range(4):
        key = b"k%d" % row
        client.execute_command(
            "HSET",
            key,
            *[part for field, cells in fields for part in (field, cells.to_list()[row])],
        )
        assert client.dump(key) == payloads[row]


REALTIME = ViewLayout("customer_realtime", ("cart_value",), ("float64",))


def write(target: OnlineTarget, layout: ViewLayout, table: pa.Table, restore: bool = True) -> None:
    writer = RedisOnlineWriter(target, layout, "customer_id", ttl_seconds=3600)
    writer._use_restore = restore  # noqa: SLF001 - the HSET-only reference
    for start in range(0, table.num_rows, 5):  # batches of 5: replies read one batch late
        writer.write(table.slice(start, 5))
    writer.close()


def test_writer_restores_new_keys_and_hsets_existing_ones(redis) -> None:
    """Some keys already hold another view's fields: they keep them, as with HSET only."""
    client, connection_string = redis
    target = OnlineTarget("redis", "omniretain", 3, redis_connection_string=connection_string)
    ids = [f"c{n:02d}" for n in range(23)] + ["ünï", ""]
    snapshots = snapshot(ids, seed=1)
    carts = snapshots.select(["customer_id", "event_timestamp"]).slice(0, 10)
    carts = carts.append_column("cart_value", pa.array([42.5] * 10))
    results = []
    for restore in (True, False):
        client.flushdb()
        write(target, REALTIME, carts, restore)
        write(target, LAYOUT, snapshots, restore)
        results.append({key: client.hgetall(key) for key in client.scan_iter()})
        assert all(0 < client.ttl(key) <= 3600 for key in results[-1])
    restored, reference = results
    assert len(restored) == len(ids) and restored == reference
    assert sum(len(fields) == 5 for fields in restored.values()) == 10  # both views' fields
