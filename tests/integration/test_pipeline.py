"""The retraining pipeline on a simulated retailer, through the real Feast store and MLflow.

One module-scoped state, three runs in order:
1. a fresh run: ingest -> features -> train -> verify, all done; a crippled LightGBM (a constant
   score) becomes the first champion; one parent MLflow run with a nested run per step;
2. the same again: nothing new, the steps after ingest are skipped, no version registered;
3. good LightGBM parameters (a settings change, so not "nothing new"): the trained model beats
   the champion and is promoted, then a later step fails; the champions are put back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omniretain.settings import Settings, load_settings
from training.pipeline import (
    PIPELINE_EXPERIMENT,
    PipelineReport,
    PipelineStep,
    default_steps,
    run_pipeline,
)
from training.registry import MODEL_NAMES, champion_versions

CRIPPLED_LIGHTGBM = {"n_estimators": 2, "min_child_samples": 10**6, "n_jobs": 1}
GOOD_LIGHTGBM = {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 15, "n_jobs": 1}


def fail_after_promotion(settings: Settings) -> None:
    raise RuntimeError("disk full while writing the scoring snapshot")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    from omniretain.simulator import simulate

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings(state_dir=tmp_path_factory.mktemp("pipeline_state"))
        settings.ensure_dirs()
        simulate(settings, customers=800, months=10, seed=7, progress=False)
        settings.training.lightgbm = dict(CRIPPLED_LIGHTGBM)
        first = run_pipeline(settings, reason="manual")
        second = run_pipeline(settings, reason="schedule")
        champions_before_failure = champion_versions(settings)
        settings.training.lightgbm = dict(GOOD_LIGHTGBM)
        steps = [step for step in default_steps() if step.name != "build-features"]
        steps.insert(2, PipelineStep("export", fail_after_promotion))  # after train
        failed = run_pipeline(settings, reason="manual", steps=steps)
        yield {
            "settings": settings,
            "runs": [first, second, failed],
            "champions_before_failure": champions_before_failure,
        }


def statuses(report: PipelineReport) -> dict[str, str]:
    return {step.name: step.status for step in report.steps}


def test_a_fresh_run_does_every_step_and_records_nested_runs(state) -> None:
    from mlflow import MlflowClient

    first: PipelineReport = state["runs"][0]
    assert first.status == "succeeded", first.error
    assert statuses(first) == {
        "ingest": "done",
        "build-features": "done",
        "train": "done",
        "verify": "done",
    }
    assert first.champions_after["churn"] == "1" and first.champions_after["repurchase"] == "1"
    assert first.models["churn"].champion
    client = MlflowClient(tracking_uri=state["settings"].mlflow_tracking_uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["omniretain.status"] == "succeeded"
    experiment = client.get_experiment_by_name(PIPELINE_EXPERIMENT)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}'",
    )
    assert sorted(run.info.run_name for run in children) == [
        "build-features",
        "ingest",
        "train",
        "verify",
    ]
    model_run = client.get_run(first.models["churn"].run_id)
    assert model_run.data.tags["omniretain.pipeline_run_id"] == first.parent_run_id
    assert "started" in first.log_path.read_text()


def test_nothing_new_skips_the_work(state) -> None:
    second: PipelineReport = state["runs"][1]
    assert second.status == "nothing new" and second.ok
    assert statuses(second) == {
        "ingest": "done",
        "build-features": "skipped",
        "train": "skipped",
        "verify": "skipped",
    }
    assert second.champions_after == second.champions_before
    assert second.models == {}


def test_a_failed_step_leaves_the_champions_untouched(state) -> None:
    from mlflow import MlflowClient

    failed: PipelineReport = state["runs"][2]
    before = state["champions_before_failure"]
    assert failed.status == "failed" and not failed.ok
    assert "disk full" in failed.error and "'export'" in failed.error
    assert statuses(failed) == {"ingest": "done", "train": "done", "export": "failed"}
    # The train step really promoted the better model...
    churn = failed.models["churn"]
    assert churn.champion and churn.version == "2", churn.reason
    # ...and the failure put the champion back.
    assert {change.registered_model for change in failed.restored} >= {MODEL_NAMES["churn"]}
    assert champion_versions(state["settings"]) == before
    client = MlflowClient(tracking_uri=state["settings"].mlflow_tracking_uri)
    assert client.get_run(failed.parent_run_id).info.status == "FAILED"
    # The new version stays registered, as challenger only.
    aliases = client.get_model_version(MODEL_NAMES["churn"], "2").aliases
    assert "challenger" in aliases and "champion" not in aliases


def test_a_second_run_at_the_same_time_is_refused(state) -> None:
    from training.pipeline import _exclusive

    settings = state["settings"]
    with _exclusive(settings) as acquired:
        assert acquired
        report = run_pipeline(settings, reason="drift")
    assert report.status == "busy" and not report.ok and report.steps == []
