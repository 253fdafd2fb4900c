"""The ``omniretain`` command line: one command per stage, and ``demo`` that runs them all.

Every command is idempotent, prints what it did and where it wrote it, and turns a user error
into a one-line message and a non-zero exit code (``--debug`` shows the traceback). Heavy
libraries (Feast, MLflow, BentoML, Evidently) are imported inside the commands so that
``omniretain --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel

from omniretain.settings import PROJECT_ROOT, Settings, load_settings

app = typer.Typer(
    name="omniretain",
    help=(
        "Churn prevention and next-best-action for omnichannel retailers.\n\n"
        "Stages, in order: simulate (or bring your own feeds) -> ingest -> build-features -> "
        "train -> serve -> monitor. `omniretain demo` runs them all on a simulated retailer. "
        "Settings come from configs/*.yaml, overridable by OMNIRETAIN_* environment variables; "
        "all state goes under the state directory (default .omniretain/)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
T = TypeVar("T")

_state: dict[str, Any] = {"debug": False}


@app.callback()
def main(
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Where all generated state lives (default: state_dir in configs)."),
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks on errors.")] = False,
) -> None:
    if state_dir is not None:
        # Through the environment so that child processes (the BentoML server) agree.
        os.environ["OMNIRETAIN_STATE_DIR"] = str(state_dir.resolve())
    _state["debug"] = debug
    _quiet_third_party()
    for name, value in {
        "FEAST_USAGE": "False",
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }.items():
        os.environ.setdefault(name, value)


def _quiet_third_party() -> None:
    """Keep the terminal for our own reports: the libraries' import-time deprecation notices
    and INFO chatter say nothing a user can act on (``--debug`` keeps them)."""
    if _state["debug"]:
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


def _settings() -> Settings:
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def _guarded(step: str, func: Callable[[], T]) -> T:
    """Run one stage; a failure becomes a clear message and exit code 1, not a traceback."""
    _quiet_third_party()  # again: Feast's import puts its own warning filters in front
    try:
        return func()
    except typer.Exit:
        raise
    except Exception as error:  # the edge of the program: every error ends up here
        if _state["debug"]:
            raise
        console.print(f"[bold red]{step} failed:[/] {type(error).__name__}: {error}")
        console.print(
            "[dim]Nothing was replaced: the previous good state is still in place. "
            "Re-run with --debug for the traceback.[/]"
        )
        raise typer.Exit(code=1) from None


@contextmanager
def _stage(title: str) -> Iterator[None]:
    console.rule(f"[bold]{title}")
    started = time.perf_counter()
    yield
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f} s")


def _show(report: Any) -> None:
    """Print a stage report: its own rich rendering if it has one, else its fields."""
    render = getattr(report, "render", None) or getattr(report, "to_table", None)
    if callable(render):
        console.print(render())
    elif hasattr(report, "model_dump"):
        console.print_json(json.dumps(report.model_dump(mode="json"), default=str))
    else:
        console.print(report)


@app.command()
def simulate(
    customers: Annotated[int | None, typer.Option(help="Persons to simulate.")] = None,
    months: Annotated[int | None, typer.Option(help="Months of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same files).")] = None,
) -> None:
    """Write the raw per-channel feeds of a simulated omnichannel retailer, plus its truth."""
    from omniretain.simulator import simulate as run

    settings = _settings()
    with _stage("simulate: raw feeds of a simulated retailer"):
        _show(_guarded("simulate", lambda: run(settings, customers, months, seed)))


@app.command()
def ingest(
    source: Annotated[
        Path | None, typer.Option(help="Folder of feed folders (default: <state>/raw).")
    ] = None,
) -> None:
    """Validate and load the raw feeds, quarantine bad rows, resolve identities."""
    from features.ingest import ingest as run

    settings = _settings()
    with _stage("ingest: validate, quarantine, resolve identities"):
        _show(_guarded("ingest", lambda: run(settings, source)))


@app.command("build-features")
def build_features() -> None:
    """Compute point-in-time customer features, write the Feast source and materialize it."""
    from features.build import build_features as run

    settings = _settings()
    with _stage("build-features: point-in-time features into Feast"):
        _show(_guarded("build-features", lambda: run(settings)))


@app.command()
def train() -> None:
    """Train churn and repurchase models, compare with baselines, register in MLflow."""
    from training.train import train as run

    settings = _settings()
    with _stage("train: LightGBM vs baselines on a time-based holdout"):
        _show(_guarded("train", lambda: run(settings)))


@app.command()
def monitor() -> None:
    """Write an Evidently drift report of the latest features against the training reference."""
    from monitoring.drift import run_drift

    settings = _settings()
    with _stage("monitor: drift of the latest features vs training"):
        _show(_guarded("monitor", lambda: run_drift(settings)))


def _server_command(settings: Settings, host: str, port: int) -> list[str]:
    bentoml = Path(sys.executable).with_name("bentoml")
    executable = [str(bentoml)] if bentoml.exists() else [sys.executable, "-m", "bentoml"]
    return [*executable, "serve", "serving.service:OmniRetain", "--host", host, "--port", str(port)]


def _server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["OMNIRETAIN_STATE_DIR"] = str(settings.state_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Start the BentoML HTTP service (POST /recommend) in the foreground."""
    settings = _settings()
    command = _server_command(
        settings, host or settings.serving.host, port or settings.serving.port
    )
    console.print(
        f"[bold]serving[/] on http://{host or settings.serving.host}:"
        f"{port or settings.serving.port}  (Ctrl-C stops)"
    )
    raise typer.Exit(subprocess.call(command, cwd=PROJECT_ROOT, env=_server_env(settings)))


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")


@contextmanager
def running_server(settings: Settings, port: int, timeout_s: float = 120) -> Iterator[str]:
    """Start ``bentoml serve`` on loopback, yield its base URL, and always stop it."""
    log_path = settings.state_dir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _server_command(settings, "127.0.0.1", port),
            cwd=PROJECT_ROOT,
            env=_server_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base_url, process, timeout_s)
            yield base_url
        except Exception as error:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{error}; server log ({log_path}):\n{tail}") from error
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pick_demo_customers(settings: Settings, limit: int = 25) -> list[str]:
    """Customers a retention team would look at first: valuable ones who have gone quiet.

    From the served (latest) snapshot: bought before, nothing in the last 30 days, most spend
    over the year first. A real CRM would send its own ids; this only makes the demo telling.
    """
    import duckdb

    path = settings.features_dir / "customer_features.parquet"
    rows = (
        duckdb.connect()
        .execute(
            f"""SELECT customer_id FROM read_parquet('{path}')
            WHERE event_timestamp = (SELECT max(event_timestamp) FROM read_parquet('{path}'))
              AND purchases_total > 0
            ORDER BY (days_since_last_purchase >= 30) DESC, spend_365d DESC, customer_id
            LIMIT {int(limit)}"""
        )
        .fetchall()
    )
    if not rows:
        raise RuntimeError(f"no customer with a purchase in {path}")
    return [str(row[0]) for row in rows]


@app.command()
def demo(
    customers: Annotated[int | None, typer.Option(help="Persons to simulate.")] = None,
    months: Annotated[int | None, typer.Option(help="Months of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port for the demo server (default: free).")
    ] = None,
) -> None:
    """Run every stage on a simulated retailer, then ask the live service for a decision."""
    import httpx

    started = time.perf_counter()
    for step in (
        lambda: simulate(customers, months, seed),
        lambda: ingest(None),
        build_features,
        train,
        monitor,
    ):
        step()
    settings = _settings()
    customer_ids = _guarded("demo", lambda: pick_demo_customers(settings))
    with _stage("serve: POST /recommend on the live BentoML service"):

        def ask() -> list[dict[str, Any]]:
            with running_server(settings, port or free_port()) as base_url:
                console.print(
                    f"server ready at {base_url}; asking about {len(customer_ids)} "
                    "valuable customers who went quiet, one request each"
                )
                body = json.dumps({"customer_id": customer_ids[0]})
                console.print(
                    f"[dim]curl -s -X POST {base_url}/recommend "
                    f"-H 'Content-Type: application/json' -d '{body}'[/]"
                )
                answers = []
                for customer_id in customer_ids:
                    response = httpx.post(
                        f"{base_url}/recommend", json={"customer_id": customer_id}, timeout=30
                    )
                    response.raise_for_status()
                    answers.append(dict(response.json()))
                return answers

        answers = _guarded("serve", ask)
        chosen = Counter(a["next_best_action"]["action"] for a in answers)
        console.print(
            "decisions: " + ", ".join(f"{n} x {name}" for name, n in chosen.most_common())
        )
        answer = max(answers, key=lambda a: a["next_best_action"]["expected_value"])
        console.print(f"the answer with the highest expected value ({answer['customer_id']}):")
        console.print_json(json.dumps(answer))
        answer_path = settings.state_dir / "demo" / "recommendation.json"
        answer_path.parent.mkdir(parents=True, exist_ok=True)
        answer_path.write_text(json.dumps(answer, indent=2))
        console.print(f"answer saved to {answer_path}")
    console.print(
        Panel.fit(
            f"demo finished in {time.perf_counter() - started:.0f} s; "
            f"state in {settings.state_dir}\n"
            f"drift report: {settings.monitoring_dir / 'drift' / 'latest' / 'report.html'}\n"
            f"MLflow UI: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}",
            title="omniretain demo",
            border_style="green",
        )
    )


if __name__ == "__main__":
    app()
