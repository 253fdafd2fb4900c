"""Load 1M customers' features into the online store: our command vs stock Feast materialize.

Builds a synthetic snapshot parquet with the real feature list (every feature of
``features.build.feature_specs``, 78 by default), then times ``features.store.materialize``
(fast engine) into SQLite and into a local Redis, and stock ``materialize(engine="feast")``
into Redis on ``--stock-entities`` rows, extrapolated linearly to the full size when smaller
(said so in the output). Reads through Feast's own ``get_online_features`` are checked against
the parquet for a sample of customers. SQLite's floor is SQLite alone copying the loaded rows
into a fresh table of the same layout (no Python, no encoding): ``sqlite_over_floor`` says how
far our load is from it. Last line: one JSON object.

    python benchmarks/materialize.py            # 1M customers (several minutes)
    python benchmarks/materialize.py --quick    # 20k customers, a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name, _value in {"FEAST_USAGE": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

from features.build import FEATURES_FILE_NAME, feature_specs  # noqa: E402
from omniretain.settings import Settings, load_settings  # noqa: E402

CUTOFF = datetime(2025, 6, 16, tzinfo=UTC)
CHUNK_ROWS = 100_000


def write_synthetic_snapshots(path: Path, entities: int, seed: int = 7) -> int:
    """One snapshot row per customer with random values (10% NaN in float features)."""
    specs = feature_specs(load_settings().features.lookback_days)
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, entities, CHUNK_ROWS):
        size = min(CHUNK_ROWS, entities - start)
        columns = {
            "customer_id": pa.array([f"C{n:09d}" for n in range(start, start + size)]),
            "event_timestamp": pa.array([CUTOFF] * size, pa.timestamp("us", tz="UTC")),
            "created_timestamp": pa.array([CUTOFF] * size, pa.timestamp("us", tz="UTC")),
        }
        for spec in specs:
            if spec.dtype == "int64":
                columns[spec.name] = pa.array(rng.integers(0, 500, size), pa.int64())
            else:
                values = rng.gamma(2.0, 50.0, size)
                values[rng.random(size) < 0.1] = np.nan
                columns[spec.name] = pa.array(values, pa.float64())
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return len(specs)


def state(root: Path, name: str, source: Path, **features: str) -> Settings:
    from features.store import apply_repo

    settings = load_settings(state_dir=root / name, features=features)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    os.link(source, settings.features_dir / FEATURES_FILE_NAME)
    apply_repo(settings)
    return settings


def redis_server_cpu(connection_string: str) -> float:
    """CPU seconds the Redis server has used so far (user + system)."""
    from features.online_writer import redis_client

    client = redis_client(connection_string)
    info = client.info("cpu")
    client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def prefix_copy(source: Path, target: Path, rows: int) -> None:
    """The first ``rows`` rows of a parquet file, streamed (never the whole file in memory)."""
    parquet = pq.ParquetFile(source)
    with pq.ParquetWriter(target, parquet.schema_arrow) as writer:
        left = rows
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            if left <= 0:
                break
            writer.write_batch(batch.slice(0, left))
            left -= batch.num_rows


def sample_rows(source: Path, sample: int = 50) -> list[dict]:
    """Random rows of a parquet file, streamed."""
    parquet = pq.ParquetFile(source)
    rng = np.random.default_rng(1)
    wanted = set(rng.choice(parquet.metadata.num_rows, size=sample, replace=False).tolist())
    rows: list[dict] = []
    offset = 0
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
        positions = [p - offset for p in sorted(wanted) if offset <= p < offset + batch.num_rows]
        if positions:
            rows.extend(batch.take(pa.array(positions)).to_pylist())
        offset += batch.num_rows
    return rows


def check_reads(settings: Settings, source: Path, sample: int = 50) -> None:
    """Feast's get_online_features returns the parquet's values for random customers."""
    from features.store import get_feature_store

    expected = sample_rows(source, min(sample, pq.ParquetFile(source).metadata.num_rows))
    store = get_feature_store(settings)
    answer = store.get_online_features(
        features=store.get_feature_service(settings.features.feature_service),
        entity_rows=[{"customer_id": row["customer_id"]} for row in expected],
    ).to_dict()
    for position, row in enumerate(expected):
        for name, value in row.items():
            if name in ("customer_id", "event_timestamp", "created_timestamp"):
                continue
            got = answer[name][position]
            same = (got is None and value != value) or got == value
            if not same:
                raise SystemExit(f"read mismatch for {row['customer_id']}.{name}: {got} != {value}")


def sqlite_floor_seconds(settings: Settings) -> tuple[float, float, int]:
    """SQLite alone writing the loaded rows again: no Python, no encoding, already in order.

    ``INSERT ... SELECT`` of the whole online table into an empty table of the same layout in a
    new file: the least any loader can spend writing these rows into SQLite here.
    """
    import sqlite3

    from features.contract import FEATURE_VIEW
    from features.online_writer import sqlite_table_name
    from features.store import PROJECT, online_target

    table = sqlite_table_name(PROJECT, FEATURE_VIEW)
    source = online_target(settings).sqlite_path
    assert source is not None
    floor = source.with_name("floor.db")
    connection = sqlite3.connect(floor, isolation_level=None)
    connection.execute(f"ATTACH '{source}' AS loaded")
    (page_size,) = connection.execute("PRAGMA loaded.page_size").fetchone()
    for pragma in (
        f"page_size={page_size}",  # the online store's pages: the same B-tree to write
        "synchronous=OFF",
        "cache_size=-262144",
        "journal_mode=OFF",
    ):
        connection.execute(f"PRAGMA {pragma}")
    (ddl,) = connection.execute(
        "SELECT sql FROM loaded.sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    connection.execute(ddl)
    started, cpu_before = time.perf_counter(), time.process_time()
    connection.execute(f'INSERT INTO main."{table}" SELECT * FROM loaded."{table}"')
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    (rows,) = connection.execute(f'SELECT count(*) FROM main."{table}"').fetchone()
    connection.close()
    floor.unlink()
    return seconds, cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument(
        "--stock-entities",
        type=int,
        default=100_000,
        help="rows for stock materialize (extrapolated linearly when smaller)",
    )
    parser.add_argument(
        "--sqlite-entities",
        type=int,
        default=None,
        help="rows for ours into SQLite (default all; extrapolated linearly when smaller)",
    )
    parser.add_argument("--quick", action="store_true", help="20k customers, 5k for stock")
    args = parser.parse_args()
    entities = 20_000 if args.quick else args.entities
    stock_entities = min(5_000 if args.quick else args.stock_entities, entities)
    sqlite_entities = min(args.sqlite_entities or entities, entities)

    from features.local_redis import local_redis_server
    from features.store import materialize

    with tempfile.TemporaryDirectory(prefix="omniretain_bench_mat_") as folder:
        root = Path(folder)
        source = root / "full.parquet"
        started = time.perf_counter()
        features = write_synthetic_snapshots(source, entities)
        print(
            f"synthetic parquet: {entities:,} x {features} in {time.perf_counter() - started:.1f} s"
        )
        stock_source = root / "stock.parquet"
        prefix_copy(source, stock_source, stock_entities)
        sqlite_source = source
        if sqlite_entities < entities:
            sqlite_source = root / "sqlite.parquet"
            prefix_copy(source, sqlite_source, sqlite_entities)

        sqlite_state = state(root, "sqlite", sqlite_source)
        cpu_before = time.process_time()
        sqlite_run = materialize(sqlite_state)
        sqlite_cpu = time.process_time() - cpu_before
        check_reads(sqlite_state, sqlite_source)
        floor_seconds, floor_cpu, floor_rows = sqlite_floor_seconds(sqlite_state)
        print(
            f"SQLite floor: {floor_rows:,} rows copied in C in {floor_seconds:.1f} s "
            f"({floor_cpu:.1f} CPU s)"
        )
        with local_redis_server() as redis:
            redis_state = state(
                root, "redis", source, online_store="redis", redis_connection_string=f"{redis},db=0"
            )
            server_before = redis_server_cpu(redis)
            cpu_before = time.process_time()
            redis_run = materialize(redis_state)
            redis_cpu = time.process_time() - cpu_before
            redis_server_seconds = redis_server_cpu(redis) - server_before
            check_reads(redis_state, source)
            stock_state = state(
                root,
                "stock",
                stock_source,
                online_store="redis",
                redis_connection_string=f"{redis},db=1",
            )
            stock_run = materialize(stock_state, engine="feast")
            check_reads(stock_state, stock_source)

    extrapolated = stock_entities < entities
    stock_seconds = stock_run["seconds"] * entities / stock_entities
    sqlite_seconds = sqlite_run["seconds"] * entities / sqlite_entities
    figures = {
        "entities": entities,
        "features": features,
        "sqlite_seconds": round(sqlite_seconds, 1),
        "sqlite_measured_entities": sqlite_entities,
        "sqlite_measured_seconds": sqlite_run["seconds"],
        "sqlite_extrapolated": sqlite_entities < entities,
        "redis_seconds": redis_run["seconds"],
        "sqlite_floor_seconds": round(floor_seconds * entities / sqlite_entities, 1),
        "sqlite_floor_rows": floor_rows,
        "sqlite_over_floor": round(sqlite_run["seconds"] / floor_seconds, 2),
        "sqlite_floor_cpu_seconds_measured": round(floor_cpu, 1),
        "sqlite_over_floor_cpu": round(sqlite_cpu / floor_cpu, 2),
        "sqlite_cpu_seconds_measured": round(sqlite_cpu, 1),
        "redis_client_cpu_seconds": round(redis_cpu, 1),
        "redis_server_cpu_seconds": round(redis_server_seconds, 1),
        "stock_redis_seconds": round(stock_seconds, 1),
        "stock_redis_measured_entities": stock_entities,
        "stock_redis_measured_seconds": stock_run["seconds"],
        "stock_redis_extrapolated": extrapolated,
        "redis_speedup_vs_stock": round(stock_seconds / redis_run["seconds"], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, py {platform.python_version()}",
    }
    print(f"\n{'step':<38}{'seconds':>10}")
    label = "ours -> SQLite" + (
        f" (x{entities / sqlite_entities:g} extrapolated from {sqlite_entities:,})"
        if sqlite_entities < entities
        else ""
    )
    print(f"{label:<38}{sqlite_seconds:>10.1f}")
    label = "SQLite floor (rows copied in C)" + (
        f" (x{entities / sqlite_entities:g})" if sqlite_entities < entities else ""
    )
    print(f"{label:<38}{figures['sqlite_floor_seconds']:>10.1f}")
    print(f"{'ours -> Redis':<38}{figures['redis_seconds']:>10.1f}")
    label = "stock Feast -> Redis" + (
        f" (x{entities / stock_entities:g} extrapolated from {stock_entities:,})"
        if extrapolated
        else ""
    )
    print(f"{label:<38}{stock_seconds:>10.1f}")
    print(
        f"CPU seconds (load-independent): ours SQLite {figures['sqlite_cpu_seconds_measured']} "
        f"on {sqlite_entities:,}; ours Redis client {figures['redis_client_cpu_seconds']} + "
        f"server {figures['redis_server_cpu_seconds']} on {entities:,}"
    )
    print(
        f"ours / SQLite floor: x{figures['sqlite_over_floor']} wall, "
        f"x{figures['sqlite_over_floor_cpu']} CPU; "
        f"Redis speed-up vs stock: x{figures['redis_speedup_vs_stock']}; peak RSS "
        f"{figures['peak_rss_mb']} MB; load average {' '.join(figures['loadavg'])}; "
        "Feast reads checked equal to the parquet"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
