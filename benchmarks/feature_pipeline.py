"""Ingest + identity resolution + point-in-time feature build on a large simulated retailer.

Simulates ``--customers`` persons over ``--months`` (about 130 raw rows per person-year), then
times, in one process: ``ingest`` (validation, quarantine, duplicates, identity resolution,
unified tables) and the feature build (``compute_features`` over the snapshot grid and the
parquet write; the Feast apply/materialize step is benchmarked by ``materialize.py``). The
simulation is not timed. Last line: one JSON object.

    python benchmarks/feature_pipeline.py            # 100,000 customers, >= 10M events
    python benchmarks/feature_pipeline.py --quick    # 3,000 customers
    python benchmarks/feature_pipeline.py --keep DIR # reuse / keep the simulated feeds in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name, _value in {"FEAST_USAGE": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

import duckdb  # noqa: E402

from features.build import (  # noqa: E402
    FEATURES_FILE_NAME,
    compute_features,
    event_time_range,
    snapshot_cutoffs,
    write_features_atomically,
)
from features.ingest import ingest, limit_memory  # noqa: E402
from omniretain.settings import Settings, load_settings  # noqa: E402
from omniretain.simulator import simulate  # noqa: E402


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all DuckDB threads): steadier than wall time
    on a loaded machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(settings: Settings, customers: int, months: int, reuse: bool) -> dict[str, object]:
    """Simulate (unless reused), then time ingest and the feature build."""
    marker = settings.truth_dir / "simulation.json"
    simulate_seconds = None
    if not (reuse and marker.exists()):
        started = time.perf_counter()
        simulate(settings, customers=customers, months=months, progress=False)
        simulate_seconds = round(time.perf_counter() - started, 1)
    settings.warehouse_path.unlink(missing_ok=True)
    shutil.rmtree(settings.features_dir, ignore_errors=True)

    started, cpu_started = time.perf_counter(), cpu_seconds()
    report = ingest(settings, progress=False)
    ingest_seconds = time.perf_counter() - started
    ingest_cpu = cpu_seconds() - cpu_started

    started = time.perf_counter()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        limit_memory(con, settings.features.warehouse_memory_limit)
        events = sum(
            con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            for table in (
                "purchases",
                "web_events",
                "messages",
                "contacts",
                "social",
                "surveys",
                "consents",
                "campaigns",
                "loyalty",
            )
        )
        first, last = event_time_range(con)
        cutoffs = snapshot_cutoffs(first, last, settings.labels)
        count_seconds = time.perf_counter() - started
        started, compute_cpu_started = time.perf_counter(), cpu_seconds()
        frame = compute_features(
            con, cutoffs, settings.features.lookback_days, settings.crm.attributes
        )
        compute_seconds = time.perf_counter() - started
        compute_cpu = cpu_seconds() - compute_cpu_started
    started = time.perf_counter()
    write_features_atomically(frame, settings.features_dir / FEATURES_FILE_NAME)
    write_seconds = time.perf_counter() - started
    cpu_total = cpu_seconds() - cpu_started
    totals = report.totals()
    return {
        "customers": report.identity.customers,
        "persons": customers,
        "events": int(events),
        "rows_read": totals.read,
        "seconds": round(ingest_seconds + compute_seconds + write_seconds, 1),
        "cpu_seconds": round(cpu_total, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_cpu_seconds": round(ingest_cpu, 1),
        "validate_stage_seconds": round(ingest_seconds - report.identity_seconds, 1),
        "validate_stage_cpu_seconds": round(ingest_cpu - report.identity_cpu_seconds, 1),
        "identity_seconds": round(report.identity_seconds, 1),
        "identity_cpu_seconds": round(report.identity_cpu_seconds, 1),
        "compute_features_seconds": round(compute_seconds, 1),
        "compute_features_cpu_seconds": round(compute_cpu, 1),
        "write_seconds": round(write_seconds, 1),
        "count_seconds": round(count_seconds, 1),
        "ingest_us_per_row": round(ingest_seconds / max(totals.read, 1) * 1e6, 2),
        "snapshot_rows": len(frame),
        "cutoffs": len(cutoffs),
        "features": len(frame.columns) - 2,
        "simulate_seconds": simulate_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3,000 customers, 12 months")
    parser.add_argument(
        "--keep", type=Path, default=None, help="state folder to keep (and reuse) the feeds in"
    )
    args = parser.parse_args()
    customers, months = (3_000, 12) if args.quick else (args.customers, args.months)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="omniretain_pipeline_"))
    try:
        settings = load_settings(state_dir=folder.resolve())
        settings.ensure_dirs()
        figures = run(settings, customers, months, reuse=args.keep is not None)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("persons simulated / customers resolved", f"{customers:,} / {figures['customers']:,}"),
        ("raw rows read / unified events", f"{figures['rows_read']:,} / {figures['events']:,}"),
        (
            "validate, dedup, stage",
            f"{figures['validate_stage_seconds']} s "
            f"(CPU {figures['validate_stage_cpu_seconds']} s)",
        ),
        (
            "identity + unified tables",
            f"{figures['identity_seconds']} s (CPU {figures['identity_cpu_seconds']} s)",
        ),
        (
            "ingest in all",
            f"{figures['ingest_seconds']} s (CPU {figures['ingest_cpu_seconds']} s; "
            f"{figures['ingest_us_per_row']} us/row)",
        ),
        (
            "compute_features",
            f"{figures['compute_features_seconds']} s "
            f"(CPU {figures['compute_features_cpu_seconds']} s; "
            f"{figures['snapshot_rows']:,} rows = "
            f"customers x {figures['cutoffs']} cutoffs, {figures['features']} features)",
        ),
        ("parquet write", f"{figures['write_seconds']} s"),
        ("total (goal < 120 s on 2 cores)", f"{figures['seconds']} s"),
        ("CPU time (user + system, all threads)", f"{figures['cpu_seconds']} s"),
        ("peak RSS", f"{figures['peak_rss_mb']:,} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"load average {' '.join(figures['loadavg'])}; {figures['cpus']} CPUs")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
