"""A LightGBM classifier with a probability calibrator fitted on a later time slice.

The service loads this object from MLflow and calls it once per request, so the prediction path
is numpy only (no pandas, no sklearn input validation) and LightGBM runs with ``num_threads=1``:
OpenMP threads cost more than they save for one row and would fight the server's workers.

The trees are early-stopped and calibrated on the same *later* slice, never on the rows they were
fitted on: boosted trees are over-confident on their own training rows, and a churn model must be
calibrated on the future it will be used in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # lightgbm pulls in scikit-learn (seconds); unpickling a model imports it
    import lightgbm as lgb

CalibrationMethod = Literal["isotonic", "sigmoid"]
DEFAULT_RANDOM_STATE = 0  # overridable through ``training.lightgbm.random_state``
TRAINING_THREADS = 2  # the cores of the reference machine; training owns them all
PREDICTION_THREADS = 1


class ModelInputError(ValueError):
    """The feature matrix does not match the model's features."""


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


@dataclass
class IsotonicCalibrator:
    """Monotone map from raw log-odds to probability, stored as its breakpoints.

    Fitted with scikit-learn, applied with ``np.interp`` (identical to
    ``IsotonicRegression(out_of_bounds="clip").predict``, without its validation overhead).
    The output is kept half a row away from 0 and 1 (``0.5 / (n + 1)``): a certainty learned
    from a few hundred rows is over-confidence, and one such miss dominates the log loss.
    """

    x_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, raw_scores: np.ndarray, labels: np.ndarray) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        margin = 0.5 / (len(labels) + 1)
        isotonic = IsotonicRegression(y_min=margin, y_max=1.0 - margin, out_of_bounds="clip")
        isotonic.fit(np.asarray(raw_scores, dtype=np.float64), np.asarray(labels, np.float64))
        self.x_thresholds = np.asarray(isotonic.X_thresholds_, dtype=np.float64)
        self.y_thresholds = np.asarray(isotonic.y_thresholds_, dtype=np.float64)
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        return np.interp(raw_scores, self.x_thresholds, self.y_thresholds)


@dataclass
class PlattCalibrator:
    """Logistic map ``sigmoid(slope * raw + intercept)`` (Platt scaling): smooth, 2 parameters."""

    slope: float = 1.0
    intercept: float = 0.0

    def fit(self, raw_scores: np.ndarray, labels: np.ndarray) -> PlattCalibrator:
        from sklearn.linear_model import LogisticRegression

        logistic = LogisticRegression(C=1e6, max_iter=1000)
        logistic.fit(np.asarray(raw_scores, dtype=np.float64).reshape(-1, 1), labels)
        self.slope = float(logistic.coef_[0, 0])
        self.intercept = float(logistic.intercept_[0])
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        return _sigmoid(self.slope * raw_scores + self.intercept)


def make_calibrator(method: CalibrationMethod) -> IsotonicCalibrator | PlattCalibrator:
    if method == "isotonic":
        return IsotonicCalibrator()
    if method == "sigmoid":
        return PlattCalibrator()
    raise ValueError(f"unknown calibration {method!r}; use 'isotonic' or 'sigmoid'")


class CalibratedClassifier:
    """A fitted LightGBM booster plus calibrator, with an sklearn-style prediction interface.

    Attributes:
        feature_names: the column order ``X`` must follow.
        booster: the LightGBM booster (trees up to ``best_iteration``).
        calibrator: maps the booster's raw log-odds to calibrated probabilities.
        best_iteration: number of trees kept by early stopping.
    """

    classes_ = np.array([0, 1])

    def __init__(
        self,
        feature_names: list[str],
        booster: lgb.Booster,
        calibrator: IsotonicCalibrator | PlattCalibrator,
        best_iteration: int,
        calibration: CalibrationMethod,
    ) -> None:
        self.feature_names = list(feature_names)
        self.booster = booster
        self.calibrator = calibrator
        self.best_iteration = int(best_iteration)
        self.calibration = calibration

    @property
    def n_features_in_(self) -> int:
        return len(self.feature_names)

    def _as_matrix(self, X: Any) -> np.ndarray:
        """A float64 2-D array in ``feature_names`` order; a DataFrame is reordered by name."""
        if hasattr(X, "columns"):  # a DataFrame from MLflow's pyfunc or a batch job
            missing = [name for name in self.feature_names if name not in X.columns]
            if missing:
                raise ModelInputError(f"input lacks feature column(s) {missing}")
            X = X[self.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ModelInputError(
                f"expected a matrix of {len(self.feature_names)} feature columns in the order "
                f"of model.feature_names, got shape {matrix.shape}"
            )
        return matrix

    def raw_score(self, X: Any) -> np.ndarray:
        """The booster's log-odds, before calibration."""
        return self.booster.predict(
            self._as_matrix(X),
            raw_score=True,
            num_iteration=self.best_iteration,
            num_threads=PREDICTION_THREADS,
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 2)``: column 1 is the positive class."""
        positive = np.clip(self.calibrator.transform(self.raw_score(X)), 0.0, 1.0)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any) -> np.ndarray:
        """Class labels at a 0.5 threshold (sklearn convention; ranking uses the probability)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    def contributions(self, X: Any) -> np.ndarray:
        """Per-feature TreeSHAP contributions in log-odds, shape ``(n, n_features + 1)``.

        The last column is the expected value; each row sums to :meth:`raw_score`. They explain
        the raw score (not the calibrated probability), which is enough to rank reasons.
        """
        return self.booster.predict(
            self._as_matrix(X),
            pred_contrib=True,
            num_iteration=self.best_iteration,
            num_threads=PREDICTION_THREADS,
        )

    def __repr__(self) -> str:
        return (
            f"CalibratedClassifier({len(self.feature_names)} features, "
            f"{self.best_iteration} trees, {self.calibration})"
        )


def lightgbm_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The configured LightGBM parameters over our defaults (reproducible seed, 2 threads).

    ``n_jobs`` stays overridable: on a shared or busy machine OpenMP threads wait on each other
    and one thread trains a small set several times faster than two.
    """
    merged = {"random_state": DEFAULT_RANDOM_STATE, "n_jobs": TRAINING_THREADS, **params}
    merged["verbose"] = -1
    return merged


def fit_calibrated_classifier(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_calibration: np.ndarray,
    y_calibration: np.ndarray,
    feature_names: list[str],
    lightgbm_params: dict[str, Any],
    early_stopping_rounds: int = 30,
    calibration: CalibrationMethod = "isotonic",
) -> CalibratedClassifier:
    """Fit trees on the earlier slice, early-stop and calibrate on the later slice.

    Args:
        X_fit / y_fit: the rows the trees learn from (earlier cutoffs).
        X_calibration / y_calibration: a later cutoff, used for early stopping and to fit the
            calibrator; it must hold both classes.
        feature_names: the column names of the matrices, in order.
        lightgbm_params: ``LGBMClassifier`` parameters (``settings.training.lightgbm``).
    """
    import lightgbm as lgb

    y_fit = np.asarray(y_fit).astype(np.int64)
    y_calibration = np.asarray(y_calibration).astype(np.int64)
    for name, labels in (("fit", y_fit), ("calibration", y_calibration)):
        if len(np.unique(labels)) < 2:
            raise ValueError(
                f"the {name} slice holds one class only ({len(labels)} rows): a classifier "
                "cannot be fitted or calibrated on it; add cutoffs or customers"
            )
    classifier = lgb.LGBMClassifier(**lightgbm_parameters(lightgbm_params))
    classifier.fit(
        np.asarray(X_fit, dtype=np.float64),
        y_fit,
        eval_X=np.asarray(X_calibration, dtype=np.float64),
        eval_y=y_calibration,
        eval_metric="binary_logloss",
        feature_name=list(feature_names),
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    booster = classifier.booster_
    best_iteration = classifier.best_iteration_ or booster.current_iteration()
    uncalibrated = CalibratedClassifier(
        feature_names, booster, IsotonicCalibrator(), best_iteration, calibration
    )
    calibrator = make_calibrator(calibration).fit(
        uncalibrated.raw_score(X_calibration), y_calibration
    )
    uncalibrated.calibrator = calibrator
    return uncalibrated


# ---- evaluation helpers ------------------------------------------------------------------------


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Mean |observed rate - mean predicted probability| over equal-width bins, weighted by size."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        return float("nan")
    bin_index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = bin_index == b
        if in_bin.any():
            error += in_bin.mean() * abs(labels[in_bin].mean() - probabilities[in_bin].mean())
    return float(error)


def lift_at_top(labels: np.ndarray, scores: np.ndarray, share: float = 0.1) -> float:
    """Positive rate among the top ``share`` of scores divided by the overall positive rate.

    Ties at the boundary are broken by order of appearance (stable sort), so a constant score
    gives a lift close to 1, as it should.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    base_rate = labels.mean() if len(labels) else 0.0
    if base_rate == 0.0:
        return float("nan")
    top_count = max(1, int(np.ceil(share * len(labels))))
    top = np.argsort(-scores, kind="stable")[:top_count]
    return float(labels[top].mean() / base_rate)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, ranking_scores: np.ndarray | None = None
) -> dict[str, float]:
    """Ranking and calibration metrics of a probabilistic score on one slice.

    Args:
        labels: 0/1 outcomes.
        probabilities: predicted probabilities of 1 (Brier, log loss, ECE).
        ranking_scores: the score that orders customers (ROC AUC, PR AUC, lift) when it is not
            the probability itself, e.g. a rule whose probabilities come from a step function.

    ROC AUC and PR AUC are NaN when the slice holds one class only.
    """
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    ranking = probabilities if ranking_scores is None else np.asarray(ranking_scores, np.float64)
    both_classes = len(np.unique(labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(labels, ranking)) if both_classes else float("nan"),
        "pr_auc": (
            float(average_precision_score(labels, ranking)) if both_classes else float("nan")
        ),
        "brier": float(brier_score_loss(labels, probabilities)),
        "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "ece": expected_calibration_error(labels, probabilities),
        "lift_top_decile": lift_at_top(labels, ranking, 0.1),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
    }


# Whether a larger value of each metric is better: the promotion gate needs the direction.
HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True,
    "pr_auc": True,
    "lift_top_decile": True,
    "brier": False,
    "log_loss": False,
    "ece": False,
}
