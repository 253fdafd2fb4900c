"""Point-in-time customer features from the DuckDB warehouse, and the build step that feeds Feast.

One row per (customer, snapshot cutoff) for every customer first seen before the cutoff. Only
events with ``occurred_at < cutoff`` are used, so a row describes exactly what was knowable at
the cutoff: training rows never peek at their own label window, and the last (serving) cutoff is
what the online store serves.

The heavy lifting is one DuckDB query: each event table is joined to the (few) cutoffs whose
window holds the event (a hash join on the event's day against the days each window covers, the
exact bounds checked on the matches; a range join sorted every event), then aggregated per
(customer, cutoff) with conditional ``FILTER`` clauses, and finally left-joined onto the
customers x cutoffs grid with explicit defaults. Purchase totals since the first purchase are
running sums looked up with an ASOF join. (Running sums for the windowed counts as well, i.e.
total at the cutoff minus total at the window start, were measured slower here at 100,000
customers: the window sorts and the ASOF lookups cost more than the joins they replace.) Sequence features (repeat contacts, channel
switches, survey changes, cart recovery) are computed once per event with window functions over
each customer's own history, which is point-in-time safe because they only look at earlier events
(or, for cart recovery, at a window that must have closed before the cutoff).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import duckdb
import pandas as pd

from features.contract import DECISION_FEATURES, ENTITY_KEY, PURCHASE_CHANNELS
from features.ingest import limit_memory
from omniretain.settings import LabelSettings, Settings, load_settings

if TYPE_CHECKING:  # pragma: no cover
    from omniretain.settings import CrmAttribute

FEATURES_FILE_NAME = "customer_features.parquet"
NO_ABANDONED_CART_HOURS = 99999.0
DEFAULT_LOOKBACK_DAYS: tuple[int, ...] = (30, 90, 365)
# Tables the feature query reads; ingestion writes them (see features/contract.py).
FEATURE_SOURCE_TABLES: tuple[str, ...] = (
    "customers",
    "purchases",
    "web_events",
    "messages",
    "contacts",
    "social",
    "surveys",
    "consents",
    "price_observations",
    "loyalty",
)
EVENT_TABLES: tuple[str, ...] = FEATURE_SOURCE_TABLES[1:]
# Tables of profile records rather than behaviour: they do not start the snapshot grid. Price
# observations are mostly shelf labels and price feeds; the customer's own ones are side facts.
PROFILE_TABLES: frozenset[str] = frozenset({"consents", "loyalty", "price_observations"})
# Price observations of one product on two channels this close in time are compared.
PRICE_GAP_DAYS = 7
PRICE_GAP_MIN = 0.005  # prices closer than half a cent are the same price
# Optional: the CRM attributes (unified table) and the stored codes of their categories, both
# written by ingestion. Without them every CRM feature takes its missing value.
CRM_TABLE = "crm_attributes"
CRM_CODES_TABLE = "crm_category_codes"
CRM_PREFIX = "crm_"
MISSING_CATEGORY_CODE = -1


class FeatureBuildError(RuntimeError):
    """The warehouse cannot be turned into features (missing tables, no events...)."""


# ---- the feature list -------------------------------------------------------------------------

FeatureDtype = Literal["int64", "float64"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: its name, numeric dtype and a one-line description (Feast tag)."""

    name: str
    dtype: FeatureDtype
    description: str


def configured_crm_attributes() -> list[CrmAttribute]:
    """The CRM attributes declared in ``configs/omniretain.yaml`` (``crm.attributes``)."""
    return list(load_settings().crm.attributes)


def crm_feature_specs(attributes: Sequence[CrmAttribute]) -> list[FeatureSpec]:
    """``crm_<name>`` per declared attribute: a stable integer code or a number."""
    specs = []
    for attribute in attributes:
        about = attribute.description or attribute.name
        if attribute.type == "categorical":
            specs.append(
                FeatureSpec(
                    f"{CRM_PREFIX}{attribute.name}",
                    "int64",
                    f"CRM {about}: stable category code ({MISSING_CATEGORY_CODE} when unknown; "
                    f"codes in the warehouse table {CRM_CODES_TABLE})",
                )
            )
        else:
            specs.append(
                FeatureSpec(
                    f"{CRM_PREFIX}{attribute.name}", "float64", f"CRM {about} (NaN when unknown)"
                )
            )
    return specs


def feature_specs(
    lookback_days: Sequence[int] = DEFAULT_LOOKBACK_DAYS,
    crm_attributes: Sequence[CrmAttribute] | None = None,
) -> list[FeatureSpec]:
    """The ordered feature list for the given RFM look-back windows and CRM attributes.

    Args:
        lookback_days: windows (days) of the per-channel frequency/monetary features; must
            contain 90 and 365 because the decision engine relies on ``purchases_90d`` and
            ``spend_365d``.
        crm_attributes: the declared CRM attributes; None reads them from the configuration,
            so that the Feast schema follows ``configs/`` without code changes.
    """
    crm = configured_crm_attributes() if crm_attributes is None else crm_attributes
    windows = _validated_windows(lookback_days)
    specs: list[FeatureSpec] = []

    def add(name: str, dtype: FeatureDtype, description: str) -> None:
        specs.append(FeatureSpec(name, dtype, description))

    add("tenure_days", "float64", "days from the customer's first seen event to the cutoff")
    add("n_source_ids", "int64", "source identifiers linked to the customer by identity resolution")
    add(
        "days_since_last_purchase",
        "float64",
        "days from the last purchase to the cutoff (tenure when none)",
    )
    for channel in PURCHASE_CHANNELS:
        add(
            f"days_since_last_purchase_{channel}",
            "float64",
            f"days from the last {channel} purchase to the cutoff (tenure when none)",
        )
    for days in windows:
        add(
            f"purchases_{days}d",
            "int64",
            f"purchase occasions (returns excluded) in the last {days} days",
        )
        for channel in PURCHASE_CHANNELS:
            add(
                f"purchases_{days}d_{channel}",
                "int64",
                f"{channel} purchase occasions in the last {days} days",
            )
    for days in windows:
        add(
            f"spend_{days}d",
            "float64",
            f"net spend (purchases minus returns) in the last {days} days",
        )
        for channel in PURCHASE_CHANNELS:
            add(
                f"spend_{days}d_{channel}",
                "float64",
                f"net {channel} spend in the last {days} days",
            )
    add("purchases_total", "int64", "purchase occasions since the customer was first seen")
    add(
        "purchase_trend_90d",
        "int64",
        "purchases in the last 90 days minus purchases in the 90 days before those",
    )
    add(
        "avg_order_value_365d",
        "float64",
        "mean gross order amount over the last 365 days (0 when no order)",
    )
    add("historic_clv", "float64", "all-time net spend before the cutoff")
    add(
        "channel_breadth_90d",
        "int64",
        "distinct channels used in the last 90 days (store/web/app purchases and sessions, email "
        "and SMS opens or clicks, call centre, social)",
    )
    add("purchase_channels_90d", "int64", "distinct purchase channels in the last 90 days")
    add("omnichannel_90d", "int64", "1 when the customer used 3 or more channels in 90 days")
    add(
        "cross_channel_transition_rate_90d",
        "float64",
        "share of consecutive purchases/sessions in 90 days that switch channel (0 when fewer "
        "than two)",
    )
    add(
        "days_since_last_session",
        "float64",
        "days from the last web/app session start to the cutoff (tenure when none)",
    )
    add("sessions_30d", "int64", "web/app sessions started in the last 30 days")
    add("sessions_90d", "int64", "web/app sessions started in the last 90 days")
    add("product_views_30d", "int64", "product_view events in the last 30 days")
    add("add_to_carts_30d", "int64", "add_to_cart events in the last 30 days")
    add("abandoned_carts_30d", "int64", "cart_abandoned events in the last 30 days")
    add("abandoned_carts_90d", "int64", "cart_abandoned events in the last 90 days")
    add(
        "ignored_abandoned_carts_90d",
        "int64",
        "abandoned carts in 90 days not followed by a purchase within 3 days (window closed "
        "before the cutoff)",
    )
    add(
        "hours_since_last_abandoned_cart",
        "float64",
        f"hours from the last abandoned cart to the cutoff ({NO_ABANDONED_CART_HOURS:.0f} when "
        "none)",
    )
    add(
        "price_inconsistency_exposure_90d",
        "int64",
        "store purchases in 90 days whose product was seen on web/app at a different price "
        "within 7 days",
    )
    add(
        "price_gap_products_90d",
        "int64",
        "distinct products the customer was shown (price observations tied to the customer, "
        f"last 90 days) at a price that differs from the price of another channel within "
        f"{PRICE_GAP_DAYS} days",
    )
    add(
        "max_price_gap_90d",
        "float64",
        "largest such price difference relative to the higher of the two prices, 0..1 "
        "(0 when none)",
    )
    add(
        "promo_share_365d",
        "float64",
        "share of orders in 365 days with a promo code or a discount (0 when no order)",
    )
    add("returns_365d", "int64", "returns in the last 365 days")
    add(
        "return_rate_365d",
        "float64",
        "returns per order in the last 365 days, capped at 1 (0 when neither)",
    )
    add("contacts_30d", "int64", "contact-centre contacts in the last 30 days")
    add("contacts_90d", "int64", "contact-centre contacts in the last 90 days")
    add(
        "repeat_contacts_7d",
        "int64",
        "contacts in 90 days that came within 7 days of an earlier contact on the same case or "
        "reason",
    )
    add("unresolved_contacts_90d", "int64", "contacts left unresolved in the last 90 days")
    add("open_cases", "int64", "cases whose last contact (last 30 days) was unresolved")
    add(
        "mean_handle_minutes_90d",
        "float64",
        "mean handling time of contacts in 90 days (0 when none)",
    )
    add(
        "max_contact_channels_per_case_90d",
        "int64",
        "most distinct contact channels used on one case in 90 days",
    )
    add("last_nps", "float64", "latest NPS score 0-10 (NaN when never answered)")
    add(
        "nps_change",
        "float64",
        "latest NPS minus the previous NPS response (NaN with fewer than two)",
    )
    add("last_ces", "float64", "latest CES score 1-7 (NaN when never answered)")
    add(
        "ces_change",
        "float64",
        "latest CES minus the previous CES response (NaN with fewer than two)",
    )
    add("emails_sent_90d", "int64", "marketing emails sent in the last 90 days")
    add("email_open_rate_90d", "float64", "email opens per email sent in 90 days, capped at 1")
    add("email_click_rate_90d", "float64", "email clicks per email sent in 90 days, capped at 1")
    add("sms_sent_90d", "int64", "SMS sent in the last 90 days")
    add("sms_click_rate_90d", "float64", "SMS clicks per SMS sent in 90 days, capped at 1")
    add(
        "unsubscribed",
        "int64",
        "1 when the customer ever unsubscribed from email or opted out of SMS",
    )
    add("social_interactions_90d", "int64", "social media interactions in the last 90 days")
    add("social_complaints_90d", "int64", "social media complaints in the last 90 days")
    add(
        "social_sentiment_90d",
        "float64",
        "mean social sentiment -1..1 in the last 90 days (0 when none)",
    )
    for channel in ("email", "sms", "app", "call_center"):
        add(
            f"consent_{channel}",
            "float64",
            f"1.0 when the latest {channel} consent is granted, 0.0 if withdrawn or never given",
        )
    add("loyalty_member", "int64", "1 when the customer enrolled in the loyalty programme")
    add("loyalty_tenure_days", "float64", "days since the loyalty enrolment (0 when none)")
    specs.extend(crm_feature_specs(crm))
    return specs


def _validated_windows(lookback_days: Sequence[int]) -> list[int]:
    windows = sorted({int(days) for days in lookback_days})
    if not windows or windows[0] < 1:
        raise ValueError(f"features.lookback_days must be positive day counts, got {lookback_days}")
    missing = {90, 365} - set(windows)
    if missing:
        raise ValueError(
            f"features.lookback_days must include {sorted(missing)}: the decision engine needs "
            "purchases_90d and spend_365d"
        )
    return windows


def feature_columns(
    lookback_days: Sequence[int] = DEFAULT_LOOKBACK_DAYS,
    crm_attributes: Sequence[CrmAttribute] | None = None,
) -> list[str]:
    """Ordered feature names (no key or timestamp columns)."""
    return [spec.name for spec in feature_specs(lookback_days, crm_attributes)]


FEATURE_COLUMNS: list[str] = feature_columns()
FEATURE_DESCRIPTIONS: dict[str, str] = {s.name: s.description for s in feature_specs()}
NULLABLE_FEATURES: frozenset[str] = frozenset(
    {"last_nps", "nps_change", "last_ces", "ces_change"}
    | {s.name for s in feature_specs() if s.name.startswith(CRM_PREFIX) and s.dtype == "float64"}
)
assert set(DECISION_FEATURES) <= set(FEATURE_COLUMNS), "contract features missing"


# ---- cutoffs ----------------------------------------------------------------------------------


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are UTC by the warehouse contract."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _midnight(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def serving_cutoff(data_end: datetime) -> datetime:
    """Midnight UTC after the last event's date: every known event is before it."""
    return _midnight(_as_utc(data_end)) + timedelta(days=1)


def snapshot_cutoffs(
    data_start: datetime, data_end: datetime, labels: LabelSettings
) -> list[datetime]:
    """Snapshot cutoffs (tz-aware UTC midnights), oldest first, ending with the serving cutoff.

    The regular grid starts ``first_snapshot_after_days`` after the first event's date and steps
    ``snapshot_every_days``; the serving cutoff is always the last element (added when it is not
    on the grid), so the online store can always be filled.
    """
    start, end = _as_utc(data_start), _as_utc(data_end)
    if end < start:
        raise ValueError(f"data_end {end} is before data_start {start}")
    last = serving_cutoff(end)
    step = timedelta(days=labels.snapshot_every_days)
    cutoff = _midnight(start) + timedelta(days=labels.first_snapshot_after_days)
    cutoffs: list[datetime] = []
    while cutoff < last:
        cutoffs.append(cutoff)
        cutoff += step
    cutoffs.append(last)
    return cutoffs


# ---- the query ---------------------------------------------------------------------------------


def _days(days: int) -> str:
    return f"INTERVAL {int(days)} DAY"


# One bit per channel name of ``settings.channels``; distinct counts become bit counts.
_CHANNEL_BITS: dict[str, int] = {
    name: 1 << position
    for position, name in enumerate(
        ("store", "web", "app", "email", "sms", "call_center", "social")
    )
}


def _channel_bit(column: str) -> str:
    cases = " ".join(f"WHEN '{name}' THEN {bit}" for name, bit in _CHANNEL_BITS.items())
    return f"CAST(CASE {column} {cases} ELSE {1 << len(_CHANNEL_BITS)} END AS UINTEGER)"


def _feature_sql(cutoffs_view: str, windows: list[int]) -> str:
    """The single DuckDB query; windows are validated ints, so inlining them is safe."""
    # Window starts are precomputed per cutoff (``k.since_<n>d``) so that each of the many
    # FILTER clauses is a plain timestamp comparison, not interval arithmetic per row.
    window_starts = sorted(set(windows) | {3, 7, 30, 90, 180, 365})
    # (the purchase window bound below uses since_<longest>d, which is in this list)

    def in_window(days: int, column: str = "e.occurred_at") -> str:
        return f"{column} >= k.since_{days}d"

    # Events in [cutoff - n days, cutoff) are found with a hash join on the event's day against
    # the (few) days each cutoff's window covers, the exact bounds checked on the matches: a
    # range join of millions of events to the cutoffs sorts every event first.
    day_windows = sorted({30, 90, max([*windows, 365, 180])})

    def window_join(days: int, column: str = "e.occurred_at") -> str:
        return (
            f"JOIN cutoff_days_{days}d k ON date_trunc('day', {column}) = k.day"
            f" AND {column} < k.cutoff AND {in_window(days, column)}"
        )

    # All-time figures are running totals per customer, looked up at each cutoff with an ASOF
    # join: each purchase is read once, instead of once per later cutoff.
    running_totals: list[str] = [
        "max(occurred_at) FILTER (WHERE NOT is_return) OVER history AS last_purchase_at",
        "count(*) FILTER (WHERE NOT is_return) OVER history AS purchases_total",
        "sum(net_amount) OVER history AS historic_clv",
    ]
    for channel in PURCHASE_CHANNELS:
        running_totals.append(
            f"max(occurred_at) FILTER (WHERE NOT is_return AND channel_bit = "
            f"{_CHANNEL_BITS[channel]}) OVER history AS last_purchase_{channel}_at"
        )
    running_select = ",\n        ".join(running_totals)
    total_columns = ", ".join(
        ["last_purchase_at", "purchases_total", "historic_clv"]
        + [f"last_purchase_{channel}_at" for channel in PURCHASE_CHANNELS]
    )
    # Windowed figures only need the purchases inside the longest window before each cutoff.
    longest_window = max([*windows, 365, 180])
    purchase_aggs: list[str] = [
        f"count(*) FILTER (WHERE NOT e.is_return AND e.occurred_at < k.since_90d "
        f"AND {in_window(180)}) AS purchases_prior_90d",
        f"sum(e.amount) FILTER (WHERE NOT e.is_return AND {in_window(365)}) AS gross_spend_365d",
        f"count(*) FILTER (WHERE NOT e.is_return AND e.used_promo AND {in_window(365)}) "
        "AS promo_orders_365d",
        f"count(*) FILTER (WHERE e.is_return AND {in_window(365)}) AS returns_365d",
        # bit_or of one bit per channel instead of count(DISTINCT): several times faster
        f"bit_count(bit_or(e.channel_bit) FILTER (WHERE NOT e.is_return AND {in_window(90)})) "
        "AS purchase_channels_90d",
    ]
    for days in windows:
        purchase_aggs.append(
            f"count(*) FILTER (WHERE NOT e.is_return AND {in_window(days)}) AS purchases_{days}d"
        )
        purchase_aggs.append(
            f"coalesce(sum(e.net_amount) FILTER (WHERE {in_window(days)}), 0) AS spend_{days}d"
        )
        for channel in PURCHASE_CHANNELS:
            purchase_aggs.append(
                f"count(*) FILTER (WHERE NOT e.is_return AND e.channel_bit = "
                f"{_CHANNEL_BITS[channel]} "
                f"AND {in_window(days)}) AS purchases_{days}d_{channel}"
            )
            purchase_aggs.append(
                f"coalesce(sum(e.net_amount) FILTER (WHERE e.channel_bit = "
                f"{_CHANNEL_BITS[channel]} "
                f"AND {in_window(days)}), 0) AS spend_{days}d_{channel}"
            )
    purchase_select = ",\n        ".join(purchase_aggs)

    def days_before_cutoff(column: str) -> str:
        return f"epoch(g.cutoff - {column}) / 86400.0"

    count_columns = [s.name for s in feature_specs(windows, []) if s.dtype == "int64"]
    # Columns that come straight from an aggregate and default to 0 when the customer has no
    # event of that family before the cutoff.
    zero_default = (
        {
            f"purchases_{d}d{suffix}"
            for d in windows
            for suffix in ["", *[f"_{c}" for c in PURCHASE_CHANNELS]]
        }
        | {
            f"spend_{d}d{suffix}"
            for d in windows
            for suffix in ["", *[f"_{c}" for c in PURCHASE_CHANNELS]]
        }
        | {
            "purchases_total",
            "historic_clv",
            "purchase_channels_90d",
            "returns_365d",
            "sessions_30d",
            "sessions_90d",
            "product_views_30d",
            "add_to_carts_30d",
            "abandoned_carts_30d",
            "abandoned_carts_90d",
            "ignored_abandoned_carts_90d",
            "price_inconsistency_exposure_90d",
            "price_gap_products_90d",
            "contacts_30d",
            "contacts_90d",
            "repeat_contacts_7d",
            "unresolved_contacts_90d",
            "open_cases",
            "max_contact_channels_per_case_90d",
            "emails_sent_90d",
            "sms_sent_90d",
            "social_interactions_90d",
            "social_complaints_90d",
            "channel_breadth_90d",
        }
    )
    derived = {
        "tenure_days": "g.tenure_days",
        "n_source_ids": "coalesce(g.n_source_ids, 1)",
        "days_since_last_purchase": f"coalesce({days_before_cutoff('pa.last_purchase_at')}, g.tenure_days)",
        **{
            f"days_since_last_purchase_{c}": f"coalesce({days_before_cutoff(f'pa.last_purchase_{c}_at')}, g.tenure_days)"
            for c in PURCHASE_CHANNELS
        },
        "purchase_trend_90d": "coalesce(pa.purchases_90d, 0) - coalesce(pa.purchases_prior_90d, 0)",
        "avg_order_value_365d": "coalesce(pa.gross_spend_365d / nullif(pa.purchases_365d, 0), 0)",
        "omnichannel_90d": "CAST(coalesce(br.channel_breadth_90d, 0) >= 3 AS BIGINT)",
        "cross_channel_transition_rate_90d": "coalesce(tr.channel_switches_90d / nullif(tr.transitions_90d, 0), 0)",
        "days_since_last_session": f"coalesce({days_before_cutoff('ws.last_session_at')}, g.tenure_days)",
        "hours_since_last_abandoned_cart": f"coalesce(epoch(g.cutoff - ca.last_abandoned_cart_at) / 3600.0, "
        f"{NO_ABANDONED_CART_HOURS})",
        "promo_share_365d": "coalesce(pa.promo_orders_365d / nullif(pa.purchases_365d, 0), 0)",
        "return_rate_365d": "least(1.0, coalesce(pa.returns_365d, 0)"
        " / greatest(coalesce(pa.purchases_365d, 0), 1))",
        "mean_handle_minutes_90d": "coalesce(co.mean_handle_minutes_90d, 0)",
        "max_price_gap_90d": "coalesce(pg.max_price_gap_90d, 0)",
        "last_nps": "su.last_nps",
        "nps_change": "su.last_nps - su.previous_nps",
        "last_ces": "su.last_ces",
        "ces_change": "su.last_ces - su.previous_ces",
        "email_open_rate_90d": "coalesce(least(1.0, me.email_opens_90d / nullif(me.emails_sent_90d, 0)), 0)",
        "email_click_rate_90d": "coalesce(least(1.0, me.email_clicks_90d / nullif(me.emails_sent_90d, 0)), 0)",
        "sms_click_rate_90d": "coalesce(least(1.0, me.sms_clicks_90d / nullif(me.sms_sent_90d, 0)), 0)",
        "unsubscribed": "CAST(coalesce(un.first_unsubscribed_at < g.cutoff, false) AS BIGINT)",
        "social_sentiment_90d": "coalesce(so.social_sentiment_90d, 0)",
        **{
            f"consent_{c}": f"CASE WHEN cs.consent_{c} THEN 1.0 ELSE 0.0 END"
            for c in ("email", "sms", "app", "call_center")
        },
        "loyalty_member": "CAST(coalesce(lo.enrolled_at < g.cutoff, false) AS BIGINT)",
        "loyalty_tenure_days": "CASE WHEN lo.enrolled_at < g.cutoff "
        f"THEN {days_before_cutoff('lo.enrolled_at')} ELSE 0 END",
    }
    source_alias = {
        **{name: "pa" for name in zero_default if name.startswith(("purchases_", "spend_"))},
        "purchases_total": "pa",
        "historic_clv": "pa",
        "purchase_channels_90d": "pa",
        "returns_365d": "pa",
        "sessions_30d": "ws",
        "sessions_90d": "ws",
        "product_views_30d": "we",
        "add_to_carts_30d": "we",
        "abandoned_carts_30d": "ca",
        "abandoned_carts_90d": "ca",
        "ignored_abandoned_carts_90d": "ca",
        "price_inconsistency_exposure_90d": "px",
        "price_gap_products_90d": "pg",
        "contacts_30d": "co",
        "contacts_90d": "co",
        "repeat_contacts_7d": "co",
        "unresolved_contacts_90d": "co",
        "open_cases": "cc",
        "max_contact_channels_per_case_90d": "cc",
        "emails_sent_90d": "me",
        "sms_sent_90d": "me",
        "social_interactions_90d": "so",
        "social_complaints_90d": "so",
        "channel_breadth_90d": "br",
    }
    select_items: list[str] = []
    for name in feature_columns(windows, []):
        if name in derived:
            expression = derived[name]
        elif name in zero_default:
            expression = f"coalesce({source_alias[name]}.{name}, 0)"
        else:  # pragma: no cover - guards the feature list and the query drifting apart
            raise AssertionError(f"feature {name} has no SQL expression")
        cast = "BIGINT" if name in count_columns else "DOUBLE"
        select_items.append(f"CAST({expression} AS {cast}) AS {name}")
    final_select = ",\n    ".join(select_items)

    cutoff_days = ",\n".join(
        f"cutoff_days_{days}d AS MATERIALIZED (\n"
        f"    SELECT *, unnest(range(date_trunc('day', since_{days}d), cutoff, {_days(1)})) AS day\n"
        f"    FROM cutoffs\n)"
        for days in day_windows
    )
    window_columns = ", ".join(f"cutoff - {_days(days)} AS since_{days}d" for days in window_starts)
    keyed_sources = ",\n".join(
        f"keyed_{table} AS (SELECT k.customer_key, t.* EXCLUDE (customer_id)"
        f" FROM {table} t JOIN customer_keys k USING (customer_id))"
        for table in EVENT_TABLES
    )
    return f"""
WITH
cutoffs AS MATERIALIZED (
    SELECT cutoff, {window_columns}
    FROM (SELECT DISTINCT CAST(cutoff AS TIMESTAMP) AS cutoff FROM {cutoffs_view})
),
{cutoff_days},
-- Integer customer keys: grouping and joining on them is several times faster than on strings.
customer_keys AS MATERIALIZED (
    SELECT customer_id, first_seen_at, n_source_ids,
        CAST(row_number() OVER (ORDER BY customer_id) AS BIGINT) AS customer_key
    FROM customers WHERE customer_id IS NOT NULL
),
{keyed_sources},
grid AS (
    SELECT c.customer_id, c.customer_key, k.cutoff, c.n_source_ids,
           epoch(k.cutoff - c.first_seen_at) / 86400.0 AS tenure_days
    FROM customer_keys c JOIN cutoffs k ON c.first_seen_at < k.cutoff
),
purchase_events AS MATERIALIZED (
    SELECT customer_key, occurred_at, channel, {_channel_bit("channel")} AS channel_bit,
           coalesce(is_return, false) AS is_return,
           coalesce(amount, 0) AS amount,
           CASE WHEN coalesce(is_return, false) THEN -coalesce(amount, 0)
                ELSE coalesce(amount, 0) END AS net_amount,
           coalesce(discount_amount, 0) > 0 OR coalesce(trim(promo_code), '') <> ''
               AS used_promo,
           product_id, unit_price, source_feed, source_id
    FROM keyed_purchases
),
purchase_running AS MATERIALIZED (
    -- RANGE frame (the default): purchases at the same instant share their totals
    SELECT customer_key, occurred_at,
        {running_select}
    FROM purchase_events
    WINDOW history AS (PARTITION BY customer_key ORDER BY occurred_at)
),
purchase_totals AS (
    SELECT DISTINCT ON (customer_key, occurred_at) customer_key, occurred_at, {total_columns}
    FROM purchase_running
),
purchase_window_agg AS (
    SELECT e.customer_key, k.cutoff,
        {purchase_select}
    FROM purchase_events e {window_join(longest_window)}
    GROUP BY e.customer_key, k.cutoff
),
purchase_agg AS (
    SELECT g.customer_key, g.cutoff, {", ".join(f"t.{c}" for c in total_columns.split(", "))},
        w.* EXCLUDE (customer_key, cutoff)
    FROM grid g
    ASOF JOIN purchase_totals t ON g.customer_key = t.customer_key AND g.cutoff > t.occurred_at
    LEFT JOIN purchase_window_agg w ON w.customer_key = g.customer_key AND w.cutoff = g.cutoff
),
sessions AS MATERIALIZED (
    SELECT customer_key, session_id, min(occurred_at) AS started_at,
           arg_min(channel, occurred_at) AS channel
    FROM keyed_web_events
    GROUP BY customer_key, session_id
),
session_agg AS (
    SELECT e.customer_key, k.cutoff,
        max(e.started_at) AS last_session_at,
        count(*) FILTER (WHERE {in_window(30, "e.started_at")}) AS sessions_30d,
        count(*) FILTER (WHERE {in_window(90, "e.started_at")}) AS sessions_90d
    FROM sessions e JOIN cutoffs k ON e.started_at < k.cutoff
    GROUP BY e.customer_key, k.cutoff
),
web_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(*) FILTER (WHERE e.event_type = 'product_view') AS product_views_30d,
        count(*) FILTER (WHERE e.event_type = 'add_to_cart') AS add_to_carts_30d
    FROM keyed_web_events e {window_join(30)}
    WHERE e.event_type IN ('product_view', 'add_to_cart')
    GROUP BY e.customer_key, k.cutoff
),
abandoned_carts AS (
    SELECT w.customer_key, w.occurred_at,
        EXISTS (
            SELECT 1 FROM purchase_events p
            WHERE p.customer_key = w.customer_key AND NOT p.is_return
              AND p.occurred_at > w.occurred_at
              AND p.occurred_at < w.occurred_at + {_days(3)}
        ) AS recovered
    FROM keyed_web_events w
    WHERE w.event_type = 'cart_abandoned'
),
cart_agg AS (
    SELECT e.customer_key, k.cutoff,
        max(e.occurred_at) AS last_abandoned_cart_at,
        count(*) FILTER (WHERE {in_window(30)}) AS abandoned_carts_30d,
        count(*) FILTER (WHERE {in_window(90)}) AS abandoned_carts_90d,
        -- a cart counts as ignored only once its 3-day recovery window closed before the cutoff
        count(*) FILTER (WHERE {in_window(90)} AND NOT e.recovered
                         AND e.occurred_at + {_days(3)} <= k.cutoff) AS ignored_abandoned_carts_90d
    FROM abandoned_carts e JOIN cutoffs k ON e.occurred_at < k.cutoff
    GROUP BY e.customer_key, k.cutoff
),
touchpoints AS MATERIALIZED (
    SELECT customer_key, occurred_at, channel FROM purchase_events WHERE NOT is_return
    UNION ALL
    SELECT customer_key, started_at, channel FROM sessions
),
transitions AS (
    SELECT customer_key, occurred_at, channel,
        lag(occurred_at) OVER history AS previous_at,
        lag(channel) OVER history AS previous_channel
    FROM touchpoints
    WINDOW history AS (PARTITION BY customer_key ORDER BY occurred_at, channel)
),
transition_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(*) AS transitions_90d,
        count(*) FILTER (WHERE e.channel <> e.previous_channel) AS channel_switches_90d
    -- previous_at <= occurred_at: the transition's day is in the window when it counts
    FROM transitions e {window_join(90)} AND e.previous_at >= k.since_90d
    GROUP BY e.customer_key, k.cutoff
),
engagement AS (
    SELECT customer_key, occurred_at, channel FROM touchpoints
    UNION ALL
    SELECT customer_key, occurred_at, channel FROM keyed_messages
    WHERE event_type IN ('open', 'click')
    UNION ALL
    SELECT customer_key, occurred_at, 'call_center' FROM keyed_contacts
    UNION ALL
    SELECT customer_key, occurred_at, 'social' FROM keyed_social
),
breadth_agg AS (
    SELECT e.customer_key, k.cutoff,
        bit_count(bit_or({_channel_bit("e.channel")})) AS channel_breadth_90d
    FROM engagement e {window_join(90)}
    GROUP BY e.customer_key, k.cutoff
),
store_price_exposures AS (
    SELECT p.customer_key, p.occurred_at AS purchased_at,
        min(greatest(p.occurred_at, w.occurred_at)) AS exposed_at
    FROM purchase_events p JOIN keyed_web_events w
        ON w.customer_key = p.customer_key AND w.product_id = p.product_id
       AND w.occurred_at >= p.occurred_at - {_days(7)}
       AND w.occurred_at <= p.occurred_at + {_days(7)}
       AND abs(w.price_seen - p.unit_price) >= 0.005
    WHERE p.channel = 'store' AND NOT p.is_return AND p.unit_price IS NOT NULL
      AND w.price_seen IS NOT NULL AND w.channel IN ('web', 'app')
    GROUP BY p.customer_key, p.occurred_at, p.product_id, p.source_feed, p.source_id
),
exposure_agg AS (
    SELECT e.customer_key, k.cutoff, count(*) AS price_inconsistency_exposure_90d
    -- purchased_at <= exposed_at < cutoff
    FROM store_price_exposures e {window_join(90, "e.purchased_at")}
        AND e.exposed_at < k.cutoff
    GROUP BY e.customer_key, k.cutoff
),
customer_prices AS (
    SELECT customer_key, occurred_at, channel, product_id, CAST(price AS DOUBLE) AS price
    FROM keyed_price_observations
    WHERE product_id IS NOT NULL AND price IS NOT NULL
),
price_series AS MATERIALIZED (
    SELECT product_id, channel, CAST(price AS DOUBLE) AS price, occurred_at
    FROM price_observations
    WHERE product_id IS NOT NULL AND price IS NOT NULL AND channel IS NOT NULL
),
price_gap_candidates AS (
    -- each of the customer's observations against every other (channel, price) the product
    -- was ever shown at; the time test comes next
    SELECT o.customer_key, o.product_id, o.occurred_at, o.price, c.channel, c.price AS other
    FROM customer_prices o
    JOIN (SELECT DISTINCT product_id, channel, price FROM price_series) c
        ON c.product_id = o.product_id AND c.channel <> o.channel
       AND abs(o.price - c.price) >= {PRICE_GAP_MIN}
),
price_gaps AS (
    -- one of the customer's observations against any observation (a shelf label, a price
    -- feed, another customer's view) of the product on another channel close in time; known
    -- once both were seen, so only the first such observation in the window matters (ASOF:
    -- one lookup per other price instead of a row per observation)
    SELECT c.customer_key, c.product_id, c.occurred_at AS seen_at,
        greatest(c.occurred_at, x.occurred_at) AS known_at,
        abs(c.price - c.other) / greatest(c.price, c.other) AS relative_gap
    FROM price_gap_candidates c ASOF JOIN price_series x
        ON x.product_id = c.product_id AND x.channel = c.channel AND x.price = c.other
       AND x.occurred_at >= c.occurred_at - {_days(PRICE_GAP_DAYS)}
    WHERE x.occurred_at <= c.occurred_at + {_days(PRICE_GAP_DAYS)}
),
price_gap_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(DISTINCT e.product_id) AS price_gap_products_90d,
        max(e.relative_gap) AS max_price_gap_90d
    -- seen_at <= known_at < cutoff
    FROM price_gaps e {window_join(90, "e.seen_at")} AND e.known_at < k.cutoff
    GROUP BY e.customer_key, k.cutoff
),
contact_events AS MATERIALIZED (
    SELECT customer_key, occurred_at, case_id, contact_channel,
        coalesce(resolved, false) AS resolved, handle_minutes,
        coalesce(occurred_at - lag(occurred_at) OVER (
            PARTITION BY customer_key, case_id ORDER BY occurred_at) <= {_days(7)}, false)
        OR coalesce(occurred_at - lag(occurred_at) OVER (
            PARTITION BY customer_key, reason ORDER BY occurred_at) <= {_days(7)}, false)
            AS is_repeat
    FROM keyed_contacts
),
contact_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(*) FILTER (WHERE {in_window(30)}) AS contacts_30d,
        count(*) AS contacts_90d,
        count(*) FILTER (WHERE e.is_repeat) AS repeat_contacts_7d,
        count(*) FILTER (WHERE NOT e.resolved) AS unresolved_contacts_90d,
        avg(e.handle_minutes) AS mean_handle_minutes_90d
    FROM contact_events e {window_join(90)}
    GROUP BY e.customer_key, k.cutoff
),
case_state AS (
    SELECT e.customer_key, k.cutoff, e.case_id,
        max(e.occurred_at) AS last_contact_at,
        arg_max(e.resolved, e.occurred_at) AS last_resolved,
        bit_count(bit_or(CASE e.contact_channel WHEN 'phone' THEN 1 WHEN 'chat' THEN 2
                         WHEN 'email' THEN 4 ELSE 8 END)) AS contact_channels
    FROM contact_events e {window_join(90)}
    GROUP BY e.customer_key, k.cutoff, e.case_id
),
case_agg AS (
    SELECT customer_key, cutoff,
        count(*) FILTER (WHERE last_contact_at >= cutoff - {_days(30)} AND NOT last_resolved)
            AS open_cases,
        max(contact_channels) AS max_contact_channels_per_case_90d
    FROM case_state GROUP BY customer_key, cutoff
),
survey_responses AS (
    SELECT customer_key, occurred_at, survey_type, score,
        lag(score) OVER (PARTITION BY customer_key, survey_type ORDER BY occurred_at)
            AS previous_score
    FROM keyed_surveys WHERE score IS NOT NULL
),
survey_agg AS (
    SELECT e.customer_key, k.cutoff,
        arg_max_null(e.score, e.occurred_at) FILTER (WHERE e.survey_type = 'nps') AS last_nps,
        arg_max_null(e.previous_score, e.occurred_at) FILTER (WHERE e.survey_type = 'nps')
            AS previous_nps,
        arg_max_null(e.score, e.occurred_at) FILTER (WHERE e.survey_type = 'ces') AS last_ces,
        arg_max_null(e.previous_score, e.occurred_at) FILTER (WHERE e.survey_type = 'ces')
            AS previous_ces
    FROM survey_responses e JOIN cutoffs k ON e.occurred_at < k.cutoff
    GROUP BY e.customer_key, k.cutoff
),
message_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(*) FILTER (WHERE e.channel = 'email' AND e.event_type = 'sent') AS emails_sent_90d,
        count(*) FILTER (WHERE e.channel = 'email' AND e.event_type = 'open') AS email_opens_90d,
        count(*) FILTER (WHERE e.channel = 'email' AND e.event_type = 'click')
            AS email_clicks_90d,
        count(*) FILTER (WHERE e.channel = 'sms' AND e.event_type = 'sent') AS sms_sent_90d,
        count(*) FILTER (WHERE e.channel = 'sms' AND e.event_type = 'click') AS sms_clicks_90d
    FROM keyed_messages e {window_join(90)}
    GROUP BY e.customer_key, k.cutoff
),
unsubscribes AS (
    SELECT customer_key, min(occurred_at) AS first_unsubscribed_at
    FROM keyed_messages
    WHERE event_type IN ('unsubscribe', 'opt_out')
    GROUP BY customer_key
),
loyalty_enrolments AS (
    SELECT customer_key, min(occurred_at) AS enrolled_at FROM keyed_loyalty GROUP BY customer_key
),
social_agg AS (
    SELECT e.customer_key, k.cutoff,
        count(*) AS social_interactions_90d,
        count(*) FILTER (WHERE e.interaction_type = 'complaint') AS social_complaints_90d,
        avg(e.sentiment) AS social_sentiment_90d
    FROM keyed_social e {window_join(90)}
    GROUP BY e.customer_key, k.cutoff
),
consent_agg AS (
    SELECT e.customer_key, k.cutoff,
        arg_max(e.granted, e.occurred_at) FILTER (WHERE e.channel = 'email') AS consent_email,
        arg_max(e.granted, e.occurred_at) FILTER (WHERE e.channel = 'sms') AS consent_sms,
        arg_max(e.granted, e.occurred_at) FILTER (WHERE e.channel = 'app') AS consent_app,
        arg_max(e.granted, e.occurred_at) FILTER (WHERE e.channel = 'call_center')
            AS consent_call_center
    FROM keyed_consents e JOIN cutoffs k ON e.occurred_at < k.cutoff
    WHERE e.granted IS NOT NULL
    GROUP BY e.customer_key, k.cutoff
)
SELECT
    CAST(g.customer_id AS VARCHAR) AS {ENTITY_KEY},
    g.cutoff AS event_timestamp,
    {final_select}
FROM grid g
LEFT JOIN purchase_agg pa USING (customer_key, cutoff)
LEFT JOIN session_agg ws USING (customer_key, cutoff)
LEFT JOIN web_agg we USING (customer_key, cutoff)
LEFT JOIN cart_agg ca USING (customer_key, cutoff)
LEFT JOIN transition_agg tr USING (customer_key, cutoff)
LEFT JOIN breadth_agg br USING (customer_key, cutoff)
LEFT JOIN exposure_agg px USING (customer_key, cutoff)
LEFT JOIN price_gap_agg pg USING (customer_key, cutoff)
LEFT JOIN contact_agg co USING (customer_key, cutoff)
LEFT JOIN case_agg cc USING (customer_key, cutoff)
LEFT JOIN survey_agg su USING (customer_key, cutoff)
LEFT JOIN message_agg me USING (customer_key, cutoff)
LEFT JOIN unsubscribes un USING (customer_key)
LEFT JOIN loyalty_enrolments lo USING (customer_key)
LEFT JOIN social_agg so USING (customer_key, cutoff)
LEFT JOIN consent_agg cs USING (customer_key, cutoff)
ORDER BY g.cutoff, g.customer_key
"""


_ARROW_BATCH_ROWS = 1 << 17  # rows per Arrow batch when the feature frame is fetched


def _naive_utc(moment: datetime) -> datetime:
    return _as_utc(moment).replace(tzinfo=None)


def compute_features(
    con: duckdb.DuckDBPyConnection,
    cutoffs: Sequence[datetime],
    lookback_days: Sequence[int] = DEFAULT_LOOKBACK_DAYS,
    crm_attributes: Sequence[CrmAttribute] | None = None,
) -> pd.DataFrame:
    """Point-in-time features for every (customer, cutoff) with the customer first seen before it.

    Reads only the unified tables through ``con`` (a read-only connection is fine) and writes
    nothing. Returns ``customer_id`` (str), ``event_timestamp`` (tz-aware UTC cutoff) and the
    features of :func:`feature_columns`, ordered by cutoff then customer. ``crm_attributes``
    None means the configured ones.
    """
    if not cutoffs:
        raise ValueError("compute_features needs at least one cutoff")
    windows = _validated_windows(lookback_days)
    crm = configured_crm_attributes() if crm_attributes is None else list(crm_attributes)
    _require_tables(con)
    view_name = f"_feature_cutoffs_{os.getpid()}_{id(cutoffs)}"
    con.register(view_name, pd.DataFrame({"cutoff": [_naive_utc(c) for c in cutoffs]}))
    try:
        # Streamed as Arrow batches and converted column by column, freeing each as it goes:
        # ``.df()`` holds DuckDB's whole materialised result and the frame at once.
        reader = con.sql(_feature_sql(view_name, windows)).to_arrow_reader(_ARROW_BATCH_ROWS)
        frame = reader.read_all().to_pandas(self_destruct=True, split_blocks=True)
        if crm:
            frame = _with_crm_features(con, frame, view_name, crm)
    finally:
        con.unregister(view_name)
    frame[ENTITY_KEY] = frame[ENTITY_KEY].astype(str)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"]).dt.tz_localize(UTC)
    for spec in feature_specs(windows, crm):
        frame[spec.name] = frame[spec.name].astype(spec.dtype)
    return frame


def _table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }


def crm_attribute_sql(cutoffs_view: str, attributes: Sequence[CrmAttribute]) -> str:
    """Per (customer, cutoff) the latest known value of each attribute (text, trimmed).

    A row dated ``updated_at`` applies from that time on (strictly before the cutoff); an
    undated row is a static attribute known at every cutoff. The latest non-empty value wins,
    ties broken by the record id so the result does not depend on row order.
    """
    values = []
    for attribute in attributes:
        path = "$." + '"' + attribute.name + '"'
        value = f"nullif(trim(json_extract_string(r.attributes, '{path}')), '')"
        if attribute.type == "categorical":
            value = f"lower({value})"
        values.append(
            f"arg_max({value}, struct_pack(t := coalesce(r.occurred_at, TIMESTAMP '-infinity'), "
            f"s := r.source_id)) FILTER (WHERE {value} IS NOT NULL) AS {attribute.name}"
        )
    return f"""
        WITH cutoffs AS (SELECT DISTINCT CAST(cutoff AS TIMESTAMP) AS cutoff FROM {cutoffs_view})
        SELECT r.customer_id, k.cutoff AS event_timestamp, {", ".join(values)}
        FROM {CRM_TABLE} r JOIN cutoffs k ON r.occurred_at IS NULL OR r.occurred_at < k.cutoff
        WHERE r.customer_id IS NOT NULL
        GROUP BY r.customer_id, k.cutoff"""


def _with_crm_features(
    con: duckdb.DuckDBPyConnection,
    frame: pd.DataFrame,
    cutoffs_view: str,
    attributes: Sequence[CrmAttribute],
) -> pd.DataFrame:
    """Add ``crm_<name>`` columns: codes for categoricals, numbers for numerics."""
    tables = _table_names(con)
    names = [f"{CRM_PREFIX}{a.name}" for a in attributes]
    if CRM_TABLE not in tables:
        values = pd.DataFrame(columns=[ENTITY_KEY, "event_timestamp", *names])
    else:
        values = con.execute(crm_attribute_sql(cutoffs_view, attributes)).df()
        values.columns = [ENTITY_KEY, "event_timestamp", *names]
    codes = (
        con.execute(f"SELECT attribute, value, code FROM {CRM_CODES_TABLE}").df()
        if CRM_CODES_TABLE in tables
        else pd.DataFrame(columns=["attribute", "value", "code"])
    )
    for attribute, name in zip(attributes, names, strict=True):
        if attribute.type == "categorical":
            mapping = codes[codes["attribute"] == attribute.name].set_index("value")["code"]
            values[name] = values[name].map(mapping)
        else:
            values[name] = pd.to_numeric(values[name], errors="coerce")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"])
    values["event_timestamp"] = pd.to_datetime(values["event_timestamp"])
    values[ENTITY_KEY] = values[ENTITY_KEY].astype(str)
    frame[ENTITY_KEY] = frame[ENTITY_KEY].astype(str)
    # Only the keys are merged (a left merge keeps their order, and the values are unique per
    # key): merging the whole feature frame would copy it, doubling the peak memory.
    looked_up = frame[[ENTITY_KEY, "event_timestamp"]].merge(
        values, on=[ENTITY_KEY, "event_timestamp"], how="left"
    )
    for attribute, name in zip(attributes, names, strict=True):
        column = looked_up[name]
        if attribute.type == "categorical":
            column = column.fillna(MISSING_CATEGORY_CODE)
        frame[name] = column.to_numpy()
    return frame


def _require_tables(con: duckdb.DuckDBPyConnection) -> None:
    present = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    missing = [name for name in FEATURE_SOURCE_TABLES if name not in present]
    if missing:
        raise FeatureBuildError(
            f"the warehouse lacks the unified tables {missing}; run `omniretain ingest` first"
        )


def event_time_range(con: duckdb.DuckDBPyConnection) -> tuple[datetime, datetime]:
    """First and last ``occurred_at`` for the snapshot grid (UTC).

    The grid starts at the first *behaviour* (purchase, session, message, contact...): profile
    records such as loyalty enrolments and consents can be dated years before any activity and
    would otherwise fill the grid with empty snapshots. It ends at the last event of any kind.
    """
    _require_tables(con)
    union = " UNION ALL ".join(
        f"SELECT min(occurred_at) FILTER (WHERE {str(table not in PROFILE_TABLES).lower()})"
        f" AS lo, max(occurred_at) AS hi FROM {table} WHERE customer_id IS NOT NULL"
        for table in EVENT_TABLES
    )
    # fetchall, not fetchone: DuckDB 2 keeps a half-read result open and refuses further work
    [(first, last)] = con.execute(f"SELECT min(lo), max(hi) FROM ({union})").fetchall()
    if first is None or last is None:
        raise FeatureBuildError(
            "the warehouse has no customer events; check the raw feeds and run `omniretain ingest`"
        )
    return _as_utc(first), _as_utc(last)


# ---- the build step (I/O edge) ------------------------------------------------------------------


@dataclass
class FeatureReport:
    """What :func:`build_features` produced, for the CLI to print."""

    rows: int
    customers: int
    cutoffs: list[datetime]
    feature_count: int
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    materialized: dict[str, object] = field(default_factory=dict)

    @property
    def serving_cutoff(self) -> datetime:
        return self.cutoffs[-1]

    def render(self) -> str:
        """A few lines for the terminal: what was built, where, and how long each step took."""
        steps = ", ".join(f"{name} {secs:.1f} s" for name, secs in self.seconds.items())
        first, last = self.cutoffs[0], self.cutoffs[-1]
        return (
            f"{self.rows:,} snapshot rows: {self.customers:,} customers x {len(self.cutoffs)} "
            f"cutoffs ({first:%Y-%m-%d} .. {last:%Y-%m-%d}, the last one is served online), "
            f"{self.feature_count} features\n"
            f"offline source: {self.path}\n"
            f"online store: {self.materialized.get('customers', 0):,} customers materialized\n"
            f"steps: {steps}"
        )


def write_features_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary sibling then rename, so a failed build keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def build_features(
    settings: Settings, progress: bool = True, as_of: date | None = None
) -> FeatureReport:
    """Warehouse -> point-in-time parquet -> Feast registry and online store.

    Args:
        as_of: build as if this day (midnight UTC) were today: it becomes the serving cutoff,
            no event on or after it is used (a backtest, or a calibration period such as
            CDNOW's before 1997-10-01). The latest data by default.

    Raises:
        FeatureBuildError: the warehouse is missing, holds no usable events, or ``as_of`` is
            not after the first event.
    """
    from features import store  # Feast is imported lazily inside the store module's functions

    seconds: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        seconds[name] = round(time.perf_counter() - started, 3)
        if progress:
            print(f"  {name}: {seconds[name]:.2f} s", file=sys.stderr)

    if not settings.warehouse_path.exists():
        raise FeatureBuildError(
            f"no warehouse at {settings.warehouse_path}; run `omniretain ingest` first"
        )
    started = time.perf_counter()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        limit_memory(con, settings.features.warehouse_memory_limit)
        data_start, data_end = event_time_range(con)
        if as_of is not None:
            as_of_midnight = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
            if as_of_midnight <= data_start:
                raise FeatureBuildError(
                    f"--as-of {as_of} is not after the first event ({data_start:%Y-%m-%d})"
                )
            # the serving cutoff is the midnight after data_end: end just before as_of
            data_end = min(data_end, as_of_midnight - timedelta(microseconds=1))
        cutoffs = snapshot_cutoffs(data_start, data_end, settings.labels)
        frame = compute_features(
            con, cutoffs, settings.features.lookback_days, settings.crm.attributes
        )
    step("compute", started)
    if frame.empty:
        raise FeatureBuildError("no customer was first seen before any snapshot cutoff")

    started = time.perf_counter()
    frame.insert(2, "created_timestamp", pd.Timestamp.now(tz=UTC))
    path = settings.features_dir / FEATURES_FILE_NAME
    write_features_atomically(frame, path)
    step("write", started)

    started = time.perf_counter()
    store.apply_repo(settings)
    step("feast_apply", started)

    started = time.perf_counter()
    materialized = store.materialize(settings)
    step("materialize", started)

    return FeatureReport(
        rows=len(frame),
        customers=int(frame[ENTITY_KEY].nunique()),
        cutoffs=cutoffs,
        feature_count=len(frame.columns) - 3,
        path=path,
        seconds=seconds,
        materialized=materialized,
    )
