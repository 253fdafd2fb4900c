"""Training speed: the churn model on 1 million snapshots x 60 features (goal: under 60 s).

A synthetic training frame shaped like ours (customers x monthly cutoffs, 60 numeric features
including recency and frequency, a churn label driven by a few of them) goes through our
training code path, :func:`training.train.train_target`: the time split, LightGBM with early
stopping on the calibration cutoff, the calibrator, holdout metrics, and the RFM and logistic
baselines. Feast retrieval is not timed. In the same run, plain ``lgb.train`` on the same fit
matrix with the same parameters and the same validation rows, so the overhead of our pipeline
shows; the fit + calibration part of ours is reported on its own too.

    python benchmarks/train_speed.py [--quick] [--rows N] [--features N]

Last line: JSON with rows, features, seconds, lightgbm_raw_seconds (and the breakdown).
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
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CUTOFFS = 10  # 8 fit cutoffs, 1 calibration, 1 holdout (training.holdout_snapshots = 1)


def synthetic_frame(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    """Customers x monthly cutoffs with a churn label that depends on recency and frequency."""
    rng = np.random.default_rng(seed)
    customers = rows // CUTOFFS
    cutoffs = pd.date_range("2025-01-31", periods=CUTOFFS, freq="30D", tz="UTC")
    n = customers * CUTOFFS
    recency = rng.exponential(60.0, n)
    frequency = rng.poisson(np.clip(3.0 - recency / 60.0, 0.2, None))
    engagement = rng.normal(size=n)
    logit = -0.5 + recency / 45.0 - 0.6 * frequency - 0.5 * engagement
    churned = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    columns = {
        "customer_id": np.tile(np.arange(customers), CUTOFFS).astype(str),
        "event_timestamp": np.repeat(cutoffs, customers),
        "churned": churned,
        "repurchased": np.full(n, np.nan),
        "days_since_last_purchase": recency,
        "purchases_90d": frequency.astype(np.float64),
        "engagement_score": engagement,
    }
    for index in range(features - 3):
        mix = rng.normal(size=n)
        # Half the others are noisy copies of the signals (correlated, like real windows).
        if index % 2 == 0:
            mix += 0.3 * (recency / 60.0) * (index % 3) - 0.2 * frequency * (index % 5 == 0)
        columns[f"feature_{index:02d}"] = mix
    frame = pd.DataFrame(columns)
    missing = rng.uniform(size=n) < 0.05  # customers without a snapshot row: NaN features
    frame.loc[missing, "engagement_score"] = np.nan
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="50,000 rows")
    args = parser.parse_args()
    rows = 50_000 if args.quick else args.rows
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import lightgbm as lgb

    from omniretain.settings import load_settings
    from training.labels import LABEL_COLUMNS
    from training.model import fit_calibrated_classifier, lightgbm_parameters
    from training.train import (
        feature_columns,
        labels_of,
        logistic_baseline_metrics,
        matrix,
        time_split,
        train_target,
    )

    settings = load_settings(state_dir=Path(tempfile.mkdtemp(prefix="omniretain_train_speed_")))
    frame = synthetic_frame(rows, args.features)
    label = LABEL_COLUMNS["churn"]
    columns = feature_columns(frame)
    print(f"frame: {len(frame):,} rows x {len(columns)} features, {CUTOFFS} cutoffs")

    started = time.perf_counter()
    trained = train_target(settings, frame, "churn")
    seconds = time.perf_counter() - started

    # The fit + calibration part alone, and plain LightGBM on the same matrices.
    split = time_split(frame, label, settings.training.holdout_snapshots)
    fit_x, fit_y = matrix(split.fit, columns), labels_of(split.fit, label)
    valid_x, valid_y = matrix(split.calibration, columns), labels_of(split.calibration, label)
    training = settings.training
    started = time.perf_counter()
    fit_calibrated_classifier(
        fit_x,
        fit_y,
        valid_x,
        valid_y,
        columns,
        training.lightgbm,
        training.early_stopping_rounds,
        training.calibration,
    )
    fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    logistic_baseline_metrics(split, label, columns)
    logistic_seconds = time.perf_counter() - started

    params = lightgbm_parameters(training.lightgbm)
    rounds = params.pop("n_estimators", 100)
    params = {
        "objective": "binary",
        "metric": "binary_logloss",
        "num_threads": params.pop("n_jobs"),
        "seed": params.pop("random_state"),
        **params,
    }
    started = time.perf_counter()
    train_set = lgb.Dataset(fit_x, fit_y, feature_name=columns, free_raw_data=False)
    valid_set = lgb.Dataset(valid_x, valid_y, reference=train_set)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(training.early_stopping_rounds, verbose=False)],
    )
    raw_seconds = time.perf_counter() - started

    metrics = trained.metrics
    load = open("/proc/loadavg").read().split()[:3]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {' '.join(load)}")
    print(f"{'path':<44}{'seconds':>10}{'trees':>8}")
    print(
        f"{'ours: train_target (split+fit+cal+metrics+baselines)':<44}{seconds:>10.1f}"
        f"{trained.model.best_iteration:>8}"
    )
    print(f"{'ours: fit_calibrated_classifier only':<44}{fit_seconds:>10.1f}")
    print(f"{'ours: logistic baseline only':<44}{logistic_seconds:>10.1f}")
    print(
        f"{'plain lgb.train, same matrix and params':<44}{raw_seconds:>10.1f}"
        f"{booster.best_iteration:>8}"
    )
    print(
        f"overhead ratio (ours / plain): {seconds / raw_seconds:.2f} "
        f"(fit + calibration only: {fit_seconds / raw_seconds:.2f})"
    )
    print(
        f"holdout ROC AUC: model {metrics['model']['roc_auc']:.4f}, "
        f"rfm {metrics['rfm']['roc_auc']:.4f}, logistic {metrics['logistic']['roc_auc']:.4f}"
    )
    print(f"goal: under 60 s -> {'met' if seconds < 60 else 'not met'} (at this load)")
    print(
        json.dumps(
            {
                "rows": len(frame),
                "features": len(columns),
                "seconds": round(seconds, 2),
                "lightgbm_raw_seconds": round(raw_seconds, 2),
                "fit_calibration_seconds": round(fit_seconds, 2),
                "logistic_baseline_seconds": round(logistic_seconds, 2),
                "overhead_ratio": round(seconds / raw_seconds, 2),
                "trees": trained.model.best_iteration,
                "raw_trees": booster.best_iteration,
                "load_average": [float(x) for x in load],
            }
        )
    )


if __name__ == "__main__":
    main()
