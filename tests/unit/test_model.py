"""The calibrated LightGBM classifier, the metric helpers and the promotion gate."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from training.model import (
    CalibratedClassifier,
    IsotonicCalibrator,
    ModelInputError,
    PlattCalibrator,
    classification_metrics,
    expected_calibration_error,
    fit_calibrated_classifier,
    lift_at_top,
    lightgbm_parameters,
)
from training.train import promotion_decision

FEATURES = ["recency", "frequency", "spend", "noise"]
PARAMS = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 20,
    "n_jobs": 1,
}


def synthetic_slice(rows: int, seed: int, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable target (non-linear in recency, interaction with frequency), ~5% missing."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.exponential(60, rows) + drift,
            rng.poisson(3, rows).astype(float),
            rng.lognormal(4, 1, rows),
            rng.normal(size=rows),
        ]
    )
    logit = 0.03 * (X[:, 0] - 60) - 0.4 * (X[:, 1] - 3) + 0.3 * (X[:, 0] > 120) * X[:, 1]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y


@pytest.fixture(scope="module")
def slices() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "fit": synthetic_slice(3000, 1),
        "calibration": synthetic_slice(1500, 2, drift=5.0),
        "later": synthetic_slice(1500, 3, drift=10.0),
    }


@pytest.fixture(scope="module")
def model(slices) -> CalibratedClassifier:
    (X_fit, y_fit), (X_cal, y_cal) = slices["fit"], slices["calibration"]
    return fit_calibrated_classifier(X_fit, y_fit, X_cal, y_cal, FEATURES, PARAMS, 20, "isotonic")


def test_model_ranks_a_later_slice_well_with_valid_probabilities(model, slices) -> None:
    X_later, y_later = slices["later"]
    probabilities = model.predict_proba(X_later)
    assert probabilities.shape == (len(X_later), 2)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert roc_auc_score(y_later, probabilities[:, 1]) > 0.75
    assert model.feature_names == FEATURES
    assert 0 < model.best_iteration <= PARAMS["n_estimators"]


def test_calibration_keeps_or_improves_brier_on_a_later_slice(model, slices) -> None:
    X_later, y_later = slices["later"]
    uncalibrated = 1 / (1 + np.exp(-model.raw_score(X_later)))
    calibrated = model.predict_proba(X_later)[:, 1]
    assert brier_score_loss(y_later, calibrated) <= brier_score_loss(y_later, uncalibrated) + 2e-3


def test_platt_calibration_is_available_and_monotone(slices) -> None:
    (X_fit, y_fit), (X_cal, y_cal) = slices["fit"], slices["calibration"]
    platt = fit_calibrated_classifier(X_fit, y_fit, X_cal, y_cal, FEATURES, PARAMS, 20, "sigmoid")
    assert isinstance(platt.calibrator, PlattCalibrator)
    raw = np.linspace(-4, 4, 50)
    assert np.all(np.diff(platt.calibrator.transform(raw)) >= 0)
    X_later, y_later = slices["later"]
    assert roc_auc_score(y_later, platt.predict_proba(X_later)[:, 1]) > 0.75


def test_contributions_have_one_column_per_feature_plus_bias_and_sum_to_the_raw_score(
    model, slices
) -> None:
    X_later = slices["later"][0][:50]
    contributions = model.contributions(X_later)
    assert contributions.shape == (50, len(FEATURES) + 1)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(X_later), atol=1e-9)
    # the noise feature matters least on average
    mean_abs = np.abs(contributions[:, :-1]).mean(axis=0)
    assert mean_abs.argmin() == FEATURES.index("noise")


def test_one_row_a_1d_row_and_a_reordered_dataframe_give_the_same_answer(model, slices) -> None:
    row = slices["later"][0][:1]
    expected = model.predict_proba(row)
    np.testing.assert_allclose(model.predict_proba(row[0]), expected)
    frame = pd.DataFrame(row, columns=FEATURES)[list(reversed(FEATURES))]
    np.testing.assert_allclose(model.predict_proba(frame), expected)
    assert model.predict(row).tolist() == [int(expected[0, 1] >= 0.5)]


def test_wrong_inputs_are_refused_with_a_clear_message(model) -> None:
    with pytest.raises(ModelInputError, match="4 feature columns"):
        model.predict_proba(np.zeros((1, 3)))
    with pytest.raises(ModelInputError, match="noise"):
        model.predict_proba(pd.DataFrame({"recency": [1.0]}))


def test_model_survives_pickle_unchanged(model, slices) -> None:
    X_later = slices["later"][0][:20]
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X_later), model.predict_proba(X_later))
    np.testing.assert_array_equal(restored.contributions(X_later), model.contributions(X_later))


def test_lightgbm_parameters_default_to_two_threads_silent_and_seeded() -> None:
    params = lightgbm_parameters({"n_estimators": 10, "verbose": 1})
    assert params["n_jobs"] == 2 and params["verbose"] == -1 and "random_state" in params
    assert lightgbm_parameters({"n_jobs": 1})["n_jobs"] == 1


def test_one_class_slice_is_refused() -> None:
    X, y = synthetic_slice(200, 4)
    with pytest.raises(ValueError, match="one class"):
        fit_calibrated_classifier(X, y, X, np.zeros_like(y), FEATURES, PARAMS)


def test_isotonic_calibrator_matches_sklearn_isotonic_regression() -> None:
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(5)
    raw = rng.normal(size=500)
    labels = (rng.random(500) < 1 / (1 + np.exp(-2 * raw))).astype(int)
    ours = IsotonicCalibrator().fit(raw, labels)
    margin = 0.5 / 501
    reference = IsotonicRegression(y_min=margin, y_max=1 - margin, out_of_bounds="clip")
    reference.fit(raw, labels)
    grid = np.linspace(-5, 5, 101)
    np.testing.assert_allclose(ours.transform(grid), reference.predict(grid))
    assert 0 < ours.transform(grid).min() and ours.transform(grid).max() < 1


def test_expected_calibration_error_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    # bin [0.1, 0.2): mean p 0.1, rate 0; bin [0.9, 1]: mean p 0.9, rate 1 -> 0.1 each
    assert expected_calibration_error(labels, np.array([0.1, 0.1, 0.9, 0.9])) == pytest.approx(0.1)
    # everything at 0.5 but the rate is 0.5 -> perfectly calibrated
    assert expected_calibration_error(labels, np.full(4, 0.5)) == pytest.approx(0.0)
    # p = 1.0 lands in the last bin, not out of range
    assert expected_calibration_error(np.array([1]), np.array([1.0])) == pytest.approx(0.0)


def test_lift_at_top_decile_by_hand() -> None:
    labels = np.array([1] * 2 + [0] * 18)  # base rate 0.1
    perfect = np.arange(20)[::-1].astype(float)  # the two positives score highest
    assert lift_at_top(labels, perfect, 0.1) == pytest.approx(10.0)
    assert lift_at_top(labels, -perfect, 0.1) == pytest.approx(0.0)
    assert math.isnan(lift_at_top(np.zeros(10), np.arange(10.0)))


def test_classification_metrics_on_a_perfect_and_a_one_class_slice() -> None:
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(labels, np.array([0.0, 0.0, 1.0, 1.0]))
    assert metrics["roc_auc"] == 1.0 and metrics["brier"] == 0.0 and metrics["ece"] == 0.0
    one_class = classification_metrics(np.zeros(3), np.array([0.2, 0.1, 0.3]))
    assert math.isnan(one_class["roc_auc"]) and one_class["brier"] == pytest.approx(14 / 300)
    ranked = classification_metrics(labels, np.full(4, 0.5), ranking_scores=np.arange(4.0))
    assert ranked["roc_auc"] == 1.0 and ranked["brier"] == 0.25


def test_promotion_gate_direction_margin_and_first_model() -> None:
    assert promotion_decision({"roc_auc": 0.7}, None, "roc_auc", 0.0)[0]
    assert promotion_decision({"roc_auc": 0.71}, {"roc_auc": 0.70}, "roc_auc", 0.0)[0]
    promote, reason = promotion_decision({"roc_auc": 0.71}, {"roc_auc": 0.70}, "roc_auc", 0.02)
    assert not promote and "kept" in reason and "0.7100" in reason
    assert not promotion_decision({"roc_auc": 0.70}, {"roc_auc": 0.70}, "roc_auc", 0.0)[0]
    assert promotion_decision({"brier": 0.10}, {"brier": 0.12}, "brier", 0.01)[0]
    assert not promotion_decision({"brier": 0.12}, {"brier": 0.10}, "brier", 0.0)[0]
    assert not promotion_decision({"roc_auc": float("nan")}, {"roc_auc": 0.6}, "roc_auc", 0.0)[0]
    with pytest.raises(ValueError, match="unknown promotion metric"):
        promotion_decision({}, None, "accuracy", 0.0)
