"""The champions that serve together: churn and repurchase (required), value and uplift.

One loader for the HTTP service (which swaps the whole set when an alias moves) and for batch
scoring, so both decide with the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omniretain.settings import Settings


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
    """Churn and repurchase champions (required); value and uplift when they have a champion."""
    from training.registry import ModelNotFoundError, load_champion

    optional: dict[str, Any] = {}
    for kind in ("value", "uplift"):
        try:
            optional[kind] = load_champion(settings, kind)
        except (ModelNotFoundError, ValueError):
            optional[kind] = None  # no champion (or no such kind yet): documented fallback
    return ModelSet(
        churn=load_champion(settings, "churn"),
        repurchase=load_champion(settings, "repurchase"),
        value=optional["value"],
        uplift=optional["uplift"],
    )
