"""Commands of the feature stage: ingest the feeds, build features into Feast."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from omniretain.console import cli_settings, guarded, show, stage


def ingest(
    source: Annotated[
        Path | None, typer.Option(help="Folder of feed folders (default: <state>/raw).")
    ] = None,
) -> None:
    """Validate and load the raw feeds, quarantine bad rows, resolve identities."""
    from features.ingest import ingest as run

    settings = cli_settings()
    with stage("ingest: validate, quarantine, resolve identities"):
        show(guarded("ingest", lambda: run(settings, source)))


def build_features(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="Build as if this day were today: no event on or after it is used.",
        ),
    ] = None,
) -> None:
    """Compute point-in-time customer features, write the Feast source and materialize it."""
    from features.build import build_features as run

    settings = cli_settings()
    day = as_of.date() if as_of is not None else None
    with stage("build-features: point-in-time features into Feast"):
        show(guarded("build-features", lambda: run(settings, as_of=day)))


def import_transactions(
    file: Annotated[Path, typer.Argument(help="Order log: CSV, whitespace-separated or Parquet.")],
    customer_col: Annotated[
        str, typer.Option(help="Customer number column (header name, or 1-based position).")
    ],
    date_col: Annotated[str, typer.Option(help="Order date or time column.")],
    amount_col: Annotated[str, typer.Option(help="Order amount column (negative: a return).")],
    channel_col: Annotated[
        str | None, typer.Option(help="Channel column (store/web/app and synonyms).")
    ] = None,
    quantity_col: Annotated[str | None, typer.Option(help="Item count column.")] = None,
    date_format: Annotated[
        str | None, typer.Option(help="strptime format, e.g. %Y%m%d (default: ISO 8601).")
    ] = None,
    sep: Annotated[
        str | None, typer.Option(help="Separator: ',', ';', tab, whitespace (default: guessed).")
    ] = None,
    header: Annotated[
        bool, typer.Option(help="The first line names the columns (--no-header: positions).")
    ] = True,
    default_channel: Annotated[
        str, typer.Option(help="Channel of every order when there is no channel column.")
    ] = "web",
) -> None:
    """Map an order history (customer, date, amount) onto the transactions feed."""
    from features.transactions import TransactionColumns, import_transaction_log

    settings = cli_settings()
    columns = TransactionColumns(
        customer=customer_col,
        date=date_col,
        amount=amount_col,
        channel=channel_col,
        quantity=quantity_col,
        date_format=date_format,
        sep=sep,
        header=header,
        default_channel=default_channel,
    )
    with stage("import-transactions: order log -> transactions feed"):
        show(
            guarded("import-transactions", lambda: import_transaction_log(settings, file, columns))
        )


def register(app: typer.Typer) -> None:
    app.command()(ingest)
    app.command("import-transactions")(import_transactions)
    app.command("build-features")(build_features)
