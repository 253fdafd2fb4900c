"""Identity resolution on a noisy simulated population, scored against the simulator's truth.

Simulates a population with dirty rows and identifier noise (case, spaces, phone formats,
missing identifiers), runs ``omniretain ingest`` (validation, quarantine, identity resolution)
and scores the resulting ``customer_id`` of every accepted record against the true person with
pairwise precision and recall (a pair of records is predicted linked when they share a customer,
truly linked when they belong to one person).

``recall`` counts every same-person pair of accepted records; ``recall_identified`` only pairs
of records that carry at least one valid identifier (records with none, e.g. a row whose only
identifier was spoiled, cannot be linked by any identifier-based method). Last line: JSON.

    python benchmarks/identity.py            # 5,000 persons, 15 months, 2% dirty rows
    python benchmarks/identity.py --quick    # 400 persons, 8 months
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name, _value in {"FEAST_USAGE": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

from features.identity import evaluate_identity  # noqa: E402
from features.ingest import ingest  # noqa: E402
from omniretain.settings import load_settings  # noqa: E402
from omniretain.simulator import simulate  # noqa: E402


def run(customers: int, months: int, dirty_share: float, seed: int) -> dict[str, object]:
    """Simulate, ingest and score in a temporary state folder; return the figures."""
    with tempfile.TemporaryDirectory(prefix="omniretain_identity_") as folder:
        settings = load_settings(
            state_dir=Path(folder),
            simulation={"customers": customers, "months": months, "dirty_row_share": dirty_share},
        )
        settings.ensure_dirs()
        started = time.perf_counter()
        summary = simulate(settings, seed=seed, progress=False)
        simulate_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = ingest(settings, progress=False)
        ingest_seconds = time.perf_counter() - started
        scores = evaluate_identity(settings)
    return {
        "precision": round(scores["precision"], 5),
        "recall": round(scores["recall"], 5),
        "recall_identified": round(scores["recall_identified"], 5),
        "persons": scores["persons"],
        "customers": scores["customers"],
        "records": scores["records_scored"],
        "records_without_identifier": report.identity.records_without_identifier,
        "dirty_rows": summary.dirty_rows,
        "simulate_seconds": round(simulate_seconds, 2),
        "ingest_seconds": round(ingest_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--months", type=int, default=15)
    parser.add_argument("--dirty-share", type=float, default=0.02, help="share of spoiled rows")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="400 persons, 8 months")
    args = parser.parse_args()
    customers, months = (400, 8) if args.quick else (args.customers, args.months)
    figures = run(customers, months, args.dirty_share, args.seed)
    print(
        f"identity resolution: {customers:,} persons, {months} months, {args.dirty_share:.0%} dirty"
    )
    print(f"{'records scored':<28}{figures['records']:>12,}")
    print(f"{'persons -> customers':<28}{figures['persons']:>6,} -> {figures['customers']:,}")
    print(f"{'pairwise precision':<28}{figures['precision']:>12.4f}")
    print(f"{'pairwise recall':<28}{figures['recall']:>12.4f}")
    print(f"{'recall (identified records)':<28}{figures['recall_identified']:>12.4f}")
    print(
        f"ingest {figures['ingest_seconds']} s (simulate {figures['simulate_seconds']} s), peak "
        f"{figures['peak_rss_mb']} MB; load average {' '.join(figures['loadavg'])}; "
        f"{figures['cpus']} CPUs"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
