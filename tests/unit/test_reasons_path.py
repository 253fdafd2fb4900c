"""Path attribution (serving.reasons): the churn drivers /recommend serves by default.

Checked against an independent walk of each tree of ``dump_model()`` in plain Python (the
textbook Saabas / treeinterpreter definition), against the raw score it must decompose, and
against TreeSHAP for the feature that drives a simulated churn.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from serving.models import leaves_one
from serving.reasons import ContributionCache, contributions, path_contributions, top_churn_drivers
from training.model import CalibratedClassifier, fit_calibrated_classifier

FEATURES = ["days_since_last_purchase", "purchases_90d", "spend_365d", "noise"]
PARAMS = {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 15, "n_jobs": 1}


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
    y = (rng.random(n) < 1 / (1 + np.exp(-0.03 * (X[:, 0] - 60) + 0.2 * X[:, 1]))).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    return X, y


@pytest.fixture(scope="module")
def model() -> CalibratedClassifier:
    (X_fit, y_fit), (X_cal, y_cal) = _rows(1500, 1), _rows(800, 2)
    return fit_calibrated_classifier(X_fit, y_fit, X_cal, y_cal, FEATURES, PARAMS, 10, "isotonic")


def _walk_saabas(model: CalibratedClassifier, row: np.ndarray) -> np.ndarray:
    """Saabas by the book: walk every tree for ``row``, credit each split's value change."""
    dump = model.booster.dump_model(num_iteration=model.best_iteration)
    out = np.zeros(len(FEATURES) + 1)

    def value(node: dict) -> float:
        return float(node["leaf_value"] if "leaf_value" in node else node["internal_value"])

    for info in dump["tree_info"]:
        node = info["tree_structure"]
        out[-1] += value(node)
        while "split_feature" in node:
            x = row[node["split_feature"]]
            assert node["decision_type"] == "<="
            if math.isnan(x):
                left = (
                    node["default_left"]
                    if node["missing_type"] == "NaN"
                    else 0.0 <= node["threshold"]
                )
            else:
                left = x <= node["threshold"]
            child = node["left_child"] if left else node["right_child"]
            out[node["split_feature"]] += value(child) - value(node)
            node = child
    return out


def test_path_attribution_equals_the_tree_walk_and_sums_to_the_raw_score(
    model: CalibratedClassifier,
) -> None:
    X, _ = _rows(200, 3)
    batch = path_contributions(model, X)
    assert batch.shape == (200, len(FEATURES) + 1)
    np.testing.assert_allclose(batch.sum(axis=1), model.raw_score(X), atol=1e-9)
    for index in range(0, 200, 7):
        row = X[index : index + 1]
        one = path_contributions(model, row)  # the single-row fast path (pred_leaf)
        np.testing.assert_array_equal(one[0], batch[index])
        np.testing.assert_allclose(one[0], _walk_saabas(model, row[0]), atol=1e-9)
    leaves = model.booster.predict(X[:5], pred_leaf=True, num_iteration=model.best_iteration)
    assert leaves_one(model, X[:1]).tolist() == leaves[:1].tolist()


def test_path_and_treeshap_name_the_driver_of_churn(model: CalibratedClassifier) -> None:
    row = np.array([[280.0, 0.0, 50.0, 0.0]])
    features = dict(zip(FEATURES, row[0].tolist(), strict=True))
    for method in ("path", "treeshap"):
        values = contributions(model, row, method)[0, :-1]
        drivers = top_churn_drivers(dict(zip(FEATURES, values.tolist(), strict=True)), features)
        assert drivers[0] == "no purchase for 280 days", method


def test_cache_serves_the_configured_method(model: CalibratedClassifier) -> None:
    champion = SimpleNamespace(version="1", model=model)
    row = np.array([[120.0, 1.0, np.nan, 0.3]])
    path = ContributionCache().get(champion, row)
    shap = ContributionCache(method="treeshap").get(champion, row)
    assert list(path.values()) == path_contributions(model, row)[0, :-1].tolist()
    assert list(shap.values()) == model.contributions(row)[0, :-1].tolist()
    assert path != shap  # two different attributions (off-path credit in TreeSHAP)
