"""The ``omniretain`` command line: one command per stage, and ``demo`` that runs them all.

Every command is idempotent, prints what it did and where it wrote it, and turns a user error
into a one-line message and a non-zero exit code (``--debug`` shows the traceback). Heavy
libraries (Feast, MLflow, BentoML, Evidently) are imported inside the commands so that
``omniretain --help`` answers at once.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel

from omniretain.console import cli_settings, console, guarded, quiet_third_party, show, stage, state
from omniretain.settings import Settings

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
# Each stage package registers its own commands, in pipeline order.
STAGE_CLIS: tuple[str, ...] = ("features.cli", "training.cli", "serving.cli", "monitoring.cli")


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
    state["debug"] = debug
    quiet_third_party()
    for name, value in {
        "FEAST_USAGE": "False",
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }.items():
        os.environ.setdefault(name, value)


@app.command()
def simulate(
    customers: Annotated[int | None, typer.Option(help="Persons to simulate.")] = None,
    months: Annotated[int | None, typer.Option(help="Months of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same files).")] = None,
) -> None:
    """Write the raw per-channel feeds of a simulated omnichannel retailer, plus its truth."""
    from omniretain.simulator import simulate as run

    settings = cli_settings()
    with stage("simulate: raw feeds of a simulated retailer"):
        show(guarded("simulate", lambda: run(settings, customers, months, seed)))


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

    from features.cli import build_features, ingest
    from monitoring.cli import dashboard_page, monitor, replay_closed_window
    from serving.server import running_server
    from training.cli import train

    started = time.perf_counter()
    for step in (
        lambda: simulate(customers, months, seed),
        lambda: ingest(None),
        build_features,
        train,
        monitor,
        replay_closed_window,  # served scores with a closed outcome window: `monitor outcomes`
        dashboard_page,
    ):
        step()
    settings = cli_settings()
    customer_ids = guarded("demo", lambda: pick_demo_customers(settings))
    with stage("serve: POST /recommend on the live BentoML service"):

        def ask() -> list[dict[str, Any]]:
            with running_server(settings, port) as base_url:
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
                page = httpx.get(f"{base_url}/dashboard/", timeout=120)
                page.raise_for_status()
                console.print(
                    f"GET {base_url}/dashboard/: {len(page.content):,} bytes of "
                    f"{page.headers.get('content-type')} (the KPI page, served by the service)"
                )
                return answers

        answers = guarded("serve", ask)
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
            f"KPI dashboard: {settings.monitoring_dir / 'dashboard' / 'index.html'} "
            "(or GET /dashboard/ on `omniretain serve`)\n"
            "outcomes: omniretain monitor outcomes\n"
            f"MLflow UI: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}",
            title="omniretain demo",
            border_style="green",
        )
    )


@app.command()
def erase(
    customer: Annotated[str, typer.Option("--customer", help="The resolved customer id.")],
    requested_by: Annotated[
        str | None, typer.Option(help="Who asked (for the audit log); default: the OS user.")
    ] = None,
) -> None:
    """Right to be forgotten: remove a customer from every store, and audit the erasure."""
    from omniretain.erase import AUDIT_FILE, erase_customer

    settings = cli_settings()
    with stage("erase: the customer, from every store"):
        report = guarded("erase", lambda: erase_customer(settings, customer, requested_by))
        for where, count in sorted(report.removed.items()):
            console.print(f"  {where}: {count} removed")
        if not report.total:
            console.print("  nothing left to erase (already erased, or never known)")
        console.print(f"  suppression list: {report.suppressed} identifier(s) added, as hashes")
        console.print(f"audit: erasure {report.erasure_id} in {settings.state_dir / AUDIT_FILE}")


for _module in STAGE_CLIS:
    importlib.import_module(_module).register(app)


if __name__ == "__main__":
    app()
