"""Commands of the serving stage."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, console, guarded, show, stage
from omniretain.settings import PROJECT_ROOT


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Start the BentoML HTTP service (POST /recommend) in the foreground."""
    from serving.server import server_command, server_env

    settings = cli_settings()
    host = host or settings.serving.host
    port = port or settings.serving.port
    console.print(f"[bold]serving[/] on http://{host}:{port}  (Swagger UI at /, Ctrl-C stops)")
    raise typer.Exit(
        subprocess.call(server_command(host, port), cwd=PROJECT_ROOT, env=server_env(settings))
    )


def score(
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file to write (default: <state_dir>/scores/scores.parquet)."),
    ] = None,
    reasons_for: Annotated[
        int,
        typer.Option(help="Explain the churn drivers of this many top-value decisions."),
    ] = 1000,
) -> None:
    """Score and decide for every customer of the latest snapshot (offline features, parquet)."""
    from serving.batch import score_latest

    settings = cli_settings()
    with stage("score: batch scores and decisions from the offline features"):
        show(guarded("score", lambda: score_latest(settings, out, reasons_for)))


campaign_app = typer.Typer(help="Campaigns for marketing: audience, control group, export, log.")


@campaign_app.command("build")
def campaign_build(
    action: Annotated[str, typer.Option(help="The catalogue action to send.")],
    budget: Annotated[
        float, typer.Option(help="Money to spend; each treated contact costs the action's cost.")
    ],
    segment: Annotated[
        str | None,
        typer.Option(help='SQL condition over the features, e.g. "spend_365d > 200".'),
    ] = None,
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    control_share: Annotated[
        float, typer.Option(help="Share of the audience held out as the control group.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the control group draw.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Export file (.csv or .parquet); default in the log.")
    ] = None,
) -> None:
    """Choose the audience that maximises expected incremental value under the budget."""
    from serving.batch import compile_champions
    from serving.campaign import CampaignRequest, build_campaign
    from serving.models import load_model_set

    settings = cli_settings()
    request = CampaignRequest(action, budget, segment, channel, control_share, seed)

    def run():  # -> CampaignReport
        models = load_model_set(settings)  # the champions /recommend serves, value and uplift too
        # the trees `omniretain score` compiled for these champions, if it did (none is built
        # here: a campaign is scored as the batch is, by LightGBM on every core otherwise)
        compile_champions(models, settings, rows=0)
        return build_campaign(
            settings,
            request,
            models.churn.model,
            models.repurchase.model,
            out,
            model_versions={k: v for k, v in models.versions.items() if v is not None},
            value_model=models.value.model if models.value else None,
            uplift_model=models.uplift.model if models.uplift else None,
        )

    with stage(f"campaign build: {action} under a budget of {budget:,.2f}"):
        show(guarded("campaign build", run))


def register(app: typer.Typer) -> None:
    app.add_typer(campaign_app, name="campaign")
    app.command()(serve)
    app.command()(score)
