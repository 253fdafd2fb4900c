"""Champion history on a real MLflow registry (SQLite): promote, rollback, restore.

Three real models (tiny LightGBM + calibrator) are logged and registered as versions 1..3 of
the churn model; the aliases then move as a human or a failed pipeline would move them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from omniretain.settings import Settings, load_settings
from training.model import fit_calibrated_classifier
from training.registry import (
    CHAMPION_ALIAS,
    MODEL_NAMES,
    PREVIOUS_CHAMPION_ALIAS,
    RegistryChangeError,
    champion_versions,
    load_champion,
    move_champion,
    promote,
    restore_champions,
    rollback,
    snapshot_champions,
)
from training.train import _experiment_id

NAME = MODEL_NAMES["churn"]


def tiny_model(seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + rng.normal(scale=1.0, size=400) > 0).astype(int)
    return fit_calibrated_classifier(
        X[:300], y[:300], X[300:], y[300:], ["a", "b", "c"], {"n_estimators": 5 + seed, "n_jobs": 1}
    )


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import mlflow
    import mlflow.sklearn

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings(state_dir=tmp_path_factory.mktemp("registry_state"))
        settings.ensure_dirs()
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        # an experiment of our own: the default one would put artifacts in the cwd's mlruns/
        experiment_id = _experiment_id(settings, NAME)
        for seed in range(3):
            with mlflow.start_run(experiment_id=experiment_id):
                info = mlflow.sklearn.log_model(
                    tiny_model(seed),
                    name="model",
                    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
                    pip_requirements=["lightgbm"],
                )
            mlflow.register_model(info.model_uri, NAME)
        yield settings


def aliases(settings: Settings) -> dict[str, str]:
    from mlflow import MlflowClient

    model = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_registered_model(NAME)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_promote_rollback_and_restore(settings: Settings) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    with pytest.raises(RegistryChangeError, match="no previous champion"):
        rollback(settings, "churn")  # registered, but never a champion

    move_champion(client, NAME, "1", "first")
    with pytest.raises(RegistryChangeError, match="no previous champion"):
        rollback(settings, "churn")
    change = promote(settings, "churn", "3", reason="hand-picked after review")
    assert (change.from_version, change.to_version) == ("1", "3")
    assert aliases(settings) == {CHAMPION_ALIAS: "3", PREVIOUS_CHAMPION_ALIAS: "1"}
    assert client.get_model_version(NAME, "3").tags["promotion_decision"] == "manual"
    assert load_champion(settings, "churn").model.best_iteration >= 1

    promote(settings, "churn", "2")
    assert champion_versions(settings)["churn"] == "2"

    # Rollback restores the previous champion, and again the one before it.
    assert rollback(settings, "churn").to_version == "3"
    assert aliases(settings) == {CHAMPION_ALIAS: "3", PREVIOUS_CHAMPION_ALIAS: "1"}
    assert load_champion(settings, "churn").version == "3"
    assert rollback(settings, "churn").to_version == "1"
    assert aliases(settings) == {CHAMPION_ALIAS: "1"}
    with pytest.raises(RegistryChangeError, match="no previous champion"):
        rollback(settings, "churn")

    # A pipeline snapshot, a promotion, then the restore a failed pipeline does.
    before = snapshot_champions(settings)
    promote(settings, "churn", "2")
    changes = restore_champions(settings, before)
    assert [(c.from_version, c.to_version) for c in changes] == [("2", "1")]
    assert aliases(settings) == {CHAMPION_ALIAS: "1"}
    assert restore_champions(settings, before) == []


def test_promote_refuses_an_unknown_version(settings: Settings) -> None:
    with pytest.raises(RegistryChangeError, match="has no version 99"):
        promote(settings, "churn", "99")
    with pytest.raises(ValueError, match="unknown model kind"):
        promote(settings, "upsell", "1")
