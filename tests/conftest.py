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
