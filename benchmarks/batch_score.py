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

from serving.batch import BATCH_THREADS  # noqa: E402


def predict_floor(settings: object, frame: object) -> float:
    """Seconds of the champions' bare ``booster.predict`` calls on the scored rows (the same
    trees and rows as the run, no calibration, no decision, no I/O): the floor of the predict
    step."""
    from serving.batch import feature_matrix
    from serving.models import load_model_set

    models = load_model_set(settings)  # type: ignore[arg-type]
    boosters = []
    for kind in ("churn", "repurchase", "value"):
        loaded = getattr(models, kind)
        if loaded is not None:
            model = loaded.model
            boosters.append((model.booster, model.feature_names, model.best_iteration, False))
    if models.uplift is not None:
        uplift = models.uplift.model
        arms = len(uplift.arms) + 1 if uplift.learner == "s_learner" else 1
        for booster in uplift.boosters.values():
            boosters.append((booster, uplift.feature_names, None, arms))
    total = 0.0
    for booster, names, iterations, stacked_arms in boosters:
        matrix = feature_matrix(frame, names)  # type: ignore[arg-type]
        if stacked_arms:  # the S-learner scores every row once per arm (and control)
            matrix = np.column_stack([matrix, np.zeros(len(matrix))])
        started = time.perf_counter()
        for _ in range(stacked_arms or 1):
            booster.predict(matrix, num_iteration=iterations, num_threads=BATCH_THREADS)
        total += time.perf_counter() - started
    return total


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
    floor = predict_floor(settings, synthetic)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]}"
    )
    print(report.render())
    print(
        f"{customers:,} customers in {seconds:.1f} s ({customers / seconds:,.0f} per second; "
        f"goal for 1M: 60 s)"
    )
    print(
        "raw LightGBM floor (every champion's booster.predict on the float64 matrix, "
        f"{BATCH_THREADS} threads): {floor:.1f} s; whole run / floor = {seconds / floor:.1f}x"
    )
    print(json.dumps({"customers": customers, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
