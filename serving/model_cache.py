"""Champion artifacts cached under the state dir: the service starts when the registry is down.

Each champion is resolved in the MLflow registry, its model folder is copied once per version into
``<state_dir>/serving/model_cache/<registered name>/<version>/`` (a temporary folder renamed into
place, so a crash never leaves half a model), and the service loads it from there. A manifest
(``manifest.json``, written by temp file + rename after every champion is cached) records which
versions were served last. When the registry cannot be reached at start-up
(:class:`training.registry.RegistryUnavailableError`), :func:`load_cached_champions` loads those
versions from the cache; with no cache the service refuses to become ready and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from omniretain.settings import Settings
from training.registry import MODEL_NAMES, LoadedModel, ModelNotFoundError

MANIFEST_FILE = "manifest.json"
PRUNE_AFTER_S = 3600.0  # a copy no server serves is dropped after an hour untouched
MODEL_FILE = "MLmodel"  # present in every MLflow model folder: the sign of a complete copy


class NoCachedModelsError(RuntimeError):
    """The registry is unreachable and no champion was ever cached here."""


@dataclass(frozen=True)
class CachedModel:
    """One cached champion, as recorded in the manifest."""

    kind: str
    name: str
    version: str
    run_id: str


def cache_dir(settings: Settings) -> Path:
    return settings.state_dir / "serving" / "model_cache"


def _model_dir(settings: Settings, name: str, version: str) -> Path:
    return cache_dir(settings) / name / str(version)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def fetch_champion(settings: Settings, kind: str) -> LoadedModel:
    """The champion of ``kind``: resolved in the registry, copied into the cache, loaded from it.

    Raises:
        ModelNotFoundError: the registry answers and has no champion of ``kind``.
        RegistryUnavailableError: the registry did not answer.
    """
    import mlflow.artifacts
    import mlflow.sklearn

    from training.registry import CHAMPION_ALIAS, _champion_version, _client

    name = MODEL_NAMES[kind]
    champion = _champion_version(settings, name)
    if champion is None:
        raise ModelNotFoundError(
            f"no '{CHAMPION_ALIAS}' version of model {name!r} in the registry at "
            f"{settings.mlflow_tracking_uri}: run `omniretain train` first"
        )
    version = str(champion.version)
    target = _model_dir(settings, name, version)
    if not (target / MODEL_FILE).exists():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        _client(settings)  # points mlflow at this state's registry
        partial = target.with_name(f".{version}.{os.getpid()}.tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(partial)
            )
            shutil.rmtree(target, ignore_errors=True)  # an incomplete copy of another process
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    model = mlflow.sklearn.load_model(str(target))
    return LoadedModel(name=name, version=version, model=model, run_id=str(champion.run_id))


def record_served(settings: Settings, loaded: dict[str, LoadedModel | None]) -> None:
    """Write the manifest of the champions now served and drop cached versions no longer in it.

    Only copies untouched for ``PRUNE_AFTER_S`` go: another process on the same state (batch
    scoring, a second server) may have just fetched a version this one does not serve, and be
    loading it.
    """
    entries = {
        kind: asdict(CachedModel(kind, model.name, model.version, model.run_id))
        for kind, model in loaded.items()
        if model is not None
    }
    manifest = {"saved_at": datetime.now(UTC).isoformat(), "models": entries}
    _write_atomically(cache_dir(settings) / MANIFEST_FILE, json.dumps(manifest, indent=2))
    keep = {(entry["name"], entry["version"]) for entry in entries.values()}
    now = time.time()
    for name in MODEL_NAMES.values():
        folder = cache_dir(settings) / name
        if not folder.is_dir():
            continue
        for version_dir in folder.iterdir():
            if (
                (name, version_dir.name) not in keep
                and not version_dir.name.startswith(".")
                and now - version_dir.stat().st_mtime > PRUNE_AFTER_S
            ):
                shutil.rmtree(version_dir, ignore_errors=True)


def cached_models(settings: Settings) -> dict[str, CachedModel]:
    """The manifest's champions whose folders are complete; empty when nothing was cached."""
    path = cache_dir(settings) / MANIFEST_FILE
    if not path.exists():
        return {}
    entries = json.loads(path.read_text()).get("models", {})
    found = {kind: CachedModel(**entry) for kind, entry in entries.items()}
    return {
        kind: entry
        for kind, entry in found.items()
        if (_model_dir(settings, entry.name, entry.version) / MODEL_FILE).exists()
    }


def load_cached_champions(settings: Settings, reason: str) -> dict[str, LoadedModel]:
    """Load the champions served last from the cache (the registry is unreachable: ``reason``).

    Raises:
        NoCachedModelsError: no churn and repurchase champions were cached here.
    """
    import mlflow.sklearn

    cached = cached_models(settings)
    missing = [kind for kind in ("churn", "repurchase") if kind not in cached]
    if missing:
        raise NoCachedModelsError(
            f"{reason}; and no cached champion of {missing} under {cache_dir(settings)}: "
            "the service stays not ready until the registry answers"
        )
    return {
        kind: LoadedModel(
            name=entry.name,
            version=entry.version,
            model=mlflow.sklearn.load_model(str(_model_dir(settings, entry.name, entry.version))),
            run_id=entry.run_id,
        )
        for kind, entry in cached.items()
    }
