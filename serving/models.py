"""The champions that serve together: churn and repurchase (required), value and uplift.

One loader for the HTTP service (which swaps the whole set when an alias moves) and for batch
scoring, so both decide with the same models.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

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


# ---- one row at a time: LightGBM's single-row fast path ----------------------------------------
PREDICT_NORMAL, PREDICT_RAW, PREDICT_LEAF, PREDICT_CONTRIB = 0, 1, 2, 3  # C_API_PREDICT_* codes


class SingleRowPredictor:
    """``booster.predict`` of one float64 row through LightGBM's ``SingleRowFast`` C API.

    ``Booster.predict`` builds a predictor and parses its parameters on every call, which costs
    more than scoring one row with 300 trees (0.17 against 0.05 ms measured); here that is done
    once per booster. The outputs are LightGBM's own, bit for bit (tested against
    ``Booster.predict``). One thread, as every prediction of a server worker; a lock serialises
    callers (the handle owns one output buffer).
    """

    def __init__(self, booster: Any, predict_type: int, num_iteration: int, n_features: int):
        import ctypes

        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._ctypes, self._lib, self._safe_call = ctypes, _LIB, _safe_call
        self._booster = booster  # the handle lives as long as the booster
        self.n_features = n_features
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(predict_type),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(num_iteration if num_iteration and num_iteration > 0 else -1),
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(n_features),
                _c_str("num_threads=1"),
                ctypes.byref(self._handle),
            )
        )
        width = 1
        if predict_type == PREDICT_CONTRIB:
            width = n_features + 1
        elif predict_type == PREDICT_LEAF:  # one leaf index per tree used
            trees = booster.num_trees()
            per_iteration = booster.num_model_per_iteration()
            if num_iteration and num_iteration > 0:
                trees = min(trees, num_iteration * per_iteration)
            width = trees
        self._width = width
        self._length = ctypes.c_int64(0)
        self._lock = threading.Lock()

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The prediction of ``row`` ((1 x n_features) or (n_features,)), shape (1, width)."""
        row = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if row.shape[0] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {row.shape[0]}")
        ctypes = self._ctypes
        out = np.empty((1, self._width), dtype=np.float64)
        with self._lock:
            self._safe_call(
                self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle,
                    row.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._length),
                    out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
        return out

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._lib.LGBM_FastConfigFree(handle)


_PREDICTORS: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], SingleRowPredictor]] = (
    weakref.WeakKeyDictionary()
)
_PREDICTORS_LOCK = threading.Lock()


def single_row_predictor(
    booster: Any, predict_type: int, num_iteration: int | None, n_features: int
) -> SingleRowPredictor:
    """The :class:`SingleRowPredictor` of a booster, built on first use (per model object, so a
    new champion gets its own and the old one goes with its booster)."""
    key = (predict_type, int(num_iteration or -1))
    with _PREDICTORS_LOCK:
        per_booster = _PREDICTORS.setdefault(booster, {})
        predictor = per_booster.get(key)
        if predictor is None:
            predictor = SingleRowPredictor(booster, predict_type, key[1], n_features)
            per_booster[key] = predictor
    return predictor


def churn_probability_one(model: Any, row: np.ndarray) -> float:
    """A :class:`training.model.CalibratedClassifier`'s ``predict_proba(row)[0, 1]``, fast."""
    predictor = single_row_predictor(
        model.booster, PREDICT_RAW, model.best_iteration, len(model.feature_names)
    )
    raw = predictor(row)[:, 0]
    return float(np.clip(model.calibrator.transform(raw), 0.0, 1.0)[0])


def value_one(model: Any, row: np.ndarray) -> float:
    """A :class:`training.value.CustomerValueModel`'s ``predict(row)[0]``, fast."""
    predictor = single_row_predictor(
        model.booster, PREDICT_NORMAL, model.best_iteration, len(model.feature_names)
    )
    return float(predictor(row)[0, 0] * model.scale)


def contributions_one(model: Any, row: np.ndarray) -> np.ndarray:
    """A :class:`training.model.CalibratedClassifier`'s ``contributions(row)`` (TreeSHAP), fast."""
    predictor = single_row_predictor(
        model.booster, PREDICT_CONTRIB, model.best_iteration, len(model.feature_names)
    )
    return predictor(row)


def leaves_one(model: Any, row: np.ndarray) -> np.ndarray:
    """The leaf ``row`` reaches in each tree of a classifier's booster (``pred_leaf``), fast:
    shape (1, trees), int64. What :class:`serving.reasons.PathAttribution` explains."""
    predictor = single_row_predictor(
        model.booster, PREDICT_LEAF, model.best_iteration, len(model.feature_names)
    )
    return predictor(row).astype(np.int64)
