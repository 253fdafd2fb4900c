"""Batch scoring and decisions for a million customers (goal: under 60 s).

Builds a synthetic feature table shaped like the real one (rows of the latest real snapshot
resampled with replacement, new customer ids) next to a trained state, then times the whole
``omniretain score`` path on it: read parquet, both champions predict, decisions, reasons for
the top 1,000, write parquet. Needs a trained state (``--state-dir``, e.g. the demo's).

    python benchmarks/batch_score.py --state-dir DIR [--quick] [--customers N]

Last line: JSON with customers, seconds.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="a trained state")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 customers")
    args = parser.parse_args()
    customers = 50_000 if args.quick else args.customers
    for name, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}.items():
        os.environ.setdefault(name, value)

    from omniretain.settings import load_settings
    from serving.batch import features_path, read_latest_snapshot, score_latest

    trained = load_settings(state_dir=args.state_dir)
    real = read_latest_snapshot(features_path(trained))
    rng = np.random.default_rng(0)
    synthetic = real.iloc[rng.integers(0, len(real), customers)].reset_index(drop=True)
    synthetic["customer_id"] = [f"S{i:08d}" for i in range(customers)]
    work = Path(tempfile.mkdtemp(prefix="omniretain_batch_score_"))
    os.environ["MLFLOW_TRACKING_URI"] = trained.mlflow_tracking_uri  # the trained champions
    settings = load_settings(state_dir=work)
    settings.features_dir.mkdir(parents=True)
    synthetic.to_parquet(features_path(settings), index=False)

    started = time.perf_counter()
    report = score_latest(settings, work / "scores.parquet", reasons_for=1000)
    seconds = time.perf_counter() - started
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]}"
    )
    print(report.render())
    print(
        f"{customers:,} customers in {seconds:.1f} s ({customers / seconds:,.0f} per second; "
        f"goal for 1M: 60 s)"
    )
    print(json.dumps({"customers": customers, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
