"""CDNOW (real data): "any repeat purchase in the holdout", ours vs BG/NBD vs the RFM rule.

The transaction log goes through the product's own path: ``import_transaction_log`` (same-day
rows merged into purchase occasions) -> ``ingest`` (validation, identities) -> the point-in-time
feature SQL of ``features/build.py``. Standard split: calibration to 1997-09-30, holdout
1997-10-01 .. 1998-06-30 (39 weeks each).

Everything is chosen inside the calibration period, the way the product tunes on live data.
The holdout asks about 39 weeks, three times the longest label window that closes inside the
calibration period (13 weeks), and models that win on the label window can lose when stretched
(LightGBM does: it leans on recency). So the choice is made on a rehearsal of that stretch:
candidates learn "a purchase in the next 29 days" at 1997-03..06 and are scored at 1997-07-01
on the following 13 weeks; the candidate (seed-averaged LightGBM with a few parameter sets, a
logistic regression on log-scaled features, or the rank average of a LightGBM and a logistic
one), the BG/NBD score it is rank-blended with (expected purchases or P(any purchase)) and the
blend weight are picked there by ROC AUC. The chosen one is refitted on 13-week labels at
1997-03..07 and scores the customers at 1997-10-01; the holdout is looked at once.
Features: the product's point-in-time features plus ``customer_base_features`` of
``training/bgnbd.py`` (BG/NBD refitted at each cutoff: expected purchases and P(any purchase)
over the label window, P(alive); purchase-gap mean, spread and overdue ratio; items per
purchase day).

``repeat_forecast`` (ours): the BG/NBD forecast of holdout repeat transactions times the
correction its inner rehearsal supports (``forecast_rehearsal``: BG/NBD fitted at 1997-04..08-01
forecasts the repeats to the calibration end; the mean actual/forecast ratio is applied only if
it is two standard errors away from 1); ``bgnbd`` is the plain forecast.

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
from collections.abc import Callable
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
    customer_base_features,
    expected_transactions,
    fit_bgnbd,
    forecast_rehearsal,
    frequency_recency_summary,
    probability_any_purchase,
    rehearsed_correction,
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
# The rehearsal of the 3x stretch from label window to holdout (see ``our_model_scores``).
REHEARSAL_WINDOW_DAYS = 29  # closes before REHEARSAL_CUTOFF: no label touches its window
REHEARSAL_FIT_CUTOFFS = [datetime(1997, month, 1, tzinfo=UTC) for month in (3, 4, 5, 6)]
REHEARSAL_CUTOFF = datetime(1997, 7, 1, tzinfo=UTC)
SEEDS = (0, 1, 2)
# Inner cutoffs where BG/NBD's forecast of total repeats is checked against the calibration end.
FORECAST_REHEARSAL_CUTOFFS = [datetime(1997, month, 1, tzinfo=UTC) for month in (4, 5, 6, 7, 8)]
BLEND_WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
BAGGING = {"subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}  # seeds differ
CANDIDATE_PARAMETERS = [
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 7, "min_child_samples": 40},
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 80},
    {"n_estimators": 400, "learning_rate": 0.03, "num_leaves": 4, "min_child_samples": 100},
]
CANDIDATES = [("trees", params) for params in CANDIDATE_PARAMETERS] + [
    ("logistic", {"C": C}) for C in (0.1, 1.0)
]


def load_through_product(name: str, state: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import, ingest, compute features; return (features at all cutoffs, purchases)."""
    file_name, columns = FILES[name]
    settings = load_settings(state_dir=state)
    settings.ensure_dirs()
    import_transaction_log(settings, DATA_DIR / file_name, columns)
    ingest(settings, progress=False, now=datetime(2026, 1, 1, tzinfo=UTC))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        features = compute_features(
            con, sorted({*INNER_CUTOFFS, *REHEARSAL_FIT_CUTOFFS, CALIBRATION_END})
        )
        purchases = con.execute(
            "SELECT customer_id, occurred_at, coalesce(is_return, false) AS is_return, items "
            "FROM purchases WHERE customer_id IS NOT NULL"
        ).df()
    return features, purchases


def holdout_target(purchases: pd.DataFrame, customers: pd.Index) -> np.ndarray:
    start, end = (pd.Timestamp(t).tz_localize(None) for t in (CALIBRATION_END, HOLDOUT_END))
    inside = purchases[(purchases["occurred_at"] >= start) & (purchases["occurred_at"] < end)]
    return customers.isin(inside["customer_id"].unique()).astype(np.int64)


def model_frame(
    features: pd.DataFrame, purchases: pd.DataFrame, cutoffs: list[datetime], window_days: int
) -> pd.DataFrame:
    """Product features + customer-base features (horizon = the label window) + labels."""
    labels = purchase_window_labels(purchases, cutoffs, window_days)
    base = customer_base_features(purchases, cutoffs, window_days)
    frame = features.merge(labels, on=["customer_id", "event_timestamp"], how="inner")
    return frame.merge(base, on=["customer_id", "event_timestamp"], how="left")


def scoring_frame(
    features: pd.DataFrame, purchases: pd.DataFrame, cutoff: datetime, horizon_days: int
) -> pd.DataFrame:
    at = features[features["event_timestamp"] == cutoff]
    base = customer_base_features(purchases, [cutoff], horizon_days)
    return at.merge(base, on=["customer_id", "event_timestamp"], how="left")


def fit_trees(fit: pd.DataFrame, stop: pd.DataFrame, columns: list[str], params: dict) -> list:
    """One calibrated LightGBM per seed, early-stopped on the ``stop`` slice."""
    return [
        fit_calibrated_classifier(
            matrix(fit, columns),
            fit["bought_in_window"].to_numpy(np.int64),
            matrix(stop, columns),
            stop["bought_in_window"].to_numpy(np.int64),
            columns,
            {**BAGGING, **params, "n_jobs": 1, "random_state": seed},
            early_stopping_rounds=40,
        )
        for seed in SEEDS
    ]


def tree_scores(models: list, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Mean log-odds over the seeds."""
    return np.mean([model.raw_score(matrix(frame, columns)) for model in models], axis=0)


def signed_log(values: np.ndarray) -> np.ndarray:
    """Counts, amounts and days are heavy-tailed: a linear model sees their logarithm."""
    return np.sign(values) * np.log1p(np.abs(values))


def fit_candidate(
    kind: str, setting: dict, fit: pd.DataFrame, stop: pd.DataFrame, columns: list[str]
) -> Callable[[pd.DataFrame], np.ndarray]:
    """A fitted candidate as a scoring function (higher = more likely to buy again).

    ``trees``: seed-averaged calibrated LightGBM, early-stopped on ``stop``. ``logistic``: an
    L2 logistic regression on log-scaled, median-imputed (with missing flags), standardised
    features, fitted on both slices (nothing to early-stop).
    """
    if kind == "trees":
        models = fit_trees(fit, stop, columns, setting)
        return lambda frame: tree_scores(models, frame, columns)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    both = pd.concat([fit, stop], ignore_index=True)
    pipeline = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=setting["C"], max_iter=3000),
    )
    pipeline.fit(signed_log(matrix(both, columns)), both["bought_in_window"].to_numpy(np.int64))
    return lambda frame: pipeline.decision_function(signed_log(matrix(frame, columns)))


def our_model_scores(features: pd.DataFrame, purchases: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Choose on a rehearsal inside the calibration period, then refit and score at its end.

    The holdout asks about 39 weeks, three times the longest label window that closes inside
    the calibration period (13 weeks). The rehearsal reproduces that stretch: trees learn
    ``REHEARSAL_WINDOW_DAYS`` labels at the early cutoffs and are scored at ``REHEARSAL_CUTOFF``
    on the following 13 weeks; the LightGBM parameters and the weight of the BG/NBD ranks in the
    blend are chosen there by ROC AUC. The final trees learn 13-week labels at ``INNER_CUTOFFS``
    (early stopping on the last one) and score the customers at the calibration end.
    """
    rehearsal_end = REHEARSAL_CUTOFF + pd.Timedelta(days=INNER_WINDOW_DAYS)
    final_end = max(INNER_CUTOFFS) + pd.Timedelta(days=INNER_WINDOW_DAYS)
    # Every label window closes by the calibration end: nothing of the holdout is read.
    assert rehearsal_end <= CALIBRATION_END and final_end <= CALIBRATION_END
    assert max(REHEARSAL_FIT_CUTOFFS) + pd.Timedelta(days=REHEARSAL_WINDOW_DAYS) < REHEARSAL_CUTOFF

    short = model_frame(features, purchases, REHEARSAL_FIT_CUTOFFS, REHEARSAL_WINDOW_DAYS)
    columns = [
        c for c in feature_columns(short.drop(columns="bought_in_window")) if short[c].nunique() > 1
    ]
    last = short["event_timestamp"] == max(REHEARSAL_FIT_CUTOFFS)
    target = model_frame(features, purchases, [REHEARSAL_CUTOFF], INNER_WINDOW_DAYS)
    rehearsal = scoring_frame(features, purchases, REHEARSAL_CUTOFF, REHEARSAL_WINDOW_DAYS)
    rehearsal = rehearsal.merge(
        target[["customer_id", "bought_in_window"]], on="customer_id", how="inner"
    )
    truth = rehearsal["bought_in_window"].to_numpy(np.int64)
    rehearsal_partners = bgnbd_partners_at(
        purchases, REHEARSAL_CUTOFF, pd.Index(rehearsal["customer_id"]), INNER_WINDOW_DAYS / 7
    )
    singles = {
        index: rank01(fit_candidate(kind, setting, short[~last], short[last], columns)(rehearsal))
        for index, (kind, setting) in enumerate(CANDIDATES)
    }
    trials = {}
    for combo in candidate_combinations():
        scores = np.mean([singles[index] for index in combo], axis=0)
        for partner, partner_scores in rehearsal_partners.items():
            for weight in BLEND_WEIGHTS:
                blend = (1 - weight) * scores + weight * partner_scores
                trials[(combo, partner, weight)] = roc_auc_score(truth, blend)
    (combo, partner, weight), rehearsal_auc = max(trials.items(), key=lambda item: item[1])

    inner = model_frame(features, purchases, INNER_CUTOFFS, INNER_WINDOW_DAYS)
    last = inner["event_timestamp"] == max(INNER_CUTOFFS)
    at_end = scoring_frame(features, purchases, CALIBRATION_END, INNER_WINDOW_DAYS)
    at_end = at_end.set_index("customer_id")
    model_scores = np.mean(
        [
            rank01(fit_candidate(*CANDIDATES[index], inner[~last], inner[last], columns)(at_end))
            for index in combo
        ],
        axis=0,
    )
    partners = bgnbd_partners_at(purchases, CALIBRATION_END, at_end.index, HOLDOUT_WEEKS)
    return (1 - weight) * model_scores + weight * partners[partner], {
        "inner_auc": round(rehearsal_auc, 4),
        "inner_model_auc": round(trials[(combo, partner, 0.0)], 4),
        "inner_bgnbd_auc": round(max(trials[(combo, p, 1.0)] for p in rehearsal_partners), 4),
        "bgnbd_weight": weight if weight else 0.0,
        "bgnbd_partner": partner,
        "model": " + ".join(f"{CANDIDATES[index][0]} {CANDIDATES[index][1]}" for index in combo),
        "n_features": len(columns),
        "customers": at_end.index,
        "frame": at_end,
    }


def candidate_combinations() -> list[tuple[int, ...]]:
    """Each candidate alone, and the rank average of each tree candidate with each logistic one."""
    trees = [i for i, (kind, _) in enumerate(CANDIDATES) if kind == "trees"]
    logistic = [i for i, (kind, _) in enumerate(CANDIDATES) if kind == "logistic"]
    return [(i,) for i in range(len(CANDIDATES))] + [(t, g) for t in trees for g in logistic]


def bgnbd_partners_at(
    purchases: pd.DataFrame, cutoff: datetime, customers: pd.Index, weeks: float
) -> dict[str, np.ndarray]:
    """BG/NBD fitted before ``cutoff``, as ranks: expected purchases and P(any purchase).

    The target is binary, so P(at least one purchase) may rank better than the expected count;
    the rehearsal decides which of the two the model is blended with.
    """
    end = pd.Timestamp(cutoff).tz_localize(None)
    before = purchases[purchases["occurred_at"] < end]
    summary = frequency_recency_summary(before, end - pd.Timedelta(days=1)).reindex(customers)
    params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    history = (summary["x"], summary["t_x"], summary["T"])
    return {
        "expected purchases": rank01(expected_transactions(params, weeks, *history)),
        "P(any purchase)": rank01(probability_any_purchase(params, weeks, *history)),
    }


def rank01(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(pct=True).to_numpy()


def bgnbd_forecasts(
    purchases: pd.DataFrame, customers: pd.Index
) -> tuple[np.ndarray, pd.DataFrame]:
    """BG/NBD expected holdout transactions per customer, and the inner forecast rehearsal."""
    end = pd.Timestamp(CALIBRATION_END).tz_localize(None)
    before = purchases[purchases["occurred_at"] < end]
    summary = frequency_recency_summary(before, end - pd.Timedelta(days=1)).reindex(customers)
    params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    expected = expected_transactions(
        params, HOLDOUT_WEEKS, summary["x"], summary["t_x"], summary["T"]
    )
    return np.asarray(expected), forecast_rehearsal(before, FORECAST_REHEARSAL_CUTOFFS, end)


def run(name: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"cdnow_{name}_") as state:
        started = time.perf_counter()
        features, purchases = load_through_product(name, Path(state))
        load_seconds = time.perf_counter() - started
    purchases["occurred_at"] = pd.to_datetime(purchases["occurred_at"])
    scores, details = our_model_scores(features, purchases)
    customers = details["customers"]
    target = holdout_target(purchases, customers)
    expected, rehearsal = bgnbd_forecasts(purchases, customers)
    inner_ratio = rehearsed_correction(rehearsal)
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
        "inner_model_auc": details["inner_model_auc"],
        "inner_bgnbd_auc": details["inner_bgnbd_auc"],
        "model": details["model"],
        "bgnbd_weight": details["bgnbd_weight"],
        "bgnbd_partner": details["bgnbd_partner"],
        "n_features": details["n_features"],
        "load_seconds": round(load_seconds, 1),
        "forecast_ratio": round(inner_ratio, 3),
        "forecast_rehearsal": ", ".join(
            f"{row.cutoff:%m-%d} ({row.horizon:.0f} wk) {row.ratio:.3f}"
            for row in rehearsal.itertuples()
        ),
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
            f"{name}: chosen on the rehearsal inside the calibration period: {r['model']}, "
            f"blend weight {r['bgnbd_weight']} with BG/NBD {r['bgnbd_partner']}; "
            f"rehearsal ROC AUC model "
            f"{r['inner_model_auc']} / BG/NBD {r['inner_bgnbd_auc']} / blend {r['inner_auc']}; "
            f"{r['n_features']} features; import+ingest+features {r['load_seconds']} s"
        )
    for name, r in results.items():
        print(
            f"{name}: forecast = BG/NBD x {r['forecast_ratio']} (the mean inner ratio if it is "
            f"2 standard errors away from 1, else 1); actual/forecast of BG/NBD fitted at "
            f"inner cutoffs, to the calibration end: {r['forecast_rehearsal']}"
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    keys = ("ours_auc", "bgnbd_auc", "rfm_auc", "repeat_actual", "repeat_forecast")
    print(json.dumps({name: {key: r[key] for key in keys} for name, r in results.items()}))


if __name__ == "__main__":
    main()
