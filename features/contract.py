"""The feed contract: what each raw per-channel export looks like, and the unified tables.

This module is the single source of truth shared by the simulator (which writes feeds the way real
source systems would), ingestion (which validates rows against it) and the README. A feed is a
folder ``<raw_dir>/<feed name>/`` of CSV files (Parquet and JSON Lines are accepted too), one row
per record, with a header naming the columns below. Extra columns are ignored; a missing required
column makes the whole file an error (it is not that feed).

Column types:
    ``str``      free text, stripped; empty means missing.
    ``timestamp`` ISO 8601 date-time (``2025-03-01T14:05:00``, a ``Z`` or offset allowed; naive
                 values are taken as UTC).
    ``float`` / ``int`` decimal numbers, ``.`` as the decimal separator.
    ``bool``     ``true/false``, ``1/0``, ``yes/no`` (any case).

Identifier columns carry the source system's own id of the person; ``id_type`` says which kind
(``email``, ``phone``, ``loyalty_card``, ``device_id``, ``social_handle``, ``customer_ref``).
Identity resolution links records that share any normalised identifier into one ``customer_id``.

``docs/feeds.md`` is generated from :data:`FEEDS` by :func:`contract_markdown`
(``python -m features.contract > docs/feeds.md``); a unit test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnType = Literal["str", "timestamp", "float", "int", "bool"]
IdType = Literal["email", "phone", "loyalty_card", "device_id", "social_handle", "customer_ref"]
ID_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "loyalty_card",
    "device_id",
    "social_handle",
    "customer_ref",  # the retailer's own customer number (CRM id, account id, CDNOW's id)
)

# Channel names used in unified tables (``purchases.channel`` is one of store/web/app,
# ``messages.channel`` one of email/sms).
PURCHASE_CHANNELS: tuple[str, ...] = ("store", "web", "app")


@dataclass(frozen=True)
class Column:
    """One column of a feed.

    Attributes:
        type: how the text is parsed.
        required: a row with this column empty or unparsable is quarantined.
        allowed: for ``str`` columns, the closed set of values (compared lower-cased).
        minimum / maximum: bounds for numeric columns (inclusive).
        id_type: set when the column is a person identifier.
        not_future: a timestamp after the ingest time is quarantined.
    """

    type: ColumnType
    required: bool = False
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    id_type: IdType | None = None
    not_future: bool = False
    description: str = ""


@dataclass(frozen=True)
class Feed:
    """One raw feed: its columns, primary key, event time and the unified table it lands in.

    Attributes:
        unique_by: the columns that identify one accepted row (the ``key`` alone by default);
            a profile feed re-exported with new values repeats its key with a new time.
        near_duplicate_columns: two rows with different keys but equal values here (nulls
            equal) and times within ``near_duplicate_seconds`` are one event exported twice;
            at least one identifier column among them must be set. Empty: no near-duplicate
            check.
        keeps_extra_columns: columns outside the contract are kept as JSON (``_attributes``)
            instead of being ignored; the CRM attributes feed declares its columns in config.
        example: one valid row, for the documentation.
    """

    name: str
    description: str
    key: str
    time_column: str
    target_table: str
    columns: dict[str, Column] = field(default_factory=dict)
    unique_by: tuple[str, ...] = ()
    near_duplicate_columns: tuple[str, ...] = ()
    near_duplicate_seconds: int = 60
    keeps_extra_columns: bool = False
    example: dict[str, str] = field(default_factory=dict)

    @property
    def unique_columns(self) -> tuple[str, ...]:
        """Columns whose values identify one row (null-safe equality)."""
        return self.unique_by or (self.key,)

    @property
    def id_columns(self) -> dict[str, str]:
        """Column name -> id type, for the identifier columns of this feed."""
        return {name: c.id_type for name, c in self.columns.items() if c.id_type}

    @property
    def required_columns(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.required]


def _ts(description: str = "") -> Column:
    return Column("timestamp", required=True, not_future=True, description=description)


FEEDS: dict[str, Feed] = {
    feed.name: feed
    for feed in [
        Feed(
            name="pos_sales",
            description="Store point-of-sale receipts (one row per receipt, main item named).",
            key="transaction_id",
            time_column="purchased_at",
            target_table="purchases",
            columns={
                "transaction_id": Column("str", required=True),
                "store_id": Column("str", required=True),
                "purchased_at": _ts("time of the sale"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "phone": Column("str", id_type="phone"),
                "email": Column("str", id_type="email", description="e-receipt address"),
                "amount": Column("float", required=True, minimum=0.0, maximum=100_000.0),
                "items": Column("int", required=True, minimum=1, maximum=1000),
                "discount_amount": Column("float", minimum=0.0),
                "product_id": Column("str"),
                "unit_price": Column("float", minimum=0.0),
                "is_return": Column("bool"),
            },
            near_duplicate_columns=(
                "loyalty_card",
                "phone",
                "email",
                "amount",
                "items",
                "is_return",
            ),
        ),
        Feed(
            name="web_orders",
            description="Web shop and app orders.",
            key="order_id",
            time_column="ordered_at",
            target_table="purchases",
            columns={
                "order_id": Column("str", required=True),
                "ordered_at": _ts("time the order was placed"),
                "channel": Column("str", required=True, allowed=("web", "app")),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "device_id": Column("str", id_type="device_id"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "amount": Column("float", required=True, minimum=0.0, maximum=100_000.0),
                "items": Column("int", required=True, minimum=1, maximum=1000),
                "discount_amount": Column("float", minimum=0.0),
                "promo_code": Column("str"),
                "product_id": Column("str"),
                "unit_price": Column("float", minimum=0.0),
                "is_return": Column("bool"),
            },
            near_duplicate_columns=(
                "email",
                "phone",
                "device_id",
                "loyalty_card",
                "amount",
                "items",
                "is_return",
            ),
        ),
        Feed(
            name="web_sessions",
            description="Web and app clickstream: views, cart adds, abandoned carts, checkouts.",
            key="event_id",
            time_column="occurred_at",
            target_table="web_events",
            columns={
                "event_id": Column("str", required=True),
                "occurred_at": _ts(),
                "channel": Column("str", required=True, allowed=("web", "app")),
                "session_id": Column("str", required=True),
                "device_id": Column("str", id_type="device_id"),
                "email": Column("str", id_type="email", description="set when logged in"),
                "event_type": Column(
                    "str",
                    required=True,
                    allowed=(
                        "page_view",
                        "product_view",
                        "add_to_cart",
                        "cart_abandoned",
                        "checkout",
                    ),
                ),
                "product_id": Column("str"),
                "price_seen": Column("float", minimum=0.0),
            },
        ),
        Feed(
            name="email_events",
            description="Email service provider log: sends, opens, clicks, unsubscribes.",
            key="event_id",
            time_column="occurred_at",
            target_table="messages",
            columns={
                "event_id": Column("str", required=True),
                "occurred_at": _ts(),
                "email": Column("str", required=True, id_type="email"),
                "campaign_id": Column("str"),
                "event_type": Column(
                    "str", required=True, allowed=("sent", "open", "click", "unsubscribe", "bounce")
                ),
            },
        ),
        Feed(
            name="sms_events",
            description="SMS gateway log: sends, clicks, opt-outs.",
            key="event_id",
            time_column="occurred_at",
            target_table="messages",
            columns={
                "event_id": Column("str", required=True),
                "occurred_at": _ts(),
                "phone": Column("str", required=True, id_type="phone"),
                "campaign_id": Column("str"),
                "event_type": Column("str", required=True, allowed=("sent", "click", "opt_out")),
            },
        ),
        Feed(
            name="contact_center",
            description="Call-centre and chat contacts, one row per contact of a case.",
            key="contact_id",
            time_column="occurred_at",
            target_table="contacts",
            columns={
                "contact_id": Column("str", required=True),
                "occurred_at": _ts(),
                "case_id": Column("str", required=True),
                "phone": Column("str", id_type="phone"),
                "email": Column("str", id_type="email"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "contact_channel": Column("str", required=True, allowed=("phone", "chat", "email")),
                "reason": Column(
                    "str",
                    required=True,
                    allowed=("delivery", "return", "price", "product", "billing", "other"),
                ),
                "resolved": Column("bool", required=True),
                "handle_minutes": Column("float", minimum=0.0, maximum=600.0),
            },
        ),
        Feed(
            name="social",
            description="Social media interactions with the brand (mentions, complaints, DMs).",
            key="interaction_id",
            time_column="occurred_at",
            target_table="social",
            columns={
                "interaction_id": Column("str", required=True),
                "occurred_at": _ts(),
                "handle": Column("str", required=True, id_type="social_handle"),
                "email": Column("str", id_type="email", description="when the handle is linked"),
                "interaction_type": Column(
                    "str", required=True, allowed=("mention", "complaint", "praise", "dm")
                ),
                "sentiment": Column("float", minimum=-1.0, maximum=1.0),
            },
        ),
        Feed(
            name="surveys",
            description="NPS (0-10) and CES (1-7) survey responses.",
            key="response_id",
            time_column="occurred_at",
            target_table="surveys",
            columns={
                "response_id": Column("str", required=True),
                "occurred_at": _ts(),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "survey_type": Column("str", required=True, allowed=("nps", "ces")),
                "score": Column("float", required=True, minimum=0.0, maximum=10.0),
            },
        ),
        Feed(
            name="consents",
            description="Consent changes per channel (GDPR): the latest row per channel wins.",
            key="consent_id",
            time_column="recorded_at",
            target_table="consents",
            columns={
                "consent_id": Column("str", required=True),
                "recorded_at": _ts(),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "channel": Column(
                    "str", required=True, allowed=("email", "sms", "app", "call_center")
                ),
                "granted": Column("bool", required=True),
            },
        ),
        Feed(
            name="loyalty_members",
            description="Loyalty programme enrolments: the card and the contact details given.",
            key="card_number",
            time_column="enrolled_at",
            target_table="loyalty",
            columns={
                "card_number": Column("str", required=True, id_type="loyalty_card"),
                "enrolled_at": _ts(),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "region": Column("str"),
                "birth_year": Column("int", minimum=1900, maximum=2015),
            },
        ),
        Feed(
            name="campaign_history",
            description=(
                "Past sends of retention/growth actions, randomised or with a propensity, so a "
                "retailer's own past campaigns train the uplift models. The outcome is not a "
                "column: it is read from the customer's purchases after `sent_at`. Give "
                "`propensity` = the share treated for randomised sends."
            ),
            key="send_id",
            time_column="sent_at",
            target_table="campaigns",
            columns={
                "send_id": Column("str", required=True),
                "sent_at": _ts(),
                "campaign_id": Column("str", required=True),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "action": Column("str", required=True),
                "channel": Column("str", required=True),
                "randomised": Column("bool", required=True),
                "propensity": Column("float", required=True, minimum=0.0, maximum=1.0),
                "is_control": Column("bool", required=True),
            },
        ),
        Feed(
            name="transactions",
            description=(
                "A generic order history (customer number, date, amount, optional channel), "
                "written by `omniretain import-transactions` from any CSV, whitespace or Parquet "
                "log; one row per purchase occasion."
            ),
            key="transaction_id",
            time_column="purchased_at",
            target_table="purchases",
            columns={
                "transaction_id": Column("str", required=True),
                "purchased_at": _ts("time (or date, at midnight UTC) of the purchase"),
                "customer_ref": Column(
                    "str",
                    required=True,
                    id_type="customer_ref",
                    description="the retailer's own customer number",
                ),
                "channel": Column("str", required=True, allowed=PURCHASE_CHANNELS),
                "amount": Column("float", required=True, minimum=0.0, maximum=1_000_000.0),
                "items": Column("int", minimum=0, maximum=100_000),
                "is_return": Column("bool"),
            },
            near_duplicate_columns=("customer_ref", "amount", "is_return"),
        ),
        Feed(
            name="price_observations",
            description=(
                "Prices shown per channel (shelf labels, web/app product pages, price feeds), "
                "with the customer when the observation is tied to one (a logged-in view, a "
                "scanned receipt). Unlike web_sessions.price_seen it covers the store shelf "
                "and customers who never browse, so a store price can be compared with the "
                "web price of the same day."
            ),
            key="observation_id",
            time_column="observed_at",
            target_table="price_observations",
            columns={
                "observation_id": Column("str", required=True),
                "observed_at": _ts("time the price was shown"),
                "channel": Column("str", required=True, allowed=PURCHASE_CHANNELS),
                "product_id": Column("str", required=True),
                "price": Column("float", required=True, minimum=0.0, maximum=100_000.0),
                "store_id": Column("str", description="the store, for channel store"),
                "email": Column("str", id_type="email"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
                "device_id": Column("str", id_type="device_id"),
            },
        ),
        Feed(
            name="crm_attributes",
            description=(
                "Customer-level attributes the retailer keeps (plan, contract, age band, "
                "region...). Any extra column is kept; those declared under `crm.attributes` "
                "in configs/omniretain.yaml become features `crm_<name>`. Rows without "
                "updated_at are static (known at every snapshot); a dated row applies from "
                "its date, the latest one wins."
            ),
            key="crm_id",
            time_column="updated_at",
            target_table="crm_attributes",
            columns={
                "crm_id": Column("str", required=True, description="the CRM's record id"),
                "updated_at": Column(
                    "timestamp", not_future=True, description="when the values took effect"
                ),
                "customer_ref": Column("str", id_type="customer_ref"),
                "email": Column("str", id_type="email"),
                "phone": Column("str", id_type="phone"),
                "loyalty_card": Column("str", id_type="loyalty_card"),
            },
            unique_by=("crm_id", "updated_at"),
            keeps_extra_columns=True,
            example={
                "crm_id": "CRM-000042",
                "updated_at": "",
                "customer_ref": "CUST-00042",
                "email": "Ann.Lee@example.com",
                "phone": "",
                "loyalty_card": "LC-0012-3456",
                "plan": "premium",
                "region": "north west",
                "age_band": "35-44",
            },
        ),
    ]
}


# ---- unified tables (DuckDB, written by ingestion, read by features/ and training/) ----------
# Every unified row carries the resolved ``customer_id`` (NULL for anonymous web events), the
# event time as ``occurred_at`` (TIMESTAMP, UTC, naive in DuckDB) and its provenance
# (``source_feed``, ``source_id``). Column lists are the contract; ingestion may add columns.
UNIFIED_TABLES: dict[str, tuple[str, ...]] = {
    "customers": ("customer_id", "first_seen_at", "n_source_ids"),
    "identity_links": ("customer_id", "id_type", "id_value", "first_seen_at"),
    "purchases": (
        "customer_id",
        "occurred_at",
        "channel",
        "amount",
        "items",
        "discount_amount",
        "is_return",
        "product_id",
        "unit_price",
        "promo_code",
        "source_feed",
        "source_id",
    ),
    "web_events": (
        "customer_id",
        "occurred_at",
        "channel",
        "session_id",
        "event_type",
        "product_id",
        "price_seen",
        "source_feed",
        "source_id",
    ),
    "messages": (
        "customer_id",
        "occurred_at",
        "channel",
        "campaign_id",
        "event_type",
        "source_feed",
        "source_id",
    ),
    "contacts": (
        "customer_id",
        "occurred_at",
        "case_id",
        "contact_channel",
        "reason",
        "resolved",
        "handle_minutes",
        "source_feed",
        "source_id",
    ),
    "social": (
        "customer_id",
        "occurred_at",
        "interaction_type",
        "sentiment",
        "source_feed",
        "source_id",
    ),
    "surveys": ("customer_id", "occurred_at", "survey_type", "score", "source_feed", "source_id"),
    "consents": ("customer_id", "occurred_at", "channel", "granted", "source_feed", "source_id"),
    "loyalty": ("customer_id", "occurred_at", "region", "birth_year", "source_feed", "source_id"),
    "campaigns": (
        "customer_id",
        "occurred_at",
        "campaign_id",
        "action",
        "channel",
        "randomised",
        "propensity",
        "is_control",
        "source_feed",
        "source_id",
    ),
    "price_observations": (
        "customer_id",
        "occurred_at",
        "channel",
        "product_id",
        "price",
        "store_id",
        "source_feed",
        "source_id",
    ),
    # ``attributes``: JSON object of the feed's extra columns (values as text)
    "crm_attributes": ("customer_id", "occurred_at", "attributes", "source_feed", "source_id"),
    "quarantine": ("feed", "file", "line", "reason", "raw", "quarantined_at"),
    "ingested_files": (
        "feed",
        "file",
        "sha256",
        "rows_read",
        "rows_accepted",
        "rows_quarantined",
        "rows_duplicate",
        "ingested_at",
        "rows_near_duplicate",
    ),
}


# ---- the feature table (Feast offline source) ---------------------------------------------
# ``<features_dir>/customer_features.parquet``: one row per customer per snapshot cutoff, with
# ``customer_id`` (str), ``event_timestamp`` (the cutoff, tz-aware UTC; no event at or after it is
# used), ``created_timestamp`` and numeric feature columns. Feast entity ``customer`` (join key
# ``customer_id``), feature view ``customer_features``, feature service ``churn_v1`` (all
# features; used for both training sets and online reads). The decision engine relies on these
# names being present; the feature builder may add many more.
FEATURE_VIEW = "customer_features"
ENTITY = "customer"
ENTITY_KEY = "customer_id"
DECISION_FEATURES: tuple[str, ...] = (
    "days_since_last_purchase",  # days from the last purchase to the cutoff (tenure if none)
    "purchases_90d",  # purchase occasions in the last 90 days
    "spend_365d",  # net spend in the last 365 days (the value at stake)
    "channel_breadth_90d",  # distinct channels used in the last 90 days
    "open_cases",  # cases whose last contact was unresolved (last 30 days)
    "abandoned_carts_30d",  # cart_abandoned events in the last 30 days
    "hours_since_last_abandoned_cart",  # large (99999) when none
    "consent_email",  # 1.0 granted, 0.0 withdrawn or never given (latest wins)
    "consent_sms",
    "consent_app",
    "consent_call_center",
)


# ---- the documentation (docs/feeds.md is generated from here) -----------------------------
_EXAMPLE_IDS: dict[str, str] = {
    "email": "Ann.Lee@example.com",
    "phone": "07911 123456",
    "loyalty_card": "LC-0012-3456",
    "device_id": "dev-9f2c41aa",
    "social_handle": "@ann_lee",
    "customer_ref": "CUST-00042",
}
_EXAMPLE_TEXT: dict[str, str] = {
    "store_id": "S014",
    "product_id": "P00123",
    "session_id": "s-81f2",
    "campaign_id": "CMP-2025-03",
    "case_id": "CASE-5521",
    "promo_code": "SPRING10",
    "region": "north west",
    "action": "discount_10",
}


def example_row(feed: Feed) -> dict[str, str]:
    """One valid row of the feed as text: the feed's own example, else built from the types."""
    if feed.example:
        return dict(feed.example)
    row: dict[str, str] = {}
    for name, column in feed.columns.items():
        if name == feed.key and column.id_type is None:
            value = f"{feed.name[:3].upper()}-000001"
        elif column.id_type:
            value = _EXAMPLE_IDS[column.id_type]
        elif column.allowed:
            value = column.allowed[0]
        elif column.type == "timestamp":
            value = "2025-03-01T14:05:00"
        elif column.type == "float":
            low = column.minimum if column.minimum is not None else 0.0
            high = column.maximum if column.maximum is not None else 100.0
            value = f"{min(max(12.5, low), high):.2f}"
        elif column.type == "int":
            value = str(int(column.minimum)) if column.minimum and column.minimum > 1 else "1"
        elif column.type == "bool":
            value = "false"
        else:
            value = _EXAMPLE_TEXT.get(name, f"{name}-1")
        row[name] = value
    return row


def _rule(column: Column) -> str:
    parts = []
    if column.allowed:
        parts.append("one of " + ", ".join(f"`{value}`" for value in column.allowed))
    if column.minimum is not None:
        parts.append(f">= {column.minimum:g}")
    if column.maximum is not None:
        parts.append(f"<= {column.maximum:g}")
    if column.not_future:
        parts.append("not in the future")
    return "; ".join(parts)


def contract_markdown() -> str:
    """The feed contract as Markdown: ``python -m features.contract > docs/feeds.md``."""
    lines = [
        "# Feed contract",
        "",
        "<!-- Generated from features/contract.py by `python -m features.contract > "
        "docs/feeds.md`; a unit test keeps them equal. Do not edit by hand. -->",
        "",
        "A feed is a folder `<state>/raw/<feed>/` of files, one row per record: **CSV** (header "
        'line, `,` separator, `"` quotes), **Parquet** or **JSON Lines** (`.jsonl`, one object '
        "a line). Column names are matched trimmed and case-insensitively; extra columns are "
        "ignored (kept as JSON for `crm_attributes`). A file missing a required column is not "
        "that feed: `omniretain ingest` stops with an error naming the file before writing "
        "anything. A row with a missing required value or a bad value goes to the `quarantine` "
        "table with feed, file, line and reason; a row whose key was already accepted is a "
        "duplicate; a row repeating an accepted event under another key (near duplicate, see "
        "each feed) is removed and counted. Re-ingesting a file adds nothing.",
        "",
        "Types: `str` text (trimmed, empty = missing); `timestamp` ISO 8601 "
        "(`2025-03-01T14:05:00`, `Z` or an offset allowed, naive = UTC, a date alone = "
        "midnight); `float`/`int` with `.` decimals; `bool` `true/false`, `1/0`, `yes/no`.",
        "",
        "Identifiers (column *id*): records sharing any normalised identifier are one "
        "customer. " + ", ".join(f"`{t}`" for t in ID_TYPES) + ". Emails are trimmed and "
        "lower-cased, phones turned to E.164 (national numbers read in "
        "`identity.default_phone_region`), cards lose spaces and separators, handles lose `@`.",
        "",
        "| feed | lands in | key | time | identifiers |",
        "|---|---|---|---|---|",
    ]
    for feed in FEEDS.values():
        ids = ", ".join(f"{n} ({t})" for n, t in feed.id_columns.items()) or "none"
        lines.append(
            f"| [`{feed.name}`](#{feed.name}) | `{feed.target_table}` | `{feed.key}` | "
            f"`{feed.time_column}` | {ids} |"
        )
    for feed in FEEDS.values():
        lines += ["", f"## {feed.name}", "", feed.description, ""]
        facts = [
            f"Folder `raw/{feed.name}/`; rows land in the unified table `{feed.target_table}`.",
            f"One row per `{'` + `'.join(feed.unique_columns)}`; event time `{feed.time_column}`.",
        ]
        if feed.near_duplicate_columns:
            facts.append(
                f"Near duplicate: another key with the same "
                f"{', '.join(f'`{c}`' for c in feed.near_duplicate_columns)} within "
                f"{feed.near_duplicate_seconds} s (at least one identifier set)."
            )
        lines += [f"- {fact}" for fact in facts]
        lines += [
            "",
            "| column | type | required | rule | id | description |",
            "|---|---|---|---|---|---|",
        ]
        for name, column in feed.columns.items():
            lines.append(
                f"| `{name}` | {column.type} | {'yes' if column.required else ''} | "
                f"{_rule(column)} | {column.id_type or ''} | {column.description} |"
            )
        example = example_row(feed)
        lines += [
            "",
            "Example (CSV):",
            "",
            "```csv",
            ",".join(example),
            ",".join(f'"{v}"' if "," in v else v for v in example.values()),
            "```",
        ]
    lines += [
        "",
        "## Importing an order history (transactions)",
        "",
        "A retailer with only an order log (customer number, date, amount, optional channel) "
        "maps it onto the `transactions` feed, then runs the usual stages:",
        "",
        "```bash",
        "omniretain import-transactions orders.csv --customer-col customer_id "
        "--date-col order_date --amount-col total [--channel-col channel] "
        "[--quantity-col items] [--date-format %Y-%m-%d] [--sep ';'|tab|whitespace] "
        "[--no-header]",
        "omniretain ingest",
        "omniretain build-features            # or --as-of 1997-10-01 to stop at a date",
        "```",
        "",
        "CSV (any separator), whitespace-separated text and Parquet are read; without a header, "
        "columns are named by 1-based position (`--customer-col 1`). Rows of one customer "
        "with the same timestamp and channel are one purchase occasion (a date-only log: one "
        "per day), amounts summed; a negative amount is a return. Channel names are mapped "
        "(`online` -> web, `pos` -> store, `mobile` -> app); without a channel column every "
        "order gets `--default-channel` (web). Unparsable rows are written as read, so ingest "
        "quarantines them with the reason. The customer number becomes a `customer_ref` "
        "identifier. The real CDNOW log, for example:",
        "",
        "```bash",
        "omniretain import-transactions CDNOW_master.txt --customer-col customer_id "
        "--date-col date --amount-col dollar_value --quantity-col number_of_cds "
        "--date-format %Y%m%d",
        "omniretain import-transactions CDNOW_sample.txt --no-header --customer-col 1 "
        "--date-col 3 --quantity-col 4 --amount-col 5 --date-format %Y%m%d",
        "```",
        "",
        "## CRM attributes",
        "",
        "Declare the columns of the `crm_attributes` feed that should become features in "
        "`configs/omniretain.yaml`; no code changes:",
        "",
        "```yaml",
        "crm:",
        "  attributes:",
        "    - {name: plan, type: categorical, description: membership plan}",
        "    - {name: tenure_years, type: numeric}",
        "```",
        "",
        "Each becomes the feature `crm_<name>` in the snapshot parquet, the Feast feature view "
        "and the models. Categorical values are trimmed and lower-cased and get stable integer "
        "codes (-1 when unknown), appended to the warehouse table `crm_category_codes` in "
        "order of first appearance, so a value keeps its code across runs; numeric values are "
        "floats (NaN when unknown). Rows without `updated_at` are static attributes known at "
        "every snapshot; a dated row applies from its date (the latest known value wins).",
        "",
        "## Unified tables",
        "",
        "Ingestion rebuilds these DuckDB tables (`<state>/warehouse.duckdb`) from the accepted "
        "rows; every row carries the resolved `customer_id`, `occurred_at` (UTC) and its "
        "provenance (`source_feed`, `source_id`).",
        "",
        "| table | columns |",
        "|---|---|",
    ]
    for table, columns in UNIFIED_TABLES.items():
        lines.append(f"| `{table}` | {', '.join(columns)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(contract_markdown(), end="")
