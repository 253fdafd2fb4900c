"""What every command of the CLI shares: the console, settings, stage framing and error edge.

Each stage package registers its own commands (``features/cli.py``, ``training/cli.py``,
``serving/cli.py``, ``monitoring/cli.py``) with these helpers, so that a command looks and fails
the same way wherever it lives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from omniretain.settings import Settings, load_settings

console = Console()
T = TypeVar("T")
state: dict[str, Any] = {"debug": False}


def quiet_third_party() -> None:
    """Keep the terminal for our own reports: the libraries' import-time deprecation notices
    and INFO chatter say nothing a user can act on (``--debug`` keeps them)."""
    if state["debug"]:
        return
    import logging
    import warnings

    for module in (
        "evidently",
        "litestar",
        "numpy",
        "mlflow",
        "sqlalchemy",
        "feast",
        "dask",
        "pydantic",
        "_bentoml_sdk",
        "_bentoml_impl",
        "bentoml",
    ):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=rf"{module}(\..*)?")
    warnings.filterwarnings("ignore", message="invalid escape sequence")
    warnings.filterwarnings("ignore", message=".*configure_mappers.*")
    warnings.filterwarnings("ignore", module=r"sqlalchemy(\..*)?")
    for logger in ("mlflow", "alembic", "feast"):
        logging.getLogger(logger).setLevel(logging.WARNING)


def cli_settings() -> Settings:
    """The settings of this invocation, with the state folders created."""
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def guarded(step: str, func: Callable[[], T]) -> T:
    """Run one stage; a failure becomes a clear message and exit code 1, not a traceback."""
    quiet_third_party()  # again: Feast's import puts its own warning filters in front
    try:
        return func()
    except typer.Exit:
        raise
    except Exception as error:  # the edge of the program: every error ends up here
        if state["debug"]:
            raise
        console.print(f"[bold red]{step} failed:[/] {type(error).__name__}: {error}")
        console.print(
            "[dim]Nothing was replaced: the previous good state is still in place. "
            "Re-run with --debug for the traceback.[/]"
        )
        raise typer.Exit(code=1) from None


@contextmanager
def stage(title: str) -> Iterator[None]:
    """A rule with the stage's title before, its duration after."""
    console.rule(f"[bold]{title}")
    started = time.perf_counter()
    yield
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f} s")


def show(report: Any) -> None:
    """Print a stage report: its own rich rendering if it has one, else its fields."""
    render = getattr(report, "render", None) or getattr(report, "to_table", None)
    if callable(render):
        console.print(render())
    elif hasattr(report, "model_dump"):
        console.print_json(json.dumps(report.model_dump(mode="json"), default=str))
    else:
        console.print(report)
