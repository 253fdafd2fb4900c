"""Shared test set-up: no telemetry, no network, and state only under pytest's tmp folders."""

from __future__ import annotations

import os

import pytest

for _name, _value in {
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_name, _value)

# Speed is measured in benchmarks, not in tests: hypothesis' per-example deadline (200 ms) turns a
# loaded CI machine into failures, so it is off for every property test.
from hypothesis import settings  # noqa: E402

settings.register_profile("omniretain", deadline=None)
settings.load_profile("omniretain")


# The longest test files, with their rough length in seconds on an idle 2-core machine (each
# does real training, a simulated retailer or a `bentoml serve`). `make test` runs files on two
# xdist workers, one file per worker at a time (`--dist loadfile --no-loadscope-reorder`):
# xdist's default order (the files with the most tests first) started exactly these last (seen
# on a loaded machine: the demo, the drift loop and the kill test began 28 to 44 minutes into a
# 50-minute run, the soak later still), so one worker ran a long file while the other had
# nothing left. They go
# first here, longest first, and the many short files fill in the end. Re-measure with
# `pytest --durations=0` when a file grows.
LONG_FILES: dict[str, float] = {
    "tests/integration/test_faults_kill.py": 240,
    "tests/e2e/test_demo.py": 200,
    "tests/integration/test_drift_retrain.py": 150,
    "tests/integration/test_api_hardening.py": 120,
    "tests/integration/test_soak.py": 90,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first, longest first; every other file after them, in collection order.

    The sort is stable: the tests of one file keep their order (the kill test's steps depend on
    it)."""
    rank = {path: -seconds for path, seconds in LONG_FILES.items()}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], 0))
