"""Shared test set-up: no telemetry, no network, and state only under pytest's tmp folders."""

from __future__ import annotations

import os

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
