"""What a training run leaves for a reader: plots and a model card, logged as MLflow artifacts.

The curves and the card are computed from the holdout only (never from the rows the trees or the
calibrator saw) by pure functions; :func:`log_model_report` draws and logs them inside the
active MLflow run. Plots use Matplotlib's Agg canvas directly: no display, no global pyplot
state, safe in a scheduler thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from omniretain.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from training.train import TrainedTarget

CALIBRATION_BINS = 10
TOP_FEATURES = 20
SMALL_HOLDOUT_ROWS = 1000
SMALL_HOLDOUT_POSITIVES = 50
CARD_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "lift_top_decile")
PLOT_FILES = {
    "calibration": "plots/calibration_curve.png",
    "gain": "plots/lift_gain_chart.png",
    "importance": "plots/feature_importance.png",
}
MODEL_CARD_FILE = "model_card.md"


# ---- the numbers behind the plots (pure) --------------------------------------------------------


@dataclass
class CalibrationBins:
    """Mean predicted probability and observed rate per equal-width bin (empty bins dropped)."""

    predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray


def calibration_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> CalibrationBins:
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    predicted = np.bincount(index, weights=probabilities, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(index, weights=labels, minlength=bins)[filled] / counts[filled]
    return CalibrationBins(predicted, observed, counts[filled])


def gain_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of customers targeted (best scores first) vs share of all positives captured.

    Both arrays start at 0 and end at 1; a random ranking follows the diagonal. Ties keep their
    order of appearance, as :func:`training.model.lift_at_top` does.
    """
    labels = np.asarray(labels, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    captured = np.cumsum(labels[order])
    total = captured[-1] if len(captured) else 0.0
    targeted = np.arange(1, len(labels) + 1) / max(len(labels), 1)
    share = captured / total if total > 0 else np.zeros_like(captured)
    return np.concatenate([[0.0], targeted]), np.concatenate([[0.0], share])


def lift_by_decile(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positive rate of each score decile (best first) over the overall rate."""
    labels = np.asarray(labels, dtype=np.float64)
    base = labels.mean() if len(labels) else 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    deciles = np.array_split(labels[order], 10)
    return np.array([part.mean() / base if base > 0 and len(part) else np.nan for part in deciles])


def top_importances(
    names: list[str], importances: np.ndarray, top: int = TOP_FEATURES
) -> list[tuple[str, float]]:
    """The ``top`` features by importance, largest first, as shares of the total."""
    values = np.asarray(importances, dtype=np.float64)
    total = values.sum()
    shares = values / total if total > 0 else values
    order = np.argsort(-shares, kind="stable")[:top]
    return [(names[i], float(shares[i])) for i in order]


# ---- the model card (pure) ----------------------------------------------------------------------


def _format(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def card_caveats(
    metrics: dict[str, dict[str, float]],
    holdout_rows: int,
    holdout_positives: int,
    max_calibration_error: float,
) -> list[str]:
    """Warnings a reader must see before trusting the numbers, derived from the numbers."""
    caveats: list[str] = []
    model = metrics["model"]
    if holdout_rows < SMALL_HOLDOUT_ROWS or holdout_positives < SMALL_HOLDOUT_POSITIVES:
        caveats.append(
            f"Small holdout ({holdout_rows} rows, {holdout_positives} positives): differences "
            "of a few hundredths of AUC between models are within noise."
        )
    for baseline, values in metrics.items():
        if baseline == "model":
            continue
        theirs, ours = values.get("roc_auc", math.nan), model.get("roc_auc", math.nan)
        if not math.isnan(theirs) and not math.isnan(ours) and theirs >= ours:
            caveats.append(
                f"The {baseline} baseline ranks at least as well (ROC AUC {theirs:.4f} vs "
                f"{ours:.4f}): the model adds no ranking value over it on this holdout."
            )
    if model.get("ece", 0.0) > max_calibration_error:
        caveats.append(
            f"Calibration error {model['ece']:.4f} is above the gate's bound "
            f"{max_calibration_error:.4f}: probabilities are not reliable as expected values."
        )
    caveats.append(
        "The label window of a fit cutoff may overlap later slices (no purge gap): holdout "
        "metrics can be slightly optimistic."
    )
    caveats.append(
        "Trained on the past behaviour of this retailer's customers; a change of assortment, "
        "pricing or channel mix needs retraining (the drift monitor watches for it)."
    )
    return caveats


def model_card(
    *,
    registered_model: str,
    label: str,
    feature_service: str,
    feature_names: list[str],
    cutoffs: dict[str, list[str]],
    data_end: str | None,
    split_sizes: dict[str, tuple[int, int]],
    metrics: dict[str, dict[str, float]],
    champion_metrics: dict[str, float] | None,
    decision: str,
    best_iteration: int,
    calibration: str,
    caveats: list[str],
) -> str:
    """A short markdown card: what the model predicts, from which data, how well, and caveats."""
    rows = [
        "| scorer | " + " | ".join(CARD_METRICS) + " |",
        "|---" * (len(CARD_METRICS) + 1) + "|",
    ]
    scorers = dict(metrics)
    if champion_metrics is not None:
        scorers["current champion"] = champion_metrics
    for scorer, values in scorers.items():
        cells = " | ".join(_format(values.get(name)) for name in CARD_METRICS)
        rows.append(f"| {scorer} | {cells} |")
    sizes = "\n".join(
        f"- {split}: {n_rows:,} rows, {positives:,} positive ({', '.join(cutoffs.get(split, []))})"
        if len(cutoffs.get(split, [])) <= 3
        else f"- {split}: {n_rows:,} rows, {positives:,} positive "
        f"({cutoffs[split][0]} .. {cutoffs[split][-1]}, {len(cutoffs[split])} cutoffs)"
        for split, (n_rows, positives) in split_sizes.items()
    )
    features = ", ".join(f"`{name}`" for name in feature_names)
    return "\n".join(
        [
            f"# Model card: {registered_model}",
            "",
            f"Predicts `{label}` per customer at a snapshot cutoff: LightGBM ({best_iteration} "
            f"trees, early-stopped) with {calibration} calibration fitted on a later time slice.",
            "",
            "## Data window",
            f"Data up to {data_end or 'unknown'}; time-based split by cutoff:",
            sizes,
            "",
            f"## Features ({len(feature_names)}, feature service `{feature_service}`)",
            features,
            "",
            "## Holdout metrics vs baselines",
            *rows,
            "",
            f"Promotion gate: {decision}",
            "",
            "## Caveats",
            *(f"- {caveat}" for caveat in caveats),
            "",
        ]
    )


# ---- drawing (pure: numbers in, figure out) ----------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def calibration_figure(bins: CalibrationBins, title: str) -> Figure:
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(bins.predicted, bins.observed, marker="o", label="model (holdout)")
    axes.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    return figure


def gain_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], deciles: np.ndarray, title: str
) -> Figure:
    figure = _figure(10.0, 4.5)
    gain, lift = figure.subplots(1, 2)
    gain.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    for name, (targeted, captured) in curves.items():
        gain.plot(targeted, captured, label=name)
    gain.set(xlabel="share of customers targeted", ylabel="share of positives", title="gain")
    gain.legend(loc="lower right")
    lift.bar(np.arange(1, len(deciles) + 1), np.nan_to_num(deciles))
    lift.axhline(1.0, linestyle="--", color="grey")
    lift.set(xlabel="score decile (1 = highest)", ylabel="lift", title=f"lift: {title}")
    return figure


def importance_figure(importances: list[tuple[str, float]], title: str) -> Figure:
    figure = _figure(7.0, max(3.0, 0.3 * len(importances) + 1.0))
    axes = figure.add_subplot()
    names = [name for name, _ in reversed(importances)]
    axes.barh(names, [share for _, share in reversed(importances)])
    axes.set(xlabel="share of total gain", title=title)
    return figure


# ---- logging into the active MLflow run (I/O edge) ---------------------------------------------


def log_model_report(
    settings: Settings,
    trained: TrainedTarget,
    champion_metrics: dict[str, float] | None,
    decision: str,
    data_end: str | None,
) -> dict[str, Any]:
    """Draw the holdout plots and write the model card into the active MLflow run.

    Called by :func:`training.train.log_and_register` inside its run. Returns the artifact
    paths by kind, and logs the data window as parameters.
    """
    import mlflow

    from training.train import labels_of, matrix, rfm_rule_scores

    holdout = trained.split.holdout
    labels = labels_of(holdout, trained.label)
    model = trained.model
    probabilities = model.predict_proba(matrix(holdout, model.feature_names))[:, 1]
    title = f"{trained.kind} holdout"
    curves = {
        "model": gain_curve(labels, probabilities),
        "rfm rule": gain_curve(labels, rfm_rule_scores(holdout, trained.kind)),
    }
    importances = top_importances(
        model.feature_names, model.booster.feature_importance(importance_type="gain")
    )
    figures = {
        "calibration": calibration_figure(calibration_bins(labels, probabilities), title),
        "gain": gain_figure(curves, lift_by_decile(labels, probabilities), title),
        "importance": importance_figure(importances, f"{trained.kind}: top features by gain"),
    }
    for kind, figure in figures.items():
        mlflow.log_figure(figure, PLOT_FILES[kind])
    cutoffs = trained.split.cutoffs()
    sizes = {
        name: (len(part), int(labels_of(part, trained.label).sum()))
        for name, part in trained.split.slices().items()
    }
    mlflow.log_params(
        {"data_window_start": cutoffs["fit"][0], "data_window_end": cutoffs["holdout"][-1]}
    )
    card = model_card(
        registered_model=f"{trained.kind} ({trained.label})",
        label=trained.label,
        feature_service=settings.features.feature_service,
        feature_names=model.feature_names,
        cutoffs=cutoffs,
        data_end=data_end,
        split_sizes=sizes,
        metrics=trained.metrics,
        champion_metrics=champion_metrics,
        decision=decision,
        best_iteration=model.best_iteration,
        calibration=settings.training.calibration,
        caveats=card_caveats(
            trained.metrics, *sizes["holdout"], settings.training.max_calibration_error
        ),
    )
    mlflow.log_text(card, MODEL_CARD_FILE)
    return {**PLOT_FILES, "model_card": MODEL_CARD_FILE}
