"""Batch scoring and decisions for a million customers (goal: under 60 s).

Builds a synthetic feature table shaped like the real one (rows of the latest real snapshot
resampled with replacement, new customer ids) next to a trained state, then times the whole
``omniretain score`` path on it: read parquet, both champions predict, decisions, reasons for
the top 1,000, write parquet, log every decision. The champions' trees are compiled (lleaves)
once per champion and cached under the trained state; the compile is timed apart and printed,
``seconds`` is the scoring run on the compiled champions. Needs a trained state
(``--state-dir``, e.g. the demo's).

    python benchmarks/batch_score.py --state-dir DIR [--quick] [--customers N]

Last line: JSON with customers, seconds (and cpu_seconds, compile_seconds, models_compiled,
lightgbm_floor_seconds, log_seconds: the decision log's step).
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
    from serving.batch import compile_champions, features_path, read_latest_snapshot, score_latest
    from serving.compiled import compiled_dir
    from serving.model_cache import cache_dir
    from serving.models import load_model_set

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

    # The compiled champions are cached with the trained state, as `omniretain score` on it
    # would: the first run on new champions compiles them (timed here, apart), later runs load.
    compiled_cache = compiled_dir(cache_dir(trained))
    compiled_cache.mkdir(parents=True, exist_ok=True)
    compiled_dir(cache_dir(settings)).parent.mkdir(parents=True)
    compiled_dir(cache_dir(settings)).symlink_to(compiled_cache)
    started = time.perf_counter()
    compiling = compile_champions(load_model_set(settings), settings)
    compile_seconds = time.perf_counter() - started

    started, cpu = time.perf_counter(), time.process_time()
    report = score_latest(settings, work / "scores.parquet", reasons_for=1000)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu
    floor = predict_floor(settings, synthetic)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]}"
    )
    print(
        f"compile: {compiling.compiled} champion model(s) compiled now, {compiling.cached} "
        f"loaded from {compiled_cache}, {compiling.failed} left to LightGBM: "
        f"{compile_seconds:.1f} s (once per champion version, before the timed run)"
    )
    print(report.render())
    print(
        f"{customers:,} customers in {seconds:.1f} s, {cpu_seconds:.1f} CPU-s "
        f"({customers / seconds:,.0f} per second; goal for 1M: 60 s); `seconds` is this run, "
        "on compiled champions (their cached libraries loaded in its compile step); its "
        "load_models is warm (MLflow imported and the champions copied into the model cache "
        "before): a new `omniretain score` process adds the MLflow import, seconds of CPU"
    )
    print(
        "raw LightGBM floor (every champion's booster.predict on the float64 matrix, "
        f"{BATCH_THREADS} threads): {floor:.1f} s; whole run / floor = {seconds / floor:.1f}x"
    )
    print(
        json.dumps(
            {
                "customers": customers,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                "compile_seconds": round(compile_seconds, 2),
                "models_compiled": compiling.compiled,
                "lightgbm_floor_seconds": round(floor, 2),
                "log_seconds": report.seconds["log"],
            }
        )
    )


if __name__ == "__main__":
    main()
