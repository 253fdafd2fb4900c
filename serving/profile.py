"""The unified cross-channel profile a call-centre agent reads (``GET /profile/{customer_id}``).

Merged identities, channels used, last purchases, open cases, consents come from the DuckDB
warehouse, opened **read-only** per request. DuckDB lets one process write a file at a time:
while ingestion holds it, opening fails at once (it never waits), and the profile is answered
from what serving has anyway (scores, features, contact history) with
``warehouse_available: false`` rather than blocking the agent or failing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

LAST_PURCHASES = 5
CASE_WINDOW_DAYS = 30  # as the feature builder's open_cases


class Identity(BaseModel):
    id_type: str
    id_value: str
    first_seen_at: datetime | None = None


class Purchase(BaseModel):
    occurred_at: datetime
    channel: str | None
    amount: float | None
    items: int | None
    product_id: str | None
    is_return: bool | None


class OpenCase(BaseModel):
    case_id: str
    last_contact_at: datetime
    contact_channel: str | None
    reason: str | None


class WarehouseProfile(BaseModel):
    """The warehouse part of a profile; empty lists when the customer has no such rows."""

    identities: list[Identity] = Field(default_factory=list)
    channels_used: list[str] = Field(default_factory=list)
    last_purchases: list[Purchase] = Field(default_factory=list)
    open_cases: list[OpenCase] = Field(default_factory=list)
    consents: dict[str, bool] = Field(default_factory=dict)


class WarehouseUnavailableError(RuntimeError):
    """The warehouse is missing or locked by a writer; the caller answers without it."""


def _tables(connection: Any) -> set[str]:
    return {name for (name,) in connection.execute("SHOW TABLES").fetchall()}


def read_warehouse_profile(warehouse_path: Path, customer_id: str) -> WarehouseProfile:
    """Read one customer's profile rows; never waits for a writer.

    Raises:
        WarehouseUnavailableError: no warehouse yet, or a writer holds its lock.
    """
    import duckdb

    if not warehouse_path.exists():
        raise WarehouseUnavailableError(f"no warehouse at {warehouse_path}: run ingest first")
    try:
        connection = duckdb.connect(str(warehouse_path), read_only=True)
    except duckdb.Error as error:
        raise WarehouseUnavailableError(f"warehouse busy or unreadable: {error}") from error
    try:
        tables = _tables(connection)
        profile = WarehouseProfile()
        if "identity_links" in tables:
            profile.identities = [
                Identity(id_type=t, id_value=str(v), first_seen_at=s)
                for t, v, s in connection.execute(
                    "SELECT id_type, id_value, first_seen_at FROM identity_links"
                    " WHERE customer_id = ? ORDER BY id_type, id_value",
                    [customer_id],
                ).fetchall()
            ]
        channel_sources = [
            f"SELECT channel FROM {table} WHERE customer_id = $id AND channel IS NOT NULL"
            for table in ("purchases", "web_events", "messages")
            if table in tables
        ]
        if "contacts" in tables:
            channel_sources.append(
                "SELECT contact_channel FROM contacts WHERE customer_id = $id"
                " AND contact_channel IS NOT NULL"
            )
        if channel_sources:
            query = " UNION ".join(channel_sources)
            profile.channels_used = sorted(
                str(c) for (c,) in connection.execute(query, {"id": customer_id}).fetchall()
            )
        if "purchases" in tables:
            profile.last_purchases = [
                Purchase(occurred_at=o, channel=c, amount=a, items=i, product_id=p, is_return=r)
                for o, c, a, i, p, r in connection.execute(
                    "SELECT occurred_at, channel, amount, items, product_id, is_return"
                    " FROM purchases WHERE customer_id = ? ORDER BY occurred_at DESC LIMIT ?",
                    [customer_id, LAST_PURCHASES],
                ).fetchall()
            ]
        if "contacts" in tables:
            profile.open_cases = [
                OpenCase(case_id=str(k), last_contact_at=o, contact_channel=c, reason=r)
                for k, o, c, r in connection.execute(
                    """
                    SELECT case_id, occurred_at, contact_channel, reason FROM contacts
                    WHERE customer_id = ? AND case_id IS NOT NULL
                    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY occurred_at DESC) = 1
                        AND NOT coalesce(resolved, false)
                        AND occurred_at >= (SELECT max(occurred_at) FROM contacts)
                            - INTERVAL (?) DAY
                    ORDER BY occurred_at DESC
                    """,
                    [customer_id, CASE_WINDOW_DAYS],
                ).fetchall()
            ]
        if "consents" in tables:
            profile.consents = {
                str(channel): bool(granted)
                for channel, granted in connection.execute(
                    "SELECT channel, arg_max(granted, occurred_at) FROM consents"
                    " WHERE customer_id = ? GROUP BY channel ORDER BY channel",
                    [customer_id],
                ).fetchall()
            }
        return profile
    except duckdb.Error as error:
        raise WarehouseUnavailableError(f"warehouse read failed: {error}") from error
    finally:
        connection.close()


class Profile(BaseModel):
    """``GET /profile/{customer_id}``: who the customer is across channels, and where we stand."""

    customer_id: str
    known: bool = Field(description="The feature store or the warehouse knows the customer.")
    warehouse_available: bool
    warehouse_error: str | None = None
    identities: list[Identity]
    channels_used: list[str]
    last_purchases: list[Purchase]
    open_cases: list[OpenCase]
    consents: dict[str, bool]
    recent_contacts: list[dict[str, Any]]
    scores: dict[str, float] | None = Field(
        description="churn_probability, repurchase_probability, customer_value; None if unknown."
    )
    risk_band: str | None
    model_versions: dict[str, str | None]


def build_profile(
    customer_id: str,
    warehouse: WarehouseProfile | None,
    warehouse_error: str | None,
    feature_consents: dict[str, bool],
    recent_contacts: list[dict[str, Any]],
    scores: dict[str, float] | None,
    risk_band: str | None,
    model_versions: dict[str, str | None],
) -> Profile:
    """Merge the parts; the warehouse's consents win, the features' fill in when it is away."""
    part = warehouse or WarehouseProfile()
    consents = {**feature_consents, **part.consents}
    return Profile(
        customer_id=customer_id,
        known=scores is not None or bool(part.identities or part.last_purchases),
        warehouse_available=warehouse is not None,
        warehouse_error=warehouse_error,
        identities=part.identities,
        channels_used=part.channels_used,
        last_purchases=part.last_purchases,
        open_cases=part.open_cases,
        consents=consents,
        recent_contacts=recent_contacts,
        scores=scores,
        risk_band=risk_band,
        model_versions=model_versions,
    )
