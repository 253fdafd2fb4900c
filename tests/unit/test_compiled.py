"""Compiled trees (serving/compiled.py) predict what LightGBM predicts, once compiled per model."""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from serving import compiled


def _booster(objective: str, rounds: int = 12, seed: int = 0) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2000, 8))
    X[rng.random(X.shape) < 0.15] = np.nan  # missing values take LightGBM's default branches
    X[:, 7] = rng.integers(0, 3, len(X))  # a few distinct values, as consent flags
    signal = np.nan_to_num(X[:, 0]) + 0.5 * X[:, 7] + rng.normal(size=len(X))
    y = (signal > 0).astype(int) if objective == "binary" else np.exp(signal / 2)
    booster = lgb.train(
        {"objective": objective, "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, y),
        rounds,
    )
    probe = rng.normal(size=(700, 8))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[:, 7] = rng.integers(0, 3, len(probe))
    return booster, probe


@pytest.mark.parametrize(
    ("objective", "raw_score", "num_iteration"),
    [("binary", True, 8), ("binary", False, None), ("tweedie", False, 10)],
)
def test_compiled_predictions_equal_lightgbm(
    tmp_path: Path, objective: str, raw_score: bool, num_iteration: int | None
) -> None:
    booster, probe = _booster(objective)
    expected = booster.predict(probe, raw_score=raw_score, num_iteration=num_iteration)

    assert compiled.compile_booster(
        booster, tmp_path, num_iteration=num_iteration, raw_score=raw_score
    )
    assert compiled.is_compiled(booster, raw_score)
    got = compiled.predict(booster, probe, num_iteration=num_iteration, raw_score=raw_score)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # other trees than those compiled: LightGBM answers, with its own result
    np.testing.assert_array_equal(
        compiled.predict(booster, probe, num_iteration=5, raw_score=raw_score),
        booster.predict(probe, raw_score=raw_score, num_iteration=5),
    )


def test_compiled_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    booster, probe = _booster("binary")
    first = compiled.compile_boosters([(booster, 8, True)], tmp_path)
    assert (first.compiled, first.cached, first.failed) == (1, 0, 0)
    assert len(list(tmp_path.glob("*-raw.so"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind

    same_model = lgb.Booster(model_str=booster.model_to_string())  # another process's copy
    unseen = compiled.compile_boosters([(same_model, 6, True)], tmp_path, build=False)
    assert (unseen.compiled, unseen.cached, unseen.skipped) == (0, 0, 1)  # a small batch
    assert not compiled.is_compiled(same_model, True)
    again = compiled.compile_boosters([(same_model, 8, True)], tmp_path)
    assert (again.compiled, again.cached) == (0, 1)
    np.testing.assert_allclose(
        compiled.predict(same_model, probe, num_iteration=8, raw_score=True),
        booster.predict(probe, num_iteration=8, raw_score=True),
        rtol=0,
        atol=1e-12,
    )


def test_a_failed_compile_leaves_lightgbm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    booster, probe = _booster("binary", rounds=5)
    blocked = tmp_path / "not_a_directory"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="serving.compiled"):
        report = compiled.compile_boosters([(booster, None, True)], blocked)
    assert report.failed == 1 and not compiled.is_compiled(booster, True)
    assert "LightGBM predicts it" in caplog.text
    np.testing.assert_array_equal(
        compiled.predict(booster, probe, raw_score=True), booster.predict(probe, raw_score=True)
    )


def test_a_compiled_model_that_disagrees_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    booster, probe = _booster("binary", rounds=5)
    other, _ = _booster("binary", rounds=5, seed=1)
    compiled.compile_booster(other, tmp_path, raw_score=True)
    compiled._COMPILED[booster] = compiled._COMPILED[other]  # the wrong trees for this booster
    with caplog.at_level(logging.ERROR, logger="serving.compiled"):
        got = compiled.predict(booster, probe, raw_score=True)
    assert "differs from LightGBM" in caplog.text and not compiled.is_compiled(booster, True)
    np.testing.assert_array_equal(got, booster.predict(probe, raw_score=True))


def test_libraries_unused_for_long_are_pruned(tmp_path: Path) -> None:
    import os
    import time

    booster, _ = _booster("binary", rounds=3)
    compiled.compile_booster(booster, tmp_path, raw_score=True)
    files = sorted(tmp_path.glob("*.so")) + sorted(tmp_path.glob("*.txt"))
    assert len(files) == 2
    assert compiled.prune_unused(tmp_path) == 0  # just used
    old = time.time() - compiled.PRUNE_AFTER_S - 60
    for path in files:
        os.utime(path, (old, old))
    assert compiled.prune_unused(tmp_path) == 2 and not any(p.exists() for p in files)
