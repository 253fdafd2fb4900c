"""The MLflow model registry as the service sees it: which version is champion, and loading it.

Training moves the ``champion`` alias only when a challenger beats it on the same holdout; the
service loads ``models:/<name>@champion`` at start-up and again when :func:`champion_versions`
reports a change. MLflow is imported inside the functions: it costs seconds to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omniretain.settings import Settings

if TYPE_CHECKING:
    from training.model import CalibratedClassifier

MODEL_NAMES: dict[str, str] = {"churn": "omniretain-churn", "repurchase": "omniretain-repurchase"}
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"


class ModelNotFoundError(LookupError):
    """No champion is registered for a model: train first."""


@dataclass
class LoadedModel:
    name: str
    version: str
    model: CalibratedClassifier
    run_id: str


def _registered_name(kind: str) -> str:
    try:
        return MODEL_NAMES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; use one of {list(MODEL_NAMES)}") from None


def _client(settings: Settings):  # -> mlflow.MlflowClient (imported lazily)
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def _registry_never_created(settings: Settings) -> bool:
    """True when the registry is a local SQLite file that does not exist yet.

    Asking MLflow would create the database (seconds of schema migrations) as a side effect of
    a read; a file that does not exist holds no champion.
    """
    uri = settings.mlflow_tracking_uri
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def _champion_version(settings: Settings, name: str):  # -> ModelVersion | None
    from mlflow.exceptions import MlflowException

    if _registry_never_created(settings):
        return None
    try:
        return _client(settings).get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        # Raised both when the registered model does not exist and when the alias is unset.
        return None


def load_champion(settings: Settings, kind: str) -> LoadedModel:
    """Load the champion of ``kind`` ("churn" or "repurchase") from the registry.

    The alias is resolved once and that exact version is loaded, so the version reported is
    the version served even if training moves the alias meanwhile.

    Raises:
        ModelNotFoundError: nothing is registered, or no version carries the champion alias.
    """
    import mlflow.sklearn

    name = _registered_name(kind)
    champion = _champion_version(settings, name)
    if champion is None:
        raise ModelNotFoundError(
            f"no '{CHAMPION_ALIAS}' version of model {name!r} in the registry at "
            f"{settings.mlflow_tracking_uri}: run `omniretain train` first"
        )
    model = mlflow.sklearn.load_model(f"models:/{name}/{champion.version}")
    return LoadedModel(
        name=name, version=str(champion.version), model=model, run_id=str(champion.run_id)
    )


def champion_versions(settings: Settings) -> dict[str, str]:
    """Champion version per kind, for the kinds that have one (cheap: no model is loaded)."""
    versions: dict[str, str] = {}
    for kind, name in MODEL_NAMES.items():
        champion = _champion_version(settings, name)
        if champion is not None:
            versions[kind] = str(champion.version)
    return versions
