"""CDNOW (real data): "any repeat purchase in the holdout", ours vs BG/NBD vs the RFM rule.

The transaction log goes through the product's own path: ``import_transaction_log`` (same-day
rows merged into purchase occasions) -> ``ingest`` (validation, identities) -> the point-in-time
feature SQL of ``features/build.py``. Standard split: calibration to 1997-09-30, holdout
1997-10-01 .. 1998-06-30 (39 weeks each).

Everything is chosen inside the calibration period, the way the product tunes on live data:
the classifier learns "a purchase in the next ``INNER_WINDOW_DAYS``" at monthly cutoffs whose
window closes by 1997-09-30, early-stops and calibrates on the last of them, and picks its
LightGBM parameters among a few by ROC AUC on that inner slice. The holdout is looked at once,
to score the model fitted at the inner cutoffs applied to the features at 1997-10-01.

``repeat_forecast`` (ours): the BG/NBD forecast of holdout repeat transactions, corrected by the
ratio of actual to forecast repeats measured on an inner split (BG/NBD fitted on the data before
``INNER_FORECAST_CUTOFF``, forecasting to the calibration end); ``bgnbd`` is the plain forecast.

    python benchmarks/cdnow.py            # sample and master files
    python benchmarks/cdnow.py --quick    # sample file only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name, _value in {"FEAST_USAGE": "False", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from features.build import compute_features  # noqa: E402
from features.ingest import ingest  # noqa: E402
from features.transactions import TransactionColumns, import_transaction_log  # noqa: E402
from omniretain.settings import load_settings  # noqa: E402
from training.bgnbd import (  # noqa: E402
    expected_transactions,
    fit_bgnbd,
    frequency_recency_summary,
)
from training.labels import purchase_window_labels  # noqa: E402
from training.model import fit_calibrated_classifier  # noqa: E402
from training.train import feature_columns, matrix, rfm_rule_scores  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdnow"
FILES = {
    "sample": (
        "CDNOW_sample.txt",
        TransactionColumns(
            customer="1", date="3", amount="5", quantity="4", date_format="%Y%m%d", header=False
        ),
    ),
    "master": (
        "CDNOW_master.txt",
        TransactionColumns(
            customer="customer_id",
            date="date",
            amount="dollar_value",
            quantity="number_of_cds",
            date_format="%Y%m%d",
        ),
    ),
}
CALIBRATION_END = datetime(1997, 10, 1, tzinfo=UTC)  # first instant of the holdout
HOLDOUT_END = datetime(1998, 7, 1, tzinfo=UTC)
HOLDOUT_WEEKS = 39.0
INNER_WINDOW_DAYS = 91
INNER_CUTOFFS = [datetime(1997, month, 1, tzinfo=UTC) for month in (3, 4, 5, 6, 7)]
INNER_FORECAST_CUTOFF = datetime(1997, 7, 1, tzinfo=UTC)
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
CANDIDATE_PARAMETERS = [
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 7, "min_child_samples": 40},
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 80},
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 4, "min_child_samples": 100},
]


def load_through_product(name: str, state: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import, ingest, compute features; return (features at all cutoffs, purchases)."""
    file_name, columns = FILES[name]
    settings = load_settings(state_dir=state)
    settings.ensure_dirs()
    import_transaction_log(settings, DATA_DIR / file_name, columns)
    ingest(settings, progress=False, now=datetime(2026, 1, 1, tzinfo=UTC))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        features = compute_features(con, [*INNER_CUTOFFS, CALIBRATION_END])
        purchases = con.execute(
            "SELECT customer_id, occurred_at, coalesce(is_return, false) AS is_return "
            "FROM purchases WHERE customer_id IS NOT NULL"
        ).df()
    return features, purchases


def holdout_target(purchases: pd.DataFrame, customers: pd.Index) -> np.ndarray:
    start, end = (pd.Timestamp(t).tz_localize(None) for t in (CALIBRATION_END, HOLDOUT_END))
    inside = purchases[(purchases["occurred_at"] >= start) & (purchases["occurred_at"] < end)]
    return customers.isin(inside["customer_id"].unique()).astype(np.int64)


def our_model_scores(features: pd.DataFrame, purchases: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Fit on inner cutoffs, choose parameters on the last one, score at the calibration end."""
    labels = purchase_window_labels(purchases, INNER_CUTOFFS, INNER_WINDOW_DAYS)
    # Inner windows must close by the calibration end: nothing of the holdout is read.
    assert max(INNER_CUTOFFS) + pd.Timedelta(days=INNER_WINDOW_DAYS) <= CALIBRATION_END
    frame = features.merge(labels, on=["customer_id", "event_timestamp"], how="inner")
    columns = [c for c in feature_columns(features) if features[c].nunique() > 1]
    last = frame["event_timestamp"] == max(INNER_CUTOFFS)
    fit, stop = frame[~last], frame[last]
    best, best_auc = None, -1.0
    for params in CANDIDATE_PARAMETERS:
        model = fit_calibrated_classifier(
            matrix(fit, columns),
            fit["bought_in_window"].to_numpy(np.int64),
            matrix(stop, columns),
            stop["bought_in_window"].to_numpy(np.int64),
            columns,
            {**params, "n_jobs": 1},
            early_stopping_rounds=40,
        )
        auc = roc_auc_score(stop["bought_in_window"], model.raw_score(matrix(stop, columns)))
        if auc > best_auc:
            best, best_auc, chosen = model, auc, params
    # Blend with BG/NBD ranks; the weight is chosen on the same inner slice.
    stop_customers = pd.Index(stop["customer_id"])
    inner_bgnbd = bgnbd_expected_at(
        purchases, max(INNER_CUTOFFS), stop_customers, INNER_WINDOW_DAYS / 7.0
    )
    inner_trees = best.raw_score(matrix(stop, columns))
    blends = {
        weight: roc_auc_score(
            stop["bought_in_window"],
            (1 - weight) * rank01(inner_trees) + weight * rank01(inner_bgnbd),
        )
        for weight in BLEND_WEIGHTS
    }
    weight = max(blends, key=blends.get)
    at_end = features[features["event_timestamp"] == CALIBRATION_END].set_index("customer_id")
    bgnbd = bgnbd_expected_at(purchases, CALIBRATION_END, at_end.index, HOLDOUT_WEEKS)
    trees = best.raw_score(matrix(at_end, columns))
    return (1 - weight) * rank01(trees) + weight * rank01(bgnbd), {
        "inner_auc": round(blends[weight], 4),
        "inner_tree_auc": round(best_auc, 4),
        "bgnbd_weight": weight,
        "params": chosen,
        "n_features": len(columns),
        "customers": at_end.index,
        "frame": at_end,
    }


def bgnbd_expected_at(purchases: pd.DataFrame, cutoff: datetime, customers: pd.Index, weeks: float):
    """BG/NBD fitted on the purchases before ``cutoff``: expected purchases in the next weeks."""
    end = pd.Timestamp(cutoff).tz_localize(None)
    before = purchases[purchases["occurred_at"] < end]
    summary = frequency_recency_summary(before, end - pd.Timedelta(days=1)).reindex(customers)
    params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    return np.asarray(
        expected_transactions(params, weeks, summary["x"], summary["t_x"], summary["T"])
    )


def rank01(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(pct=True).to_numpy()


def bgnbd_forecasts(purchases: pd.DataFrame, customers: pd.Index) -> tuple[np.ndarray, float]:
    """BG/NBD expected holdout transactions per customer, and the inner actual/forecast ratio."""
    end = pd.Timestamp(CALIBRATION_END).tz_localize(None)
    before = purchases[purchases["occurred_at"] < end]
    summary = frequency_recency_summary(before, end - pd.Timedelta(days=1)).reindex(customers)
    params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    expected = expected_transactions(
        params, HOLDOUT_WEEKS, summary["x"], summary["t_x"], summary["T"]
    )
    inner_end = pd.Timestamp(INNER_FORECAST_CUTOFF).tz_localize(None)
    inner = frequency_recency_summary(
        before[before["occurred_at"] < inner_end], inner_end - pd.Timedelta(days=1)
    )
    inner_params = fit_bgnbd(inner["x"], inner["t_x"], inner["T"])
    weeks = (end - inner_end).days / 7.0
    inner_forecast = expected_transactions(
        inner_params, weeks, inner["x"], inner["t_x"], inner["T"]
    ).sum()
    later = before[before["occurred_at"] >= inner_end].copy()
    later["day"] = later["occurred_at"].dt.normalize()
    inner_actual = len(later.drop_duplicates(["customer_id", "day"]))
    return np.asarray(expected), inner_actual / inner_forecast


def run(name: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"cdnow_{name}_") as state:
        started = time.perf_counter()
        features, purchases = load_through_product(name, Path(state))
        load_seconds = time.perf_counter() - started
    purchases["occurred_at"] = pd.to_datetime(purchases["occurred_at"])
    scores, details = our_model_scores(features, purchases)
    customers = details["customers"]
    target = holdout_target(purchases, customers)
    expected, inner_ratio = bgnbd_forecasts(purchases, customers)
    start = pd.Timestamp(CALIBRATION_END).tz_localize(None)
    holdout = purchases[purchases["occurred_at"] >= start].copy()
    holdout["day"] = holdout["occurred_at"].dt.normalize()
    repeat_actual = len(holdout.drop_duplicates(["customer_id", "day"]))
    rfm = rfm_rule_scores(details["frame"], "repurchase")
    return {
        "ours_auc": round(float(roc_auc_score(target, scores)), 4),
        "bgnbd_auc": round(float(roc_auc_score(target, expected)), 4),
        "rfm_auc": round(float(roc_auc_score(target, rfm)), 4),
        "repeat_actual": int(repeat_actual),
        "repeat_forecast": round(float(expected.sum() * inner_ratio), 1),
        "bgnbd_repeat_forecast": round(float(expected.sum()), 1),
        "customers": len(customers),
        "base_rate": round(float(target.mean()), 4),
        "inner_auc": details["inner_auc"],
        "inner_tree_auc": details["inner_tree_auc"],
        "bgnbd_weight": details["bgnbd_weight"],
        "n_features": details["n_features"],
        "load_seconds": round(load_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sample file only")
    args = parser.parse_args()
    names = ["sample"] if args.quick else ["sample", "master"]
    results = {name: run(name) for name in names}
    header = f"{'file':<8}{'customers':>10}{'ours':>8}{'BG/NBD':>8}{'RFM':>8}"
    print("CDNOW, target: any repeat purchase in the 39-week holdout (ROC AUC)")
    print(header + f"{'actual':>9}{'ours fc':>9}{'BG/NBD fc':>11}")
    for name, r in results.items():
        print(
            f"{name:<8}{r['customers']:>10,}{r['ours_auc']:>8.4f}{r['bgnbd_auc']:>8.4f}"
            f"{r['rfm_auc']:>8.4f}{r['repeat_actual']:>9,}{r['repeat_forecast']:>9,.0f}"
            f"{r['bgnbd_repeat_forecast']:>11,.0f}"
        )
    for name, r in results.items():
        print(
            f"{name}: chosen on the inner split: BG/NBD blend weight {r['bgnbd_weight']}, inner "
            f"ROC AUC trees {r['inner_tree_auc']} / blend {r['inner_auc']}; {r['n_features']} "
            f"features; import+ingest+features {r['load_seconds']} s"
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    keys = ("ours_auc", "bgnbd_auc", "rfm_auc", "repeat_actual", "repeat_forecast")
    print(json.dumps({name: {key: r[key] for key in keys} for name, r in results.items()}))


if __name__ == "__main__":
    main()
