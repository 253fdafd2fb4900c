"""Plots and model card of a training run: the numbers behind them, and the card's content."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.report import (
    calibration_bins,
    calibration_figure,
    card_caveats,
    gain_curve,
    gain_figure,
    importance_figure,
    lift_by_decile,
    model_card,
    top_importances,
)

METRICS = {
    "model": {"roc_auc": 0.81, "pr_auc": 0.5, "brier": 0.15, "ece": 0.03, "lift_top_decile": 2.4},
    "rfm": {"roc_auc": 0.74, "pr_auc": 0.4, "brier": 0.17, "ece": 0.04, "lift_top_decile": 2.0},
}


def test_calibration_bins_of_a_perfectly_calibrated_score() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(size=200_000)
    labels = rng.uniform(size=probabilities.size) < probabilities
    bins = calibration_bins(labels, probabilities)
    assert len(bins.predicted) == 10 and bins.counts.sum() == probabilities.size
    np.testing.assert_allclose(bins.observed, bins.predicted, atol=0.01)


def test_calibration_bins_drop_empty_bins() -> None:
    bins = calibration_bins(np.array([0, 1, 1]), np.array([0.05, 0.95, 1.0]))
    assert bins.counts.tolist() == [1, 2]
    assert bins.observed.tolist() == [0.0, 1.0]


def test_gain_curve_of_a_perfect_ranking() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    targeted, captured = gain_curve(labels, -np.arange(10.0))
    assert targeted[0] == 0 and captured[0] == 0 and targeted[-1] == 1 and captured[-1] == 1
    assert captured[2] == 1.0  # both positives within the first 20 %


@given(st.lists(st.tuples(st.booleans(), st.floats(-5, 5)), min_size=1, max_size=200))
def test_gain_curve_is_monotone_and_ends_at_one(rows: list[tuple[bool, float]]) -> None:
    labels = np.array([label for label, _ in rows], dtype=float)
    scores = np.array([score for _, score in rows])
    targeted, captured = gain_curve(labels, scores)
    assert np.all(np.diff(targeted) > 0) and np.all(np.diff(captured) >= 0)
    assert captured[-1] == (1.0 if labels.sum() else 0.0)


def test_lift_by_decile_of_a_perfect_ranking_and_of_no_positive() -> None:
    labels = np.r_[np.ones(10), np.zeros(90)]
    lift = lift_by_decile(labels, -np.arange(100.0))
    assert lift[0] == pytest.approx(10.0) and np.all(lift[1:] == 0)
    assert np.isnan(lift_by_decile(np.zeros(20), np.arange(20.0))).all()


def test_top_importances_are_shares_largest_first() -> None:
    ranked = top_importances(["a", "b", "c"], np.array([1.0, 3.0, 0.0]), top=2)
    assert ranked == [("b", 0.75), ("a", 0.25)]


def test_caveats_name_a_small_holdout_and_a_baseline_that_wins() -> None:
    losing = {**METRICS, "logistic": {**METRICS["model"], "roc_auc": 0.83}}
    caveats = card_caveats(
        losing, holdout_rows=400, holdout_positives=30, max_calibration_error=0.08
    )
    assert any(c.startswith("Small holdout (400 rows, 30 positives)") for c in caveats)
    assert any("logistic baseline ranks at least as well" in c for c in caveats)
    assert not any("rfm baseline" in c for c in caveats)
    big = card_caveats(
        METRICS, holdout_rows=10_000, holdout_positives=900, max_calibration_error=0.01
    )
    assert not any(c.startswith("Small holdout") for c in big)
    assert any(c.startswith("Calibration error 0.0300 is above") for c in big)


def test_model_card_has_window_features_metrics_and_caveats() -> None:
    card = model_card(
        registered_model="churn (churned)",
        label="churned",
        feature_service="churn_v1",
        feature_names=["days_since_last_purchase", "purchases_90d"],
        cutoffs={
            "fit": ["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01"],
            "calibration": ["2025-05-01"],
            "holdout": ["2025-06-01"],
        },
        data_end="2025-09-30",
        split_sizes={"fit": (4000, 900), "calibration": (1000, 220), "holdout": (1000, 230)},
        metrics=METRICS,
        champion_metrics={"roc_auc": 0.79},
        decision="promoted: challenger roc_auc=0.8100 vs champion 0.7900",
        best_iteration=120,
        calibration="isotonic",
        caveats=["Small holdout."],
    )
    assert card.startswith("# Model card: churn (churned)")
    assert "- fit: 4,000 rows, 900 positive (2025-01-01 .. 2025-04-01, 4 cutoffs)" in card
    assert "- holdout: 1,000 rows, 230 positive (2025-06-01)" in card
    assert "feature service `churn_v1`" in card and "`purchases_90d`" in card
    assert "| model | 0.8100 | 0.5000 | 0.1500 | 0.0300 | 2.4000 |" in card
    assert "| current champion | 0.7900 | n/a | n/a | n/a | n/a |" in card
    assert "Promotion gate: promoted" in card and "- Small holdout." in card


def test_figures_render_to_png(tmp_path) -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=500)
    labels = (rng.uniform(size=500) < probabilities).astype(float)
    figures = [
        calibration_figure(calibration_bins(labels, probabilities), "t"),
        gain_figure(
            {"model": gain_curve(labels, probabilities)}, lift_by_decile(labels, probabilities), "t"
        ),
        importance_figure([("a", 0.7), ("b", 0.3)], "t"),
    ]
    for index, figure in enumerate(figures):
        path = tmp_path / f"{index}.png"
        figure.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
