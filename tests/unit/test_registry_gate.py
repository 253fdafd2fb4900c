"""The promotion gate: beat the champion by the margin and pass the sanity checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniretain.settings import TrainingSettings
from training.registry import promotion_gate, sanity_failures

GOOD = {"roc_auc": 0.80, "pr_auc": 0.50, "brier": 0.15, "lift_top_decile": 2.5, "ece": 0.03}
BASELINES = {"rfm": {"roc_auc": 0.70}, "logistic": {"roc_auc": 0.75}}


def metrics(**model: float) -> dict[str, dict[str, float]]:
    return {"model": {**GOOD, **model}, **BASELINES}


def policy(**overrides: object) -> TrainingSettings:
    return TrainingSettings(
        promotion_metric="roc_auc",
        promotion_margin=0.0,
        max_calibration_error=0.08,
        max_metric_drop=0.05,
        sanity_baseline="rfm",
    ).model_copy(update=overrides)


def test_a_better_sane_challenger_is_promoted() -> None:
    decision = promotion_gate(metrics(roc_auc=0.82), {**GOOD, "roc_auc": 0.80}, policy())
    assert decision.promote and decision.failures == ()
    assert decision.reason.startswith("promoted")


def test_a_worse_challenger_is_refused() -> None:
    decision = promotion_gate(metrics(roc_auc=0.79), GOOD, policy())
    assert not decision.promote
    assert "champion kept" in decision.reason


def test_a_challenger_within_the_margin_is_refused() -> None:
    decision = promotion_gate(metrics(roc_auc=0.805), GOOD, policy(promotion_margin=0.01))
    assert not decision.promote


def test_better_auc_but_miscalibrated_is_refused() -> None:
    decision = promotion_gate(metrics(roc_auc=0.85, ece=0.2), GOOD, policy())
    assert not decision.promote
    assert any("calibration error 0.2000" in failure for failure in decision.failures)


def test_better_auc_but_collapsed_pr_auc_is_refused() -> None:
    decision = promotion_gate(metrics(roc_auc=0.85, pr_auc=0.30), GOOD, policy())
    assert not decision.promote
    assert decision.failures == (
        "pr_auc collapsed: 0.3000 vs champion 0.5000 (40.0% worse, bound 5.0%)",
    )


def test_a_worse_brier_counts_as_collapse_in_its_own_direction() -> None:
    failures = sanity_failures(metrics(brier=0.20), GOOD, policy())
    assert failures and failures[0].startswith("brier collapsed")
    assert sanity_failures(metrics(brier=0.10), GOOD, policy()) == []


def test_below_the_baseline_is_refused_even_when_better_than_champion() -> None:
    weak_champion = {**GOOD, "roc_auc": 0.60}
    decision = promotion_gate(metrics(roc_auc=0.65), weak_champion, policy())
    assert not decision.promote
    assert "does not beat the rfm baseline 0.7000" in decision.reason
    assert promotion_gate(metrics(roc_auc=0.65), weak_champion, policy(sanity_baseline="chance"))[0]


def test_first_model_is_promoted_with_its_sanity_warnings() -> None:
    decision = promotion_gate(metrics(roc_auc=0.5), None, policy())
    assert decision.promote
    assert decision.reason.startswith("no champion yet")
    assert "sanity warnings" in decision.reason and decision.failures


def test_undefined_auc_fails_sanity() -> None:
    failures = sanity_failures(metrics(roc_auc=math.nan), GOOD, policy())
    assert "ROC AUC is undefined on the holdout (one class only)" in failures


def test_an_unknown_baseline_is_a_failure_not_a_crash() -> None:
    failures = sanity_failures(metrics(), None, policy(sanity_baseline="bgnbd"))
    assert failures == ["no bgnbd baseline ROC AUC to compare with"]


def test_unknown_promotion_metric_raises() -> None:
    with pytest.raises(ValueError, match="unknown promotion metric"):
        promotion_gate(metrics(), GOOD, policy(promotion_metric="accuracy"))


unit = st.floats(0.01, 0.99)


@given(challenger_auc=unit, champion_auc=unit, ece=st.floats(0.0, 0.5))
def test_the_gate_never_promotes_over_a_champion_without_beating_it(
    challenger_auc: float, champion_auc: float, ece: float
) -> None:
    decision = promotion_gate(
        metrics(roc_auc=challenger_auc, ece=ece), {**GOOD, "roc_auc": champion_auc}, policy()
    )
    if decision.promote:
        assert challenger_auc > champion_auc
        assert ece <= 0.08 and challenger_auc > BASELINES["rfm"]["roc_auc"]
        assert decision.failures == ()
