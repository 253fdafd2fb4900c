"""The MLflow model registry: the promotion gate, champion history, promote and rollback.

Every trained version is registered and aliased ``challenger``. The gate
(:func:`promotion_gate`) moves ``champion`` to it only when it beats the champion on the *same*
holdout by the configured margin and passes sanity checks (calibration error under a bound, no
metric collapsing against the champion, ROC AUC above a baseline: chance or a reported one).
Each move of ``champion`` goes through :func:`move_champion`, which keeps the order of champions
in the registered model's ``champion_history`` tag and the one before in the
``previous_champion`` alias, so that :func:`rollback` can restore it. The service loads
``models:/<name>@champion`` at start-up and again when :func:`champion_versions` reports a
change. MLflow is imported inside the functions: it costs seconds to import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from omniretain.settings import Settings, TrainingSettings
from training.model import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from training.model import CalibratedClassifier

MODEL_NAMES: dict[str, str] = {
    "churn": "omniretain-churn",
    "repurchase": "omniretain-repurchase",
    "value": "omniretain-value",  # training.value.CustomerValueModel: predict(X) -> currency
    "uplift": "omniretain-uplift",  # training.uplift.UpliftModel: predict(row) -> effects
}
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
PREVIOUS_CHAMPION_ALIAS = "previous_champion"
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of versions, oldest first
HISTORY_LENGTH = 50  # MLflow tag values are limited to a few thousand characters
# Metrics that must not collapse against the champion's on the same holdout (their direction is
# in HIGHER_IS_BETTER); log loss is left out: it follows Brier and explodes on one bad row.
GUARDED_METRICS = ("roc_auc", "pr_auc", "brier", "lift_top_decile")
CHANCE_BASELINE = "chance"  # ``training.sanity_baseline`` value: a random ranking
CHANCE_ROC_AUC = 0.5


class ModelNotFoundError(LookupError):
    """No champion is registered for a model: train first."""


class RegistryUnavailableError(RuntimeError):
    """The registry did not answer (server down, network, locked database): not "no champion"."""


# MLflow error codes that mean "no such model or alias"; anything else is the registry failing.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


class RegistryChangeError(ValueError):
    """A promote or rollback that cannot be done (unknown version, no previous champion)."""


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
    except MlflowException as error:
        # Raised both when the registered model does not exist and when the alias is unset...
        if error.error_code in NOT_FOUND_CODES:
            return None
        # ... and when the registry cannot be reached: that is not "no champion".
        raise RegistryUnavailableError(
            f"the model registry at {settings.mlflow_tracking_uri} did not answer: {error}"
        ) from error


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


# ---- the promotion gate (pure) ---------------------------------------------------------------


class GateDecision(NamedTuple):
    """Whether a challenger becomes champion, why, and which sanity checks it failed."""

    promote: bool
    reason: str
    failures: tuple[str, ...] = ()


def promotion_decision(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    metric: str,
    margin: float,
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why (both scored on the same holdout).

    The challenger must beat the champion by more than ``margin`` in the metric's direction;
    a tie keeps the champion (no churn of versions without evidence).
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(
            f"unknown promotion metric {metric!r}; use one of {list(HIGHER_IS_BETTER)}"
        )
    new = challenger.get(metric, float("nan"))
    if champion is None:
        return True, f"no champion yet; challenger {metric}={new:.4f}"
    if math.isnan(new):
        return False, f"challenger {metric} is undefined on the holdout; champion kept"
    old = champion.get(metric, float("nan"))
    if math.isnan(old):
        return True, f"champion {metric} is undefined on this holdout; challenger {new:.4f}"
    improvement = (new - old) if HIGHER_IS_BETTER[metric] else (old - new)
    comparison = f"challenger {metric}={new:.4f} vs champion {old:.4f}, margin {margin:.4f}"
    if improvement > margin:
        return True, f"promoted: {comparison}"
    return False, f"champion kept: {comparison}"


def sanity_failures(
    metrics: dict[str, dict[str, float]],
    champion: dict[str, float] | None,
    training: TrainingSettings,
) -> list[str]:
    """The sanity checks a challenger fails on its holdout, as readable sentences.

    Args:
        metrics: holdout metrics per scorer: ``"model"`` and the baselines (``"rfm"``, ...).
        champion: the champion's metrics on the same holdout, if there is a champion.
        training: the bounds (``max_calibration_error``, ``max_metric_drop``,
            ``sanity_baseline``).
    """
    model = metrics["model"]
    failures: list[str] = []
    auc = model.get("roc_auc", float("nan"))
    if math.isnan(auc):
        failures.append("ROC AUC is undefined on the holdout (one class only)")
    ece = model.get("ece", float("nan"))
    if math.isnan(ece) or ece > training.max_calibration_error:
        failures.append(
            f"calibration error {ece:.4f} above the bound {training.max_calibration_error:.4f}"
        )
    baseline = (
        CHANCE_ROC_AUC
        if training.sanity_baseline == CHANCE_BASELINE
        else metrics.get(training.sanity_baseline, {}).get("roc_auc", float("nan"))
    )
    if math.isnan(baseline):
        failures.append(f"no {training.sanity_baseline} baseline ROC AUC to compare with")
    elif not auc > baseline:
        failures.append(
            f"ROC AUC {auc:.4f} does not beat the {training.sanity_baseline} baseline "
            f"{baseline:.4f}"
        )
    for name in GUARDED_METRICS if champion else ():
        new, old = model.get(name, float("nan")), champion.get(name, float("nan"))
        if math.isnan(old) or old == 0.0:
            continue
        if math.isnan(new):
            failures.append(f"{name} is undefined where the champion's is {old:.4f}")
            continue
        drop = (old - new) / abs(old) if HIGHER_IS_BETTER[name] else (new - old) / abs(old)
        if drop > training.max_metric_drop:
            failures.append(
                f"{name} collapsed: {new:.4f} vs champion {old:.4f} "
                f"({drop:.1%} worse, bound {training.max_metric_drop:.1%})"
            )
    return failures


def promotion_gate(
    metrics: dict[str, dict[str, float]],
    champion: dict[str, float] | None,
    training: TrainingSettings,
) -> GateDecision:
    """The gate: beat the champion on the same holdout by the margin, and pass sanity checks.

    With no champion yet the challenger is promoted even when a sanity check fails, with the
    failures in the reason: a service with no model at all helps nobody, and the next run that
    passes the checks replaces it.
    """
    promote, reason = promotion_decision(
        metrics["model"], champion, training.promotion_metric, training.promotion_margin
    )
    failures = tuple(sanity_failures(metrics, champion, training))
    if not failures:
        return GateDecision(promote, reason)
    checks = "; ".join(failures)
    if champion is None:
        return GateDecision(True, f"{reason}; sanity warnings: {checks}", failures)
    if promote:
        return GateDecision(False, f"champion kept, sanity checks failed: {checks}", failures)
    return GateDecision(False, f"{reason}; sanity checks failed too: {checks}", failures)


# ---- moving the champion alias, with its history (registry I/O) -------------------------------


@dataclass
class RegistryChange:
    """What a promote or rollback did, for the CLI and the logs."""

    registered_model: str
    from_version: str | None
    to_version: str | None
    action: str

    def render(self) -> str:
        before = f"v{self.from_version}" if self.from_version else "no champion"
        after = f"v{self.to_version}" if self.to_version else "no champion"
        return f"{self.action} {self.registered_model}: champion {before} -> {after}"


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_history(client, name: str) -> list[str]:
    """Champion versions of ``name`` in the order they were champion (the current one last)."""
    tags = client.get_registered_model(name).tags
    history = [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    current = _alias_version(client, name, CHAMPION_ALIAS)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # set outside move_champion (an older registry): adopt it
    return history


def _write_history(client, name: str, history: list[str]) -> None:
    history = history[-HISTORY_LENGTH:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if len(history) >= 2:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, history[-2])
    elif _alias_version(client, name, PREVIOUS_CHAMPION_ALIAS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS)


_deferred_moves: list[tuple[object, str, str, str]] | None = None


@contextmanager
def champion_moves_at_the_end() -> Iterator[None]:
    """Hold every :func:`move_champion` of the block and apply them when the block succeeds.

    A training killed part-way (SIGKILL, power loss) has then registered challengers at most:
    every ``champion`` alias is still where it was, and the service keeps serving a coherent
    set. Moves are applied in order in a few milliseconds at the very end ("commit last").
    """
    global _deferred_moves
    outer, _deferred_moves = _deferred_moves, []
    try:
        yield
        moves, _deferred_moves = _deferred_moves, outer
        for client, name, version, reason in moves:
            move_champion(client, name, version, reason)
    finally:
        _deferred_moves = outer


def move_champion(client, name: str, version: str, reason: str) -> RegistryChange:
    """Point ``champion`` at ``version``, remembering the current one for :func:`rollback`."""
    history = champion_history(client, name)
    current = history[-1] if history else None
    version = str(version)
    if _deferred_moves is not None:  # inside champion_moves_at_the_end: applied at its end
        _deferred_moves.append((client, name, version, reason))
        return RegistryChange(name, current, version, "promote")
    if current != version:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        _write_history(client, name, [*history, version])
    client.set_model_version_tag(
        name, version, "champion_since", f"{datetime.now(UTC).isoformat()} ({reason})"
    )
    return RegistryChange(name, current, version, "promote")


def promote(settings: Settings, kind: str, version: str, reason: str = "manual") -> RegistryChange:
    """A human override: make ``version`` of ``kind`` the champion, whatever the gate said.

    Raises:
        RegistryChangeError: the model or the version does not exist.
    """
    from mlflow.exceptions import MlflowException

    name = _registered_name(kind)
    if _registry_never_created(settings):
        raise RegistryChangeError(f"no registry at {settings.mlflow_tracking_uri}: train first")
    client = _client(settings)
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryChangeError(
            f"{name} has no version {version}: see the versions with "
            f"`mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}`"
        ) from None
    change = move_champion(client, name, str(version), reason)
    client.set_model_version_tag(name, str(version), "promotion_decision", "manual")
    client.set_model_version_tag(name, str(version), "promotion_reason", reason)
    return change


def rollback(settings: Settings, kind: str) -> RegistryChange:
    """Restore the champion before the current one (repeatable: walks back the history).

    Raises:
        RegistryChangeError: no champion, or no earlier champion to go back to.
    """
    from mlflow.exceptions import MlflowException

    name = _registered_name(kind)
    if _registry_never_created(settings):
        raise RegistryChangeError(f"no registry at {settings.mlflow_tracking_uri}: train first")
    client = _client(settings)
    try:
        history = champion_history(client, name)
    except MlflowException:
        raise RegistryChangeError(f"{name} is not registered: train first") from None
    if len(history) < 2:
        raise RegistryChangeError(
            f"{name} has no previous champion to roll back to (history: {history or 'empty'})"
        )
    current, previous = history[-1], history[-2]
    client.set_registered_model_alias(name, CHAMPION_ALIAS, previous)
    _write_history(client, name, history[:-1])
    client.set_model_version_tag(name, current, "rolled_back_at", datetime.now(UTC).isoformat())
    return RegistryChange(name, current, previous, "rollback")


@dataclass
class ChampionState:
    """The champion, previous champion and history of one registered model, to restore later."""

    champion: str | None
    history: list[str]


def snapshot_champions(settings: Settings) -> dict[str, ChampionState]:
    """The champion state of every registered model that exists (for :func:`restore_champions`)."""
    from mlflow.exceptions import MlflowException

    if _registry_never_created(settings):
        return {}
    client = _client(settings)
    states: dict[str, ChampionState] = {}
    for name in MODEL_NAMES.values():
        try:
            history = champion_history(client, name)
        except MlflowException:
            continue  # not registered yet
        states[name] = ChampionState(_alias_version(client, name, CHAMPION_ALIAS), history)
    return states


def restore_champions(settings: Settings, before: dict[str, ChampionState]) -> list[RegistryChange]:
    """Put every champion back where :func:`snapshot_champions` found it (a failed pipeline).

    A model that had no champion before loses the one it gained; versions registered since stay
    registered (as challengers), only the aliases and the history move back.
    """
    from mlflow.exceptions import MlflowException

    if _registry_never_created(settings):
        return []
    client = _client(settings)
    changes: list[RegistryChange] = []
    for name in MODEL_NAMES.values():
        state = before.get(name, ChampionState(None, []))
        try:
            current = _alias_version(client, name, CHAMPION_ALIAS)
            client.get_registered_model(name)
        except MlflowException:
            continue
        if current == state.champion:
            continue
        if state.champion is None:
            client.delete_registered_model_alias(name, CHAMPION_ALIAS)
        else:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, state.champion)
        _write_history(client, name, state.history)
        changes.append(RegistryChange(name, current, state.champion, "restore"))
    return changes
