"""Online feature reads for serving: our ``OnlineFeatureReader`` vs a raw Feast call, same run.

Fills SQLite and a local Redis with ``--customers`` synthetic customers (our materialize), then
times, for 1 and 100 customers per call, ``OnlineFeatureReader.get`` (the serving path, service
``nba_v1``) and ``FeatureStore.get_online_features(features=service, ...).to_dict()`` on the
same ids. ``overhead_ratio`` is our worst p99 over Feast's p99 of the same case (below 1: ours
is faster). Last line: one JSON object.

    python benchmarks/online_read.py            # 20k customers, 1000 / 100 calls per case
    python benchmarks/online_read.py --quick    # 2k customers, 200 / 20 calls
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _name, _value in {"FEAST_USAGE": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

from materialize import state, write_synthetic_snapshots  # noqa: E402


def p99_ms(call, id_batches: list[list[str]]) -> float:
    """99th percentile of the call's wall time over the batches, in milliseconds."""
    for ids in id_batches[:5]:
        call(ids)  # warm caches and connections
    timings = []
    for ids in id_batches:
        started = time.perf_counter()
        call(ids)
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 99))


def measure(settings, customers: int, calls: dict[int, int]) -> dict[str, float]:
    from features.store import OnlineFeatureReader, get_feature_store

    reader = OnlineFeatureReader(settings)
    store = get_feature_store(settings)
    service = store.get_feature_service(reader.service_name)

    def feast_call(ids: list[str]) -> None:
        store.get_online_features(
            features=service, entity_rows=[{"customer_id": c} for c in ids]
        ).to_dict()

    rng = np.random.default_rng(3)
    figures: dict[str, float] = {}
    for size, repeats in calls.items():
        batches = [[f"C{n:09d}" for n in rng.integers(0, customers, size)] for _ in range(repeats)]
        figures[f"ours_{size}"] = p99_ms(reader.get, batches)
        figures[f"feast_{size}"] = p99_ms(feast_call, batches)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    customers = 2_000 if args.quick else args.customers
    calls = {1: 200, 100: 20} if args.quick else {1: 1000, 100: 100}

    from features.local_redis import local_redis_server
    from features.store import materialize

    with tempfile.TemporaryDirectory(prefix="omniretain_bench_read_") as folder:
        root = Path(folder)
        source = root / "snapshots.parquet"
        features = write_synthetic_snapshots(source, customers)
        sqlite_state = state(root, "sqlite", source)
        materialize(sqlite_state)
        results = {"sqlite": measure(sqlite_state, customers, calls)}
        with local_redis_server() as redis:
            redis_state = state(
                root, "redis", source, online_store="redis", redis_connection_string=redis
            )
            materialize(redis_state)
            results["redis"] = measure(redis_state, customers, calls)

    print(f"{customers:,} customers x {features} features (+3 real-time), p99 in ms")
    print(f"{'store':<8}{'ids':>5}{'ours':>10}{'feast':>10}{'ratio':>8}")
    ratios = []
    for store_name, figures in results.items():
        for size in calls:
            ours, feast = figures[f"ours_{size}"], figures[f"feast_{size}"]
            ratios.append(ours / feast)
            print(f"{store_name:<8}{size:>5}{ours:>10.2f}{feast:>10.2f}{ours / feast:>8.2f}")
    summary = {
        "sqlite_p99_ms_1": round(results["sqlite"]["ours_1"], 3),
        "redis_p99_ms_1": round(results["redis"]["ours_1"], 3),
        "sqlite_p99_ms_100": round(results["sqlite"]["ours_100"], 3),
        "redis_p99_ms_100": round(results["redis"]["ours_100"], 3),
        "overhead_ratio": round(max(ratios), 3),
        "feast_sqlite_p99_ms_1": round(results["sqlite"]["feast_1"], 3),
        "feast_redis_p99_ms_1": round(results["redis"]["feast_1"], 3),
        "feast_sqlite_p99_ms_100": round(results["sqlite"]["feast_100"], 3),
        "feast_redis_p99_ms_100": round(results["redis"]["feast_100"], 3),
        "customers": customers,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, py {platform.python_version()}",
    }
    print(f"load average {' '.join(summary['loadavg'])} (shared 2 cores: timings inflated)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
