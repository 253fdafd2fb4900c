"""The README's main command, end to end, on a tiny population: every stage for real.

Runs ``omniretain demo`` in a subprocess (simulate, ingest, build-features, train, monitor, then
``bentoml serve`` and one real HTTP request) and checks the answer against the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniretain.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    state_dir = tmp_path_factory.mktemp("demo_state")
    env = {**os.environ, "OMNIRETAIN_STATE_DIR": str(state_dir), "COLUMNS": "120"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "omniretain.cli",
            "demo",
            "--customers",
            "600",
            "--months",
            "12",
            "--seed",
            "11",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return state_dir, result


def test_demo_exits_cleanly_and_prints_every_stage(demo_run) -> None:
    state_dir, result = demo_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for stage in ("simulate", "ingest", "build-features", "train", "monitor", "serve"):
        assert stage in result.stdout


def test_demo_answer_is_a_real_decision_from_the_registered_champions(demo_run) -> None:
    state_dir, result = demo_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    answer = json.loads((state_dir / "demo" / "recommendation.json").read_text())
    settings = load_settings(state_dir=state_dir)

    assert 0.0 <= answer["churn_probability"] <= 1.0
    assert 0.0 <= answer["repurchase_probability"] <= 1.0
    action = answer["next_best_action"]
    catalogue = {a.name: a for a in settings.actions}
    assert action["action"] in catalogue
    assert action["channel"] in catalogue[action["action"]].channels
    assert isinstance(action["expected_value"], (int, float))
    assert action["reasons"], "a decision must say why"

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    for kind, name in (("churn", "omniretain-churn"), ("repurchase", "omniretain-repurchase")):
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(answer["model_versions"][kind]) == str(champion.version)


def test_demo_wrote_the_drift_report(demo_run) -> None:
    state_dir, result = demo_run
    assert result.returncode == 0
    latest = state_dir / "monitoring" / "drift" / "latest"
    assert (latest / "report.html").stat().st_size > 10_000
    summary = json.loads((latest / "summary.json").read_text())
    assert "drift_detected" in summary


def test_demo_replays_closed_decisions_and_serves_the_dashboard(demo_run) -> None:
    """Outcomes have served scores with a closed window; the page is written and served."""
    state_dir, result = demo_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    from monitoring.dashboard import dashboard_path
    from monitoring.outcomes import outcome_report

    settings = load_settings(state_dir=state_dir)
    outcomes = outcome_report(settings)
    assert outcomes.decisions_closed > 100
    quality = outcomes.score_quality
    assert len(quality) == 1 and quality.iloc[0]["roc_auc"] > 0.6
    page = dashboard_path(settings).read_text(encoding="utf-8")
    assert page.count('class="chart"') == 7 and "drift-status" in page
    assert "/dashboard/: " in result.stdout and "text/html" in result.stdout
