"""Training through the real stack: DuckDB warehouse -> real feature build and Feast
historical features -> LightGBM -> the real MLflow registry (SQLite) in a tmp state dir.

One module-scoped state, three training runs in order:
1. a crippled model (no split is allowed: a constant score) becomes champion, as no champion
   exists yet;
2. a real model beats it on the same holdout and is promoted;
3. the crippled model again is registered and tagged as challenger, but refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from training_synthetic import simulate_purchases, write_warehouse

from omniretain.settings import Settings, load_settings
from training.registry import (
    MODEL_NAMES,
    ModelNotFoundError,
    champion_versions,
    load_champion,
)
from training.train import TrainReport, train

GOOD_LIGHTGBM = {
    "n_estimators": 80,
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_child_samples": 20,
    "n_jobs": 1,
}
# No leaf may hold fewer rows than the whole data set: the trees cannot split, the score is
# constant, the holdout ROC AUC is 0.5.
CRIPPLED_LIGHTGBM = {"n_estimators": 2, "min_child_samples": 10**6, "n_jobs": 1}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from features.build import build_features

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings(state_dir=tmp_path_factory.mktemp("training_state"))
        settings.ensure_dirs()
        write_warehouse(settings.warehouse_path, simulate_purchases(400, 330, seed=3))
        build_features(settings, progress=False)
        yield settings


def run_training(settings: Settings, lightgbm: dict) -> TrainReport:
    settings.training.lightgbm = dict(lightgbm)
    return train(settings, progress=False)


@pytest.fixture(scope="module")
def runs(settings: Settings) -> list[TrainReport]:
    return [
        run_training(settings, CRIPPLED_LIGHTGBM),
        run_training(settings, GOOD_LIGHTGBM),
        run_training(settings, CRIPPLED_LIGHTGBM),
    ]


def version_tags(settings: Settings, name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return (
        MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        .get_model_version(name, version)
        .tags
    )


def test_no_champion_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    empty = load_settings(state_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="omniretain train"):
        load_champion(empty, "churn")
    assert champion_versions(empty) == {}
    with pytest.raises(ValueError, match="unknown model kind"):
        load_champion(empty, "upsell")


def test_first_model_becomes_champion_without_a_comparison(runs) -> None:
    first = runs[0]
    for kind, report in first.models.items():
        assert report.version == "1" and report.champion
        assert report.reason.startswith("no champion yet")
        assert report.metrics["model"]["roc_auc"] == pytest.approx(0.5)
        assert report.registered_model == MODEL_NAMES[kind]


def test_a_better_model_is_promoted_on_the_same_holdout(settings, runs) -> None:
    second = runs[1]
    for kind, report in second.models.items():
        assert report.version == "2", kind
        assert report.champion, report.reason
        assert report.metrics["model"]["roc_auc"] > 0.75
        # BG/NBD sees only the transaction log; on this synthetic log it ranks better than chance
        assert 0.6 < report.metrics["bgnbd"]["roc_auc"] <= report.metrics["model"]["roc_auc"] + 0.05
        assert report.cutoffs["holdout"] == runs[0].models[kind].cutoffs["holdout"]
        tags = version_tags(settings, MODEL_NAMES[kind], "2")
        assert tags["promotion_decision"] == "promoted"
        assert tags["compared_with_champion_version"] == "1"


def test_a_worse_challenger_is_registered_and_tagged_but_refused(settings, runs) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    third = runs[2]
    for kind, report in third.models.items():
        name = MODEL_NAMES[kind]
        assert report.version == "3" and not report.champion
        assert "champion kept" in report.reason
        tags = version_tags(settings, name, "3")
        assert tags["promotion_decision"] == "rejected"
        assert tags["promotion_reason"] == report.reason
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
        assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
        run = client.get_run(report.run_id)
        assert run.data.tags["promotion_decision"] == "rejected"
        assert run.data.params["feature_service"] == settings.features.feature_service
        assert run.data.params["holdout_cutoffs"] == ",".join(report.cutoffs["holdout"])
        for metric in ("holdout_roc_auc", "baseline_rfm_roc_auc", "baseline_logistic_brier"):
            assert metric in run.data.metrics
        assert run.data.metrics["holdout_rows"] == report.splits["holdout"].rows


def test_load_champion_returns_the_promoted_model_that_serves_one_row(settings, runs) -> None:
    assert champion_versions(settings) == {"churn": "2", "repurchase": "2", "value": "2"}
    loaded = load_champion(settings, "churn")
    assert loaded.version == "2" and loaded.run_id == runs[1].models["churn"].run_id
    model = loaded.model
    features = pd.read_parquet(settings.features_dir / "customer_features.parquet")
    row = features[model.feature_names].to_numpy(dtype=np.float64)[:1]
    probability = model.predict_proba(row)
    assert probability.shape == (1, 2) and 0.0 <= probability[0, 1] <= 1.0
    contributions = model.contributions(row)
    assert contributions.shape == (1, len(model.feature_names) + 1)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(row), atol=1e-9)


def test_everything_is_written_under_the_state_dir(settings, runs) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    for kind in ("churn", "repurchase", "value"):  # no campaigns here: uplift is skipped
        experiment = client.get_experiment_by_name(MODEL_NAMES[kind])
        assert experiment is not None, kind
    for name in (MODEL_NAMES[kind] for kind in ("churn", "repurchase", "value")):
        experiment = client.get_experiment_by_name(name)
        assert experiment.artifact_location.startswith(Path(settings.mlflow_artifact_root).as_uri())
    assert not (Path.cwd() / "mlruns").exists()
    reference = pd.read_parquet(runs[-1].reference_path)
    assert runs[-1].reference_path == settings.state_dir / "training" / "reference_features.parquet"
    assert 0 < len(reference) <= settings.monitoring.sample_rows
    assert reference["churn_probability"].between(0, 1).all()
    assert set(runs[-1].models["churn"].splits) == {"fit", "calibration", "holdout"}


def test_value_model_is_gated_like_the_classifiers_and_predicts_currency(settings, runs) -> None:
    first, second, third = (run.value for run in runs)
    assert first.champion and second.champion and not third.champion, third.reason
    assert second.metrics["model"]["spearman"] > second.metrics["last_year_spend"]["spearman"] - 0.1
    assert runs[1].uplift is None and "campaigns" in (runs[1].uplift_skipped or "")
    loaded = load_champion(settings, "value")
    assert loaded.version == "2"
    frame = pd.read_parquet(settings.features_dir / "customer_features.parquet")
    row = frame[loaded.model.feature_names].tail(1).to_numpy(dtype=float)
    value = loaded.model.predict(row)
    assert value.shape == (1,) and value[0] >= 0.0


def test_a_label_file_replaces_the_churn_label_and_nothing_else(settings, runs, tmp_path) -> None:
    from training.train import build_training_frame, train_target

    computed = build_training_frame(settings)
    cutoffs = sorted(computed["event_timestamp"].unique())[:5]
    rows = computed[computed["event_timestamp"].isin(cutoffs)][["customer_id", "event_timestamp"]]
    labels = rows.assign(
        cutoff=rows["event_timestamp"].dt.strftime("%Y-%m-%d"),
        label=(rows["customer_id"].str[-1].astype(int) % 2),  # "contract cancelled"
    )
    path = tmp_path / "labels.csv"
    labels[["customer_id", "cutoff", "label"]].to_csv(path, index=False)
    frame = build_training_frame(settings, path)
    keys = ["customer_id", "event_timestamp"]
    merged = frame.merge(labels, on=keys, how="left")
    has_file_label = merged["label"].notna()
    assert (merged.loc[has_file_label, "churned"] == merged.loc[has_file_label, "label"]).all()
    assert merged.loc[~has_file_label, "churned"].isna().all()
    repurchase = computed.set_index(keys)["repurchased"]
    pd.testing.assert_series_equal(
        frame.set_index(keys)["repurchased"].reindex(repurchase.index), repurchase
    )
    trained = train_target(settings, frame, "churn")
    assert trained.split.holdout["event_timestamp"].max() == cutoffs[-1]
