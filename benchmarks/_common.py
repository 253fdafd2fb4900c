"""What the benchmarks share: the project on ``sys.path``, their common options, no telemetry.

A benchmark runs as a script (``python benchmarks/NAME.py``), so this folder is on its path and
``from _common import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TELEMETRY_OFF = {
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def benchmark_parser(
    doc: str | None,
    *,
    state_dir: str | None = None,
    state_dir_required: bool = False,
    quick: str | None = None,
) -> argparse.ArgumentParser:
    """A parser described by the docstring's first line; ``--state-dir`` and ``--quick`` are
    added when their help text is given."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    if state_dir is not None:
        parser.add_argument(
            "--state-dir", type=Path, required=state_dir_required, default=None, help=state_dir
        )
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def telemetry_off() -> None:
    """No library phones home (an explicit setting in the environment wins)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


def serve_state_dir(state_dir: Path) -> Path:
    """The state folder, absolute, exported where the service reads it."""
    resolved = state_dir.resolve()
    os.environ["OMNIRETAIN_STATE_DIR"] = str(resolved)
    return resolved
