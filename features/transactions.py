"""Transaction-log import: an order history in any shape -> the ``transactions`` feed.

A retailer that only has an order history (customer number, date, amount, maybe a channel) can
still use omniretain: this module maps such a log (CSV with any separator, whitespace-separated
text, or Parquet; with or without a header) onto the contract's ``transactions`` feed and writes
it to ``<raw_dir>/transactions/<log name>.csv``. From there it takes the same path as every other
feed: ``omniretain ingest`` validates it (quarantine, duplicates), identity resolution turns each
customer number into a ``customer_id`` (id type ``customer_ref``), and ``build-features`` computes
the point-in-time features that go into Feast.

Why the import merges rows: a log dated by day cannot tell two orders of one day apart, and the
customer-base literature (CDNOW, BG/NBD) counts one purchase *occasion* per customer and day.
Rows of one customer with the same timestamp and channel become one occasion (amounts and items
summed; returns kept apart). Rows that cannot be parsed are written unchanged, so that ingest
quarantines them with a reason and their line, instead of this step dropping them silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from features.contract import FEEDS, PURCHASE_CHANNELS
from omniretain.settings import Settings

FEED = FEEDS["transactions"]
WHITESPACE = "whitespace"  # ``sep`` value for runs of blanks (CDNOW and many exports)
# Channel names of exports mapped onto the contract's purchase channels.
CHANNEL_SYNONYMS: dict[str, str] = {
    "store": "store",
    "pos": "store",
    "shop": "store",
    "retail": "store",
    "offline": "store",
    "instore": "store",
    "web": "web",
    "online": "web",
    "ecommerce": "web",
    "e-commerce": "web",
    "website": "web",
    "mail": "web",
    "app": "app",
    "mobile": "app",
    "mobile_app": "app",
}
_SEPARATOR_NAMES: dict[str, str] = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}


class TransactionImportError(ValueError):
    """The log cannot be mapped: a named column is missing, or the file cannot be read."""


@dataclass(frozen=True)
class TransactionColumns:
    """Where the fields are in the log and how to read them.

    A column is named by its header, or, for a log without a header (``header=False``), by its
    1-based position given as text or int (``"3"`` is the third column).

    Attributes:
        customer / date / amount: the required fields.
        channel: optional; values are mapped through :data:`CHANNEL_SYNONYMS` (store, web, app).
        quantity: optional item count.
        date_format: ``strptime`` format (``%Y%m%d``); ISO 8601 when None.
        sep: field separator: ``","``, ``";"``, ``"tab"``, ``"whitespace"``; guessed when None
            (whitespace when the first line has no comma, semicolon or tab).
        header: whether the first line names the columns.
        default_channel: the channel of every row when ``channel`` is None.
    """

    customer: str | int
    date: str | int
    amount: str | int
    channel: str | int | None = None
    quantity: str | int | None = None
    date_format: str | None = None
    sep: str | None = None
    header: bool = True
    default_channel: str = "web"


class ImportReport(BaseModel):
    """What the import read and wrote."""

    source: Path
    feed_file: Path
    rows_read: int
    occasions_written: int  # purchase occasions (rows of the transactions feed)
    rows_merged: int  # rows folded into another row of the same customer, time and channel
    rows_unparsed: int  # written as read; ingest quarantines them with the reason
    customers: int
    first_date: str | None = None
    last_date: str | None = None

    def render(self) -> str:
        return (
            f"{self.rows_read:,} rows read from {self.source}\n"
            f"{self.occasions_written:,} purchase occasions of {self.customers:,} customers "
            f"({self.first_date} .. {self.last_date}); {self.rows_merged:,} same-day rows merged, "
            f"{self.rows_unparsed:,} unparsable rows left for ingest to quarantine\n"
            f"feed file: {self.feed_file}\n"
            "next: `omniretain ingest`, then `omniretain build-features`"
        )


# ---- reading (I/O edge) ---------------------------------------------------------------------
def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        named = _SEPARATOR_NAMES.get(sep.lower(), sep)
        return r"\s+" if named.lower() == WHITESPACE else named
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        first = handle.readline()
    for candidate in (",", ";", "\t"):
        if candidate in first:
            return candidate
    return r"\s+"


def read_log(path: Path, columns: TransactionColumns) -> pd.DataFrame:
    """The log as text columns (Parquet values are turned into text too).

    Raises:
        TransactionImportError: the file does not exist or cannot be parsed as a table.
    """
    if not path.is_file():
        raise TransactionImportError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
            return frame.astype(object).where(frame.notna(), None).astype("string")
        frame = pd.read_csv(
            path,
            sep=_separator(path, columns.sep),
            header=0 if columns.header else None,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            engine="python" if columns.sep is None else "c",
        )
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise TransactionImportError(f"{path}: cannot read as a table: {error}") from error
    if not columns.header:
        frame.columns = [str(position) for position in range(1, len(frame.columns) + 1)]
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame.astype("string")


def _pick(frame: pd.DataFrame, column: str | int | None, role: str) -> pd.Series | None:
    if column is None:
        return None
    name = str(column).strip()
    by_lower = {c.lower(): c for c in frame.columns}
    if name.lower() not in by_lower:
        raise TransactionImportError(
            f"the {role} column {name!r} is not in the log (columns: {', '.join(frame.columns)})"
            + ("; a log without a header names columns by 1-based position" * name.isdigit())
        )
    return frame[by_lower[name.lower()]].str.strip()


# ---- mapping (pure) -------------------------------------------------------------------------
def _parse_dates(text: pd.Series, date_format: str | None) -> pd.Series:
    if date_format:
        parsed = pd.to_datetime(text, format=date_format, errors="coerce", utc=True)
    else:
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None)


def _channels(values: pd.Series | None, default: str, length: int) -> pd.Series:
    if values is None:
        return pd.Series([default] * length, dtype="string")
    key = values.str.lower().str.replace(r"[\s]+", "", regex=True)
    mapped = key.map(CHANNEL_SYNONYMS)
    # Unknown names stay as written: ingest quarantines them with the allowed list.
    return mapped.fillna(values).astype("string")


def _id_part(value: str) -> str:
    return re.sub(r"[|\s]+", "_", value)


def transactions_feed(
    log: pd.DataFrame, columns: TransactionColumns
) -> tuple[pd.DataFrame, int, int]:
    """Map a text log onto the ``transactions`` feed.

    Returns:
        (feed rows as text: the occasions, then the unparsable rows; rows merged; occasions).

    Parsed rows are merged per (customer, time, channel, sale or return) into one occasion with
    a deterministic ``transaction_id``, so importing the same log twice writes the same file.
    """
    if columns.default_channel not in PURCHASE_CHANNELS:
        raise TransactionImportError(
            f"default channel {columns.default_channel!r} is not one of {PURCHASE_CHANNELS}"
        )
    customer = _pick(log, columns.customer, "customer")
    date_text = _pick(log, columns.date, "date")
    amount_text = _pick(log, columns.amount, "amount")
    assert customer is not None and date_text is not None and amount_text is not None
    quantity_text = _pick(log, columns.quantity, "quantity")
    channel = _channels(_pick(log, columns.channel, "channel"), columns.default_channel, len(log))
    when = _parse_dates(date_text, columns.date_format)
    amount = pd.to_numeric(amount_text, errors="coerce")
    quantity = (
        pd.to_numeric(quantity_text, errors="coerce")
        if quantity_text is not None
        else pd.Series(np.nan, index=log.index)
    )
    parsed = (
        customer.fillna("").ne("")
        & when.notna()
        & amount.notna()
        & np.isfinite(amount.astype(float))
        & channel.isin(PURCHASE_CHANNELS)
        & (quantity_text is None or quantity.notna() | quantity_text.fillna("").eq(""))
    ).fillna(False)

    good = pd.DataFrame(
        {
            "customer_ref": customer[parsed].astype(str),
            "purchased_at": when[parsed],
            "channel": channel[parsed].astype(str),
            "is_return": (amount[parsed] < 0).to_numpy(),
            "amount": amount[parsed].abs().to_numpy(),
            "items": quantity[parsed].to_numpy(),
        }
    )
    occasions = (
        good.groupby(["customer_ref", "purchased_at", "channel", "is_return"], sort=True)
        .agg(amount=("amount", "sum"), items=("items", lambda s: s.sum(min_count=1)))
        .reset_index()
    )
    stamp = occasions["purchased_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    occasions["transaction_id"] = (
        occasions["customer_ref"].map(_id_part)
        + "|"
        + stamp.str.replace(r"[-:]", "", regex=True)
        + "|"
        + occasions["channel"]
        + np.where(occasions["is_return"], "|return", "")
    )
    feed_rows = pd.DataFrame(
        {
            "transaction_id": occasions["transaction_id"],
            "purchased_at": stamp,
            "customer_ref": occasions["customer_ref"],
            "channel": occasions["channel"],
            "amount": occasions["amount"].round(6).map(repr),
            "items": occasions["items"].map(lambda v: "" if pd.isna(v) else str(int(v))),
            "is_return": np.where(occasions["is_return"], "true", "false"),
        }
    )
    # Unparsable rows keep their text: ingest's validation names what is wrong with them.
    bad_index = log.index[~parsed.to_numpy()]
    bad = pd.DataFrame(
        {
            "transaction_id": [
                f"{_id_part(str(customer.get(i) or ''))}|line{int(i) + 1}" for i in bad_index
            ],
            "purchased_at": date_text[~parsed].fillna("").to_numpy(),
            "customer_ref": customer[~parsed].fillna("").to_numpy(),
            "channel": channel[~parsed].fillna("").to_numpy(),
            "amount": amount_text[~parsed].fillna("").to_numpy(),
            "items": (
                quantity_text[~parsed].fillna("").to_numpy() if quantity_text is not None else ""
            ),
            "is_return": "",
        }
    )
    merged = int(parsed.sum()) - len(occasions)
    rows = pd.concat([feed_rows, bad], ignore_index=True)[list(FEED.columns)]
    return rows, merged, len(feed_rows)


# ---- the command ----------------------------------------------------------------------------
def import_transaction_log(
    settings: Settings, path: Path, columns: TransactionColumns
) -> ImportReport:
    """Write ``<raw_dir>/transactions/<log stem>.csv`` from an order log; run ingest next.

    Raises:
        TransactionImportError: unreadable log, or a named column missing.
    """
    source = Path(path)
    log = read_log(source, columns)
    rows, merged, n_occasions = transactions_feed(log, columns)
    target = settings.raw_dir / FEED.name / f"{source.stem}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    rows.to_csv(temporary, index=False)
    temporary.replace(target)
    parsed = rows.iloc[:n_occasions]
    dates = parsed["purchased_at"]
    return ImportReport(
        source=source,
        feed_file=target,
        rows_read=len(log),
        occasions_written=len(parsed),
        rows_merged=merged,
        rows_unparsed=len(rows) - len(parsed),
        customers=int(parsed["customer_ref"].nunique()),
        first_date=str(dates.min())[:10] if len(dates) else None,
        last_date=str(dates.max())[:10] if len(dates) else None,
    )
