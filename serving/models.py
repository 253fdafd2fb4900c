"""The champions that serve together: churn and repurchase (required), value and uplift.

One loader for the HTTP service (which swaps the whole set when an alias moves) and for batch
scoring, so both decide with the same models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omniretain.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSet:
    """The champions served together; replaced whole, never mutated."""

    churn: Any
    repurchase: Any
    value: Any | None
    uplift: Any | None

    @property
    def versions(self) -> dict[str, str | None]:
        return {
            "churn": str(self.churn.version),
            "repurchase": str(self.repurchase.version),
            "value": str(self.value.version) if self.value else None,
            "uplift": str(self.uplift.version) if self.uplift else None,
        }


def load_model_set(settings: Settings) -> ModelSet:
    """Churn and repurchase champions (required); value and uplift when they have a champion.

    Loaded through the local cache (:mod:`serving.model_cache`), which then records them as the
    champions to start from when the registry is unreachable.
    """
    from serving.model_cache import fetch_champion, record_served
    from training.registry import ModelNotFoundError

    loaded: dict[str, Any] = {
        "churn": fetch_champion(settings, "churn"),
        "repurchase": fetch_champion(settings, "repurchase"),
    }
    for kind in ("value", "uplift"):
        try:
            loaded[kind] = fetch_champion(settings, kind)
        except (ModelNotFoundError, ValueError, KeyError):
            loaded[kind] = None  # no champion (or no such kind yet): documented fallback
    record_served(settings, loaded)
    return ModelSet(**loaded)


def load_model_set_or_cache(settings: Settings) -> tuple[ModelSet, str | None]:
    """The champions from the registry, or from the cache when the registry is unreachable.

    Returns the set and a note when it came from the cache.

    Raises:
        NoCachedModelsError: the registry is unreachable and nothing was cached.
        ModelNotFoundError: the registry answers and has no champion.
    """
    from serving.model_cache import load_cached_champions
    from training.registry import RegistryUnavailableError

    try:
        return load_model_set(settings), None
    except RegistryUnavailableError as error:
        cached = load_cached_champions(settings, str(error))
        models = ModelSet(
            churn=cached["churn"],
            repurchase=cached["repurchase"],
            value=cached.get("value"),
            uplift=cached.get("uplift"),
        )
        logger.warning("registry unreachable; serving cached champions %s", models.versions)
        return models, f"serving the cached champions {models.versions}: {error}"
