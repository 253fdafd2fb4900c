"""LightGBM's single-row fast path (serving.models) gives Booster.predict's answers bit for bit.

/recommend scores one customer at a time through ``SingleRowPredictor``; batch scoring and the
models' own methods go through ``Booster.predict``. Both must agree exactly (same trees, same
NaN handling), for probabilities, values and TreeSHAP contributions.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.models import (
    PREDICT_CONTRIB,
    PREDICT_NORMAL,
    PREDICT_RAW,
    SingleRowPredictor,
    churn_probability_one,
    contributions_one,
    single_row_predictor,
    value_one,
)
from training.model import CalibratedClassifier, fit_calibrated_classifier

FEATURES = ["recency", "frequency", "spend", "noise"]
PARAMS = {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 15, "n_jobs": 1}


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.exponential(60, n),
            rng.poisson(3, n).astype(float),
            rng.lognormal(4, 1, n),
            rng.normal(size=n),
        ]
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-0.03 * (X[:, 0] - 60)))).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    return X, y


@pytest.fixture(scope="module")
def model() -> CalibratedClassifier:
    (X_fit, y_fit), (X_cal, y_cal) = _rows(1500, 1), _rows(800, 2)
    return fit_calibrated_classifier(X_fit, y_fit, X_cal, y_cal, FEATURES, PARAMS, 10, "isotonic")


def test_probability_and_contributions_equal_the_models_own(model: CalibratedClassifier) -> None:
    X, _ = _rows(200, 3)
    expected_probability = model.predict_proba(X)[:, 1]
    expected_contributions = model.contributions(X)
    for index in range(len(X)):
        row = X[index : index + 1]
        assert churn_probability_one(model, row) == expected_probability[index]
        assert np.array_equal(contributions_one(model, row)[0], expected_contributions[index])


def test_normal_prediction_equals_booster_predict(model: CalibratedClassifier) -> None:
    """The value model's path (PREDICT_NORMAL, objective transform applied)."""

    class Value:  # the attributes value_one reads from training.value.CustomerValueModel
        booster, best_iteration, feature_names, scale = (
            model.booster,
            model.best_iteration,
            FEATURES,
            2.5,
        )

    X, _ = _rows(50, 4)
    expected = model.booster.predict(X, num_iteration=model.best_iteration) * 2.5
    assert [value_one(Value, X[i : i + 1]) for i in range(len(X))] == expected.tolist()


def test_one_predictor_per_booster_and_kind_and_a_wrong_width_is_refused(
    model: CalibratedClassifier,
) -> None:
    booster, trees = model.booster, model.best_iteration
    first = single_row_predictor(booster, PREDICT_RAW, trees, len(FEATURES))
    assert single_row_predictor(booster, PREDICT_RAW, trees, len(FEATURES)) is first
    assert single_row_predictor(booster, PREDICT_CONTRIB, trees, len(FEATURES)) is not first
    with pytest.raises(ValueError, match="expected 4 features"):
        first(np.zeros((1, 3)))
    fresh = SingleRowPredictor(booster, PREDICT_NORMAL, trees, len(FEATURES))
    assert fresh(np.zeros(4)).shape == (1, 1)
