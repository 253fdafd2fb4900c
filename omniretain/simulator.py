"""A simulated omnichannel retailer: the raw per-channel feeds, and the ground truth behind them.

The product never reads the ground truth; tests and benchmarks use it to score identity resolution,
churn models and uplift models against what really happened.

Generative model (one day at a time, vectorised over persons; see :class:`WorldParameters`):

* **Persons.** About three quarters are customers already at the start (joined up to two years
  earlier); the rest join over the first months. Each has a segment (loyal, regular,
  bargain_hunter, occasional) and latent traits drawn from it: ``engagement`` (0-1),
  ``price_sensitivity`` (0-1), ``value_level`` (basket multiplier), ``service_expectation`` (0-1),
  ``dissatisfaction`` (a hidden standard-normal propensity to be unhappy), and 1-3 preferred
  purchase channels among store / web / app. Each has a unique email and UK mobile, 0-2 device ids
  (browsers have at least one), a loyalty card for a share (more often store shoppers) and a social
  handle for a few. Consents (email, SMS, app, call centre) are given at joining, as rows of the
  ``consents`` feed, and later withdrawn by unsubscribes, SMS opt-outs and rare changes of mind.
* **Activity while alive.** Purchases (daily Bernoulli; rate from engagement, value level and
  segment; channel from the preferred ones; lognormal baskets). Web/app browsing sessions with
  page and product views and cart adds; most carts left unbought are logged as
  ``cart_abandoned``; an engaged person often comes back and buys the cart within 1-4 days, an
  abandoned cart not bought within 4 days is *ignored*. Weekly newsletters and fortnightly SMS to
  consenting persons, with opens and clicks driven by engagement. Call-centre cases (more likely
  after an online order or a price difference); a case unresolved at the first contact usually
  brings repeat contacts on the same ``case_id`` within days. Social interactions for handle
  owners (complaints rise with friction). NPS surveys after some purchases and CES surveys after
  some contacts, whose scores fall with recent friction and the hidden dissatisfaction.
* **Price inconsistency.** A quarter of the products have a store price that differs from the web
  price by 5-25%. A store purchase often is the product the person viewed online in the last week:
  the same ``product_id`` then appears with ``price_seen`` online and another ``unit_price`` in
  store.
* **Price observations** (the ``price_observations`` feed), drawn from a separate random stream
  so that every other feed stays byte-identical for a given seed: a weekly price feed of every
  product on web, app and a store shelf check (no customer), plus observations tied to a
  customer: a share of the logged-in or device-identified product views (email, device id) and
  of the store receipts scanned with a loyalty card (card, store). The prices are the world's
  own (``share_products_with_store_price_gap`` sets how many products are inconsistent), so a
  customer shown a product at one price online and another in store within a week is what
  ``price_gap_products_90d`` sees; the churn hazard already rises with that exposure through
  ``hazard_price_gap`` (a store purchase of a product viewed online at another price).
* **Campaigns.** On the 10th of each month the retailer runs a randomised campaign over every
  person it knows (it cannot see who has silently churned): a share gets an action chosen uniformly
  among the (action, channel) pairs allowed for that person (consent, app user, card holder), with
  its propensity recorded; another share is a control group (``no_action``/``none``); both shares
  are settings (``simulation.campaign_treated_share``, ``campaign_control_share``; 25% and 10% by
  default), recorded in ``simulation.json``. The effect in
  ``treatment_effects.parquet`` is the absolute change in the person's 90-day churn probability:
  at the send, the person's current hazard ``h`` (90-day probability ``p0 = 1 - exp(-90 h)``) is
  multiplied for 90 days so that the 90-day probability becomes ``clip(p0 + effect)``. Effects
  depend on the traits: discounts work on the price-sensitive and are wasted (~0) on the
  price-insensitive, emails reach engaged persons only, SMS annoys the disengaged (positive
  effect), a service call-back helps those with high service expectations.
* **Churn.** A daily hazard ``h = base * exp(lp) * treatment``, with ``lp`` rising with decaying
  friction scores (unresolved and repeated contacts, price differences seen across channels,
  ignored abandoned carts, low NPS/CES), the hidden dissatisfaction and low engagement, and falling
  with channel breadth (three channels much stickier). A churned person stops purchasing, browsing,
  calling and posting; messages are still sent to them, with a few residual opens and clicks.
  Calibrated to about 20-35% of persons churning per year.

Output (``settings.raw_dir``): one CSV per feed per calendar month of activity,
``<feed>/<feed>_<YYYY-MM>.csv``, with exactly the columns of :data:`features.contract.FEEDS`. Rows
dated before the start (enrolments and consents of existing customers) are in the first month's
file. Each source system only knows its own identifiers, typed with noise (email case and spaces,
five phone formats). A share of rows is made dirty (unparsable or future timestamps, negative
amounts, missing required values, values outside an enum, non-numeric numbers) and a small share is
exported twice (an exact copy of the line, in the same file or in the next month's file).

Ground truth (``settings.truth_dir``): ``persons.parquet``, ``records.parquet`` (feed, record key
-> person, for every key written), ``treatment_effects.parquet`` and ``simulation.json``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel
from tqdm import tqdm

from features.contract import FEEDS, Column, Feed
from omniretain.settings import Action, Settings, SimulationSettings

SECONDS_PER_DAY = 86_400
SEGMENTS: tuple[str, ...] = ("loyal", "regular", "bargain_hunter", "occasional")
PURCHASE_CHANNELS: tuple[str, ...] = ("store", "web", "app")
CONSENT_CHANNELS: tuple[str, ...] = ("email", "sms", "app", "call_center")
DIRTY_KINDS: tuple[str, ...] = (
    "unparsable_timestamp",
    "future_timestamp",
    "negative_amount",
    "missing_required",
    "enum_out_of_set",
    "non_numeric",
)
_FIRST_NAMES = (
    "olivia",
    "amelia",
    "isla",
    "ava",
    "mia",
    "ivy",
    "lily",
    "grace",
    "freya",
    "sophia",
    "noah",
    "oliver",
    "george",
    "arthur",
    "leo",
    "harry",
    "oscar",
    "jack",
    "charlie",
    "muhammad",
)
_LAST_NAMES = (
    "smith",
    "jones",
    "taylor",
    "brown",
    "williams",
    "wilson",
    "johnson",
    "davies",
    "patel",
    "wright",
    "walker",
    "evans",
    "thomas",
    "roberts",
    "khan",
    "lewis",
    "clarke",
    "hughes",
)
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "example.co.uk")
_REGIONS = (
    "London",
    "South East",
    "South West",
    "Midlands",
    "North West",
    "Yorkshire",
    "Scotland",
    "Wales",
    "Northern Ireland",
)
_PROMO_CODES = ("SPRING10", "WELCOME5", "FREESHIP", "SUMMER15")


@dataclass(frozen=True)
class WorldParameters:
    """The knobs of the generative model, in one place (rates are per day)."""

    share_present_at_start: float = 0.75
    join_window_months: int = 4
    product_count: int = 400
    # the price-inconsistency rate: share of products whose store price differs from the web
    # (and app) price by 5-25%
    share_products_with_store_price_gap: float = 0.25
    # price_observations feed (its own random stream): the weekly price feed, and the shares of
    # price-showing product views and of card-scanned store receipts logged with the customer
    price_feed_every_days: int = 7
    price_observed_view_share: float = 0.3
    price_observed_receipt_share: float = 0.6
    # activity
    purchase_rate_base: float = 0.006
    purchase_rate_engagement: float = 0.045
    session_rate_base: float = 0.01
    session_rate_engagement: float = 0.06
    add_to_cart_probability: float = 0.35
    abandon_logged_probability: float = 0.75
    cart_recovery_base: float = 0.15
    cart_recovery_engagement: float = 0.45
    ignored_cart_after_days: int = 4
    store_buys_viewed_product: float = 0.5
    viewed_product_memory_days: int = 7
    contact_rate_base: float = 0.0015
    contact_rate_after_online_order: float = 0.02
    contact_rate_after_price_gap: float = 0.04
    first_contact_resolved: float = 0.68
    repeat_contact_resolved: float = 0.55
    repeat_contact_probability: float = 0.75
    max_contacts_per_case: int = 5
    nps_after_purchase: float = 0.04
    ces_after_contact: float = 0.2
    social_rate_base: float = 0.006
    social_rate_friction: float = 0.02
    consent_change_rate: float = 0.0003
    newsletter_weekday: int = 1  # day index modulo 7 of the weekly newsletter
    sms_every_days: int = 14
    campaign_day_of_month: int = 10
    campaign_treated_share: float = 0.25
    campaign_control_share: float = 0.10
    treatment_horizon_days: int = 90
    churned_message_response: float = 0.1  # residual opens/clicks of churned persons, relative
    # churn hazard
    hazard_base: float = 0.00052
    hazard_engagement: float = 1.2  # times (0.5 - engagement)
    hazard_breadth: tuple[float, float, float] = (0.45, 0.0, -0.9)  # 1, 2, 3 channels
    hazard_unresolved: float = 0.9
    hazard_price_gap: float = 0.6
    hazard_ignored_cart: float = 0.35
    hazard_low_score: float = 0.45
    hazard_dissatisfaction: float = 0.35
    hazard_segment: tuple[float, float, float, float] = (-0.4, 0.0, 0.2, 0.35)
    friction_cap: float = 4.0
    friction_half_life_days: float = 35.0
    # output noise
    duplicate_row_share: float = 0.004
    duplicate_next_month_share: float = 0.25


def world_parameters(simulation: SimulationSettings | Mapping[str, Any]) -> WorldParameters:
    """The generative model's knobs, with the campaign shares of the settings (or of a run's
    ``simulation.json``, where older runs have none: the defaults)."""
    values = simulation if isinstance(simulation, Mapping) else simulation.model_dump()
    defaults = WorldParameters()
    return replace(
        defaults,
        campaign_treated_share=float(
            values.get("campaign_treated_share", defaults.campaign_treated_share)
        ),
        campaign_control_share=float(
            values.get("campaign_control_share", defaults.campaign_control_share)
        ),
    )


class SimulationSummary(BaseModel):
    """What :func:`simulate` wrote, for the CLI to print and the truth folder to keep."""

    seed: int
    persons: int
    start: date
    end: date
    rows_per_feed: dict[str, int]
    files_written: int
    dirty_rows: int
    dirty_rows_by_kind: dict[str, int]
    duplicate_rows: int
    duplicate_rows_next_month: int
    churned_persons: int
    raw_dir: Path
    truth_dir: Path

    @property
    def total_rows(self) -> int:
        return sum(self.rows_per_feed.values())

    def render(self) -> str:
        """A few lines for the terminal: who was simulated, what was written, what was spoiled."""
        feeds = ", ".join(f"{name} {rows:,}" for name, rows in self.rows_per_feed.items())
        dirt = ", ".join(f"{kind} {n:,}" for kind, n in self.dirty_rows_by_kind.items())
        return (
            f"{self.persons:,} persons, {self.start} .. {self.end} (seed {self.seed}); "
            f"{self.churned_persons:,} churned in the window\n"
            f"{self.total_rows:,} rows in {self.files_written} files: {feeds}\n"
            f"dirty rows {self.dirty_rows:,} ({dirt}); exported twice {self.duplicate_rows:,}\n"
            f"feeds: {self.raw_dir}\ntruth (kept apart, for tests and benchmarks): "
            f"{self.truth_dir}"
        )


# ---- persons and identifiers (pure: rng in, frames out) ------------------------------------


def draw_persons(
    rng: np.random.Generator, count: int, start: date, months: int, params: WorldParameters
) -> pd.DataFrame:
    """Draw the population with its latent traits, join days and identifiers."""
    segment = rng.choice(len(SEGMENTS), size=count, p=[0.2, 0.35, 0.2, 0.25])
    engagement_ab = np.array([[5.0, 2.5], [3.0, 3.0], [2.5, 3.0], [1.5, 4.0]])
    price_ab = np.array([[2.0, 6.0], [2.5, 3.5], [6.0, 2.0], [2.5, 2.5]])
    value_mu = np.array([0.35, 0.0, -0.2, -0.15])
    engagement = rng.beta(engagement_ab[segment, 0], engagement_ab[segment, 1])
    price_sensitivity = rng.beta(price_ab[segment, 0], price_ab[segment, 1])
    value_level = np.exp(rng.normal(value_mu[segment], 0.35))
    service_expectation = rng.beta(2.0, 2.0, size=count)
    dissatisfaction = rng.normal(0.0, 1.0, size=count)

    # Weighted choice of 1-3 preferred channels without replacement (Efraimidis-Spirakis keys).
    breadth = rng.choice([1, 2, 3], size=count, p=[0.45, 0.35, 0.20])
    keys = rng.random((count, 3)) ** (1.0 / np.array([1.0, 0.8, 0.5]))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    prefers = rank < breadth[:, None]

    present = rng.random(count) < params.share_present_at_start
    join_window_days = max(1, min(months, params.join_window_months) * 30)
    join_day = np.where(present, 0, rng.integers(1, join_window_days + 1, size=count))
    joined_offset = np.where(
        present,
        -rng.integers(1, 730 * SECONDS_PER_DAY, size=count),
        join_day * SECONDS_PER_DAY + rng.integers(8 * 3600, 21 * 3600, size=count),
    )

    online = prefers[:, 1] | prefers[:, 2]
    has_card = rng.random(count) < 0.3 + 0.35 * prefers[:, 0] + 0.15 * (segment == 0)
    device_count = np.where(online, 1 + (rng.random(count) < 0.35), rng.random(count) < 0.12)
    has_social = rng.random(count) < 0.05 + 0.08 * engagement
    consent_p = np.column_stack(
        [
            np.full(count, 0.8),
            np.full(count, 0.5),
            np.where(prefers[:, 2], 0.75, 0.05),
            np.full(count, 0.6),
        ]
    )
    consent = rng.random((count, 4)) < consent_p

    first = np.array(_FIRST_NAMES, dtype=object)[rng.integers(len(_FIRST_NAMES), size=count)]
    last = np.array(_LAST_NAMES, dtype=object)[rng.integers(len(_LAST_NAMES), size=count)]
    domain = np.array(_EMAIL_DOMAINS, dtype=object)[rng.integers(len(_EMAIL_DOMAINS), size=count)]
    order = rng.permutation(count)  # unique per person, unrelated to the person id
    # (a * x + b) mod 10^k with a coprime to 10 is a bijection: unique numbers that look random.
    phone_digits = (order.astype(np.int64) * 7_654_321 + 123_456_789) % 10**9
    card_digits = (order.astype(np.int64) * 3_141_593 + 2_718_281_828) % 10**10
    device_raw = rng.integers(0, 2**62, size=(count, 2))
    width = max(6, len(str(count)))

    persons = pd.DataFrame(
        {
            "person_id": [f"P{i:0{width}d}" for i in range(count)],
            "joined_at": pd.Timestamp(start) + pd.to_timedelta(joined_offset, unit="s"),
            "join_day": join_day.astype(np.int32),
            "segment": np.array(SEGMENTS, dtype=object)[segment],
            "engagement": engagement,
            "price_sensitivity": price_sensitivity,
            "value_level": value_level,
            "service_expectation": service_expectation,
            "dissatisfaction": dissatisfaction,
            "prefers_store": prefers[:, 0],
            "prefers_web": prefers[:, 1],
            "prefers_app": prefers[:, 2],
            "channel_breadth": breadth.astype(np.int8),
            "consent_email_at_join": consent[:, 0],
            "consent_sms_at_join": consent[:, 1],
            "consent_app_at_join": consent[:, 2],
            "consent_call_center_at_join": consent[:, 3],
            "email": [
                f"{f}.{la}{o}@{d}" for f, la, o, d in zip(first, last, order, domain, strict=True)
            ],
            "phone_national": [f"7{d:09d}" for d in phone_digits],
            "loyalty_card": np.where(has_card, [f"LC{d:010d}" for d in card_digits], None),
            "device_id_1": np.where(
                device_count >= 1, [f"dev-{d:016x}" for d in device_raw[:, 0]], None
            ),
            "device_id_2": np.where(
                device_count >= 2, [f"dev-{d:016x}" for d in device_raw[:, 1]], None
            ),
            "social_handle": np.where(
                has_social,
                [f"@{f}_{la[:3]}{o}" for f, la, o in zip(first, last, order, strict=True)],
                None,
            ),
            "region": np.array(_REGIONS, dtype=object)[rng.integers(len(_REGIONS), size=count)],
            "birth_year": rng.integers(1950, 2006, size=count),
        }
    )
    return persons


def true_treatment_effects(
    persons: pd.DataFrame, actions: list[Action], rng: np.random.Generator
) -> pd.DataFrame:
    """The true absolute change of each person's 90-day churn probability per (action, channel).

    Negative retains, positive pushes away. ``base_uplift`` of the catalogue is the scale; the
    person's traits decide who responds (see the module docstring). Unknown action names get the
    catalogue prior scaled by engagement, so any catalogue works.
    """
    pairs = action_channel_pairs(actions)
    engagement = persons["engagement"].to_numpy()
    price = persons["price_sensitivity"].to_numpy()
    service = persons["service_expectation"].to_numpy()
    online = (persons["prefers_web"] | persons["prefers_app"]).to_numpy()
    app_user = persons["prefers_app"].to_numpy()
    store_user = persons["prefers_store"].to_numpy()
    card = persons["loyalty_card"].notna().to_numpy()
    responsiveness: dict[str, np.ndarray] = {
        "retention_discount": 2.0 * price**1.5,
        "free_shipping": online * (0.3 + 1.2 * price),
        "service_callback": 0.3 + 1.4 * service,
        "cart_reminder": online * (0.4 + engagement),
        "loyalty_points": (0.2 + 0.8 * card) * (0.4 + engagement),
    }
    reach: dict[str, np.ndarray] = {
        "email": 0.15 + 0.85 * engagement,
        "sms": np.ones_like(engagement),
        "app": np.where(app_user, 1.0, 0.1),
        "store": np.where(store_user, 1.0, 0.1),
        "call_center": np.ones_like(engagement),
    }
    annoyance: dict[str, np.ndarray] = {
        "sms": 0.045 * (1.0 - engagement) ** 2,
        "call_center": 0.01 * (1.0 - service),
    }
    noise = np.exp(rng.normal(0.0, 0.25, size=(len(persons), len(pairs))))
    frames = []
    for column, (action, channel) in enumerate(pairs):
        person_response = responsiveness.get(action.name, 0.5 + engagement)
        effect = -action.base_uplift * person_response * reach.get(channel, 1.0) * noise[
            :, column
        ] + annoyance.get(channel, 0.0)
        frames.append(
            pd.DataFrame(
                {
                    "person_id": persons["person_id"].to_numpy(),
                    "action": action.name,
                    "channel": channel,
                    "effect": np.round(np.clip(effect, -0.3, 0.15), 5),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def action_channel_pairs(actions: list[Action]) -> list[tuple[Action, str]]:
    """Every deliverable (action, channel) of the catalogue, ``no_action`` excluded."""
    return [(a, ch) for a in actions if a.name != "no_action" for ch in a.channels]


# ---- identifier noise (pure) ---------------------------------------------------------------

PHONE_FORMATS: tuple[str, ...] = (
    "+44 {a} {b}",
    "0{a} {b}",
    "0044-{a}-{b}",
    "(0{a}) {b}",
    "44{a}{b}",
)
PHONE_FORMAT_SHARES: tuple[float, ...] = (0.3, 0.35, 0.1, 0.1, 0.15)
EMAIL_VARIANT_SHARES: tuple[float, ...] = (0.82, 0.04, 0.06, 0.03, 0.04, 0.01)


def phone_variants(national: pd.Series) -> np.ndarray:
    """Every way a UK mobile (``7xxxxxxxxx``) gets typed: one column per :data:`PHONE_FORMATS`."""
    head, tail = national.str[:4], national.str[4:]
    columns = []
    for template in PHONE_FORMATS:
        prefix, middle = template.split("{a}")
        separator, suffix = middle.split("{b}")
        columns.append((prefix + head + separator + tail + suffix).to_numpy(dtype=object))
    return np.column_stack(columns)


def email_variants(emails: pd.Series) -> np.ndarray:
    """Case and whitespace noise of an address (the mailbox itself never changes)."""
    lower = emails.str.lower()
    title = lower.str.title()
    return np.column_stack(
        [
            lower,
            lower.str.upper(),
            title,
            " " + lower,
            lower + "  ",
            " " + title,
        ]
    ).astype(object)


def pick_variants(
    variants: np.ndarray, rows: np.ndarray, shares: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """One spelling per row, drawn with the given shares (rows index the persons)."""
    choice = rng.choice(variants.shape[1], size=len(rows), p=shares)
    return variants[rows, choice]


def format_timestamps(seconds: np.ndarray, start: date, rng: np.random.Generator) -> np.ndarray:
    """ISO 8601 text: most naive, some with ``Z``, a few with ``+00:00``."""
    stamps = np.datetime64(start, "s") + seconds.astype(np.int64).astype("timedelta64[s]")
    text = pa.array(np.datetime_as_string(stamps, unit="s"), pa.string())
    suffix = np.array(["", "Z", "+00:00"], dtype=object)[
        rng.choice(3, size=len(seconds), p=[0.8, 0.15, 0.05])
    ]
    joined = pc.binary_join_element_wise(text, pa.array(suffix, pa.string()), "")
    return joined.to_numpy(zero_copy_only=False)


def to_text(column: Column, values: np.ndarray) -> np.ndarray:
    """Values as the text a source system exports (``None`` for empty), per the column type."""
    if column.type == "bool":
        present = pd.notna(values)
        return np.where(present, np.where(values == True, "true", "false"), None)  # noqa: E712
    if column.type in ("float", "int"):
        numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        if column.type == "float":
            numbers = np.round(numbers, 2)
        text = pa.array(numbers, from_pandas=True).cast(pa.string())
        return text.to_numpy(zero_copy_only=False)
    return values.astype(object)


def _coded(prefix: str, width: int, numbers: np.ndarray) -> np.ndarray:
    """Readable codes (``SKU00042``) for internal integer ids; negative means none."""
    numbers = numbers.astype(np.int64)
    digits = pc.utf8_lpad(pa.array(np.maximum(numbers, 0)).cast(pa.string()), width, "0")
    text = pc.binary_join_element_wise(pa.scalar(prefix), digits, "")
    return np.where(numbers >= 0, text.to_numpy(zero_copy_only=False), None)


def csv_text(frame: pd.DataFrame) -> str:
    """A CSV export of text columns: header row, ``\\n`` line ends, quotes only where needed."""
    columns = []
    for name in frame.columns:
        column = pa.array(frame[name].to_numpy(dtype=object), pa.string(), from_pandas=True)
        needs_quotes = pc.match_substring_regex(column, '[",\\n]')
        quoted = pc.binary_join_element_wise(
            pa.scalar('"'), pc.replace_substring(column, '"', '""'), pa.scalar('"'), ""
        )
        columns.append(pc.if_else(pc.fill_null(needs_quotes, False), quoted, column))
    if not len(frame):
        return ",".join(frame.columns) + "\n"
    lines = pc.binary_join_element_wise(*columns, ",", null_handling="replace", null_replacement="")
    return ",".join(frame.columns) + "\n" + "\n".join(lines.to_pylist()) + "\n"


# ---- dirty rows and duplicates (pure) --------------------------------------------------------


def _numeric_columns(feed: Feed, minimum_zero: bool) -> list[str]:
    numeric = [n for n, c in feed.columns.items() if c.type in ("float", "int")]
    if minimum_zero:
        numeric = [n for n in numeric if feed.columns[n].minimum == 0.0]
    required_first = sorted(numeric, key=lambda n: not feed.columns[n].required)
    return required_first


def applicable_dirty_kinds(feed: Feed) -> list[str]:
    """The kinds of dirt that make sense for a feed (no negative amount where nothing is one)."""
    kinds = ["unparsable_timestamp", "future_timestamp"]
    if _numeric_columns(feed, minimum_zero=True):
        kinds.append("negative_amount")
    if [n for n in feed.required_columns if n != feed.key]:
        kinds.append("missing_required")
    if any(c.allowed for c in feed.columns.values()):
        kinds.append("enum_out_of_set")
    if _numeric_columns(feed, minimum_zero=False):
        kinds.append("non_numeric")
    return kinds


def inject_dirty_rows(
    frame: pd.DataFrame, feed: Feed, share: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """Spoil a share of rows the way real exports are spoiled; returns the kind per row ('' clean).

    The key column is never spoiled, so that every written row stays traceable in the truth.
    """
    kinds_per_row = np.full(len(frame), "", dtype=object)
    count = rng.binomial(len(frame), share) if len(frame) else 0
    if count == 0:
        return frame, kinds_per_row
    frame = frame.copy()
    rows = np.sort(rng.choice(len(frame), size=count, replace=False))
    kinds = applicable_dirty_kinds(feed)
    chosen = np.array(kinds, dtype=object)[rng.integers(len(kinds), size=count)]
    kinds_per_row[rows] = chosen
    for kind in kinds:
        target = rows[chosen == kind]
        if not len(target):
            continue
        if kind == "unparsable_timestamp":
            bad = np.array(
                [
                    "2025-02-30T10:00:00",
                    "not a date",
                    "31/12/2025 25:61",
                    "2025-13-01T00:00:00",
                    "yesterday",
                ],
                dtype=object,
            )
            _set(frame, feed.time_column, target, bad[rng.integers(len(bad), size=len(target))])
        elif kind == "future_timestamp":
            original = frame[feed.time_column].iloc[target].astype(str)
            _set(frame, feed.time_column, target, ("2099" + original.str[4:]).to_numpy())
        elif kind == "negative_amount":
            column = _numeric_columns(feed, minimum_zero=True)[0]
            values = pd.to_numeric(frame[column].iloc[target], errors="coerce").fillna(0.0)
            negative = -(values.abs().to_numpy() + 1.0)
            text = (
                [str(int(v)) for v in negative]
                if feed.columns[column].type == "int"
                else [f"{v:.2f}" for v in negative]
            )
            _set(frame, column, target, np.array(text, dtype=object))
        elif kind == "missing_required":
            candidates = [n for n in feed.required_columns if n != feed.key]
            which = rng.integers(len(candidates), size=len(target))
            for index, column in enumerate(candidates):
                _set(frame, column, target[which == index], None)
        elif kind == "enum_out_of_set":
            column = next(n for n, c in feed.columns.items() if c.allowed)
            bad = np.array(["unknown", "pigeon_post", "??", "N/A-9"], dtype=object)
            _set(frame, column, target, bad[rng.integers(len(bad), size=len(target))])
        elif kind == "non_numeric":
            column = _numeric_columns(feed, minimum_zero=False)[0]
            bad = np.array(["twelve", "1O.5", "12,50", "#VALUE!"], dtype=object)
            _set(frame, column, target, bad[rng.integers(len(bad), size=len(target))])
    return frame, kinds_per_row


def _set(frame: pd.DataFrame, column: str, rows: np.ndarray, values: Any) -> None:
    if len(rows):
        frame.iloc[rows, frame.columns.get_loc(column)] = values


def pick_duplicates(
    row_count: int,
    clean: np.ndarray,
    share: float,
    next_month_share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose clean rows exported twice: (copied in the same file, copied in next month's file)."""
    candidates = np.flatnonzero(clean)
    count = min(len(candidates), rng.binomial(row_count, share)) if row_count else 0
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    later = rng.random(count) < next_month_share
    return chosen[~later], chosen[later]


# ---- the world: state and one day of activity -----------------------------------------------


class _Events:
    """Rows emitted during one calendar month, per feed, as lists of column arrays."""

    def __init__(self) -> None:
        self.parts: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, feed: str, person: np.ndarray, seconds: np.ndarray, **columns: Any) -> None:
        if len(person):
            self.parts[feed].append({"_person": person, "_seconds": seconds, **columns})

    def frame(self, feed: str) -> pd.DataFrame:
        """All rows of a feed, scalars broadcast, missing columns filled, sorted by time."""
        parts = self.parts.get(feed, [])
        names: list[str] = []
        for part in parts:
            names += [n for n in part if n not in names]
        columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for part in parts:
            length = len(part["_person"])
            for name in names:
                value = part.get(name)
                if isinstance(value, np.ndarray):
                    columns[name].append(value)
                else:
                    columns[name].append(np.full(length, value, dtype=object))
        frame = pd.DataFrame({name: _concat(arrays) for name, arrays in columns.items()})
        if frame.empty:
            return frame
        order = np.lexsort((frame["_person"].to_numpy(), frame["_seconds"].to_numpy()))
        return frame.iloc[order].reset_index(drop=True)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    kinds = {a.dtype.kind for a in arrays}
    if len(kinds) > 1:
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


class _World:
    """Latent state of every person, advanced one day at a time (vectorised over persons)."""

    def __init__(
        self,
        persons: pd.DataFrame,
        effects: np.ndarray,
        pairs: list[tuple[Action, str]],
        start: date,
        params: WorldParameters,
        rng: np.random.Generator,
    ) -> None:
        self.params, self.rng, self.start = params, rng, start
        self.pairs, self.effects = pairs, effects
        n = self.n = len(persons)
        self.join_day = persons["join_day"].to_numpy()
        self.joined_seconds = (
            (persons["joined_at"] - pd.Timestamp(start))
            .dt.total_seconds()
            .to_numpy()
            .astype(np.int64)
        )
        self.segment = pd.Categorical(persons["segment"], categories=SEGMENTS).codes
        self.engagement = persons["engagement"].to_numpy()
        self.price_sensitivity = persons["price_sensitivity"].to_numpy()
        self.value_level = persons["value_level"].to_numpy()
        self.service = persons["service_expectation"].to_numpy()
        self.dissatisfaction = persons["dissatisfaction"].to_numpy()
        self.prefers = persons[["prefers_store", "prefers_web", "prefers_app"]].to_numpy()
        self.breadth = persons["channel_breadth"].to_numpy()
        self.online = self.prefers[:, 1] | self.prefers[:, 2]
        self.device_count = (
            persons["device_id_1"].notna().to_numpy().astype(np.int8)
            + persons["device_id_2"].notna().to_numpy()
        )
        self.has_card = persons["loyalty_card"].notna().to_numpy()
        self.has_social = persons["social_handle"].notna().to_numpy()
        self.region = persons["region"].to_numpy(dtype=object)
        # Some members leave the optional fields of the enrolment form empty.
        self.region = np.where(rng.random(n) < 0.1, None, self.region)
        self.birth_year = np.where(rng.random(n) < 0.25, np.nan, persons["birth_year"].to_numpy())
        self.consent_at_join = persons[
            [f"consent_{c}_at_join" for c in CONSENT_CHANNELS]
        ].to_numpy()

        self.joined = np.zeros(n, bool)
        self.alive = np.zeros(n, bool)
        self.churn_day = np.full(n, -1, np.int32)
        self.consent = np.zeros((n, 4), bool)
        self.unresolved = np.zeros(n)
        self.price_gap = np.zeros(n)
        self.ignored_carts = np.zeros(n)
        self.low_scores = np.zeros(n)
        self.case_id = np.full(n, -1, np.int64)
        self.case_contacts = np.zeros(n, np.int16)
        self.case_next_day = np.full(n, -1, np.int32)
        self.case_reason = np.zeros(n, object)
        self.viewed_product = np.full(n, -1, np.int32)
        self.viewed_day = np.full(n, -(10**6), np.int32)
        self.cart_day = np.full(n, -1, np.int32)
        self.recovery_day = np.full(n, -1, np.int32)
        self.online_order_day = np.full(n, -(10**6), np.int32)
        self.price_gap_day = np.full(n, -(10**6), np.int32)
        self.treatment_multiplier = np.ones(n)
        self.treatment_until = np.full(n, -1, np.int32)
        self.counters: dict[str, int] = defaultdict(int)

        list_price = np.round(np.exp(rng.normal(np.log(25.0), 0.6, params.product_count)), 0)
        self.web_price = list_price - 0.01
        gap = rng.random(params.product_count) < params.share_products_with_store_price_gap
        sign = np.where(rng.random(params.product_count) < 0.7, 1.0, -1.0)
        deviation = np.where(gap, sign * rng.uniform(0.05, 0.25, params.product_count), 0.0)
        self.store_price = np.round(self.web_price * (1 + deviation), 2)
        self.decay = 0.5 ** (1.0 / params.friction_half_life_days)

    # -- helpers --
    def _next_ids(self, name: str, count: int) -> np.ndarray:
        first = self.counters[name]
        self.counters[name] += count
        return np.arange(first, first + count, dtype=np.int64)

    def _times(self, day: int, count: int) -> np.ndarray:
        hour_weights = np.array([0.2] * 7 + [1, 2, 3, 3, 4, 4, 4, 3, 3, 3, 4, 5, 5, 4, 3, 2, 1])
        hours = self.rng.choice(24, size=count, p=hour_weights / hour_weights.sum())
        return (
            day * SECONDS_PER_DAY + hours * 3600 + self.rng.integers(0, 3600, size=count)
        ).astype(np.int64)

    def hazard(self, day: int) -> np.ndarray:
        """Daily churn hazard of every person (meaningful for the alive)."""
        p = self.params
        cap = p.friction_cap
        linear = (
            p.hazard_engagement * (0.5 - self.engagement)
            + np.array(p.hazard_breadth)[self.breadth - 1]
            + np.array(p.hazard_segment)[self.segment]
            + p.hazard_unresolved * np.minimum(self.unresolved, cap)
            + p.hazard_price_gap * np.minimum(self.price_gap, cap)
            + p.hazard_ignored_cart * np.minimum(self.ignored_carts, cap)
            + p.hazard_low_score * np.minimum(self.low_scores, cap)
            + p.hazard_dissatisfaction * self.dissatisfaction
        )
        treated = self.treatment_until >= day
        return p.hazard_base * np.exp(linear) * np.where(treated, self.treatment_multiplier, 1.0)

    # -- one day --
    def step(self, day: int, day_date: date, events: _Events) -> None:
        self.unresolved *= self.decay
        self.price_gap *= self.decay
        self.ignored_carts *= self.decay
        self.low_scores *= self.decay
        self._join(day, events)
        if day_date.day == self.params.campaign_day_of_month:
            self._campaign(day, day_date, events)
        if day % 7 == self.params.newsletter_weekday:
            self._send_emails(
                np.flatnonzero(self.joined & self.consent[:, 0]),
                day,
                f"NL-{day_date.isoformat()}",
                events,
            )
        if day % self.params.sms_every_days == 3:
            self._send_sms(
                np.flatnonzero(self.joined & self.consent[:, 1]),
                day,
                f"SMS-{day_date.isoformat()}",
                events,
            )
        self._browse(day, events)
        self._purchase(day, events)
        self._contacts(day, events)
        self._social(day, events)
        self._consent_changes(day, events)
        self._churn(day)

    def _join(self, day: int, events: _Events) -> None:
        new = np.flatnonzero(self.join_day == day)
        if not len(new):
            return
        self.joined[new] = True
        self.alive[new] = True
        self.consent[new] = self.consent_at_join[new]
        seconds = self.joined_seconds[new]
        card = new[self.has_card[new]]
        events.add(
            "loyalty_members",
            card,
            self.joined_seconds[card],
            region=self.region[card],
            birth_year=self.birth_year[card],
        )
        for index, channel in enumerate(CONSENT_CHANNELS):
            granted = self.consent_at_join[new, index]
            # Refusals are recorded only sometimes; grants always.
            recorded = granted | (self.rng.random(len(new)) < 0.3)
            events.add(
                "consents",
                new[recorded],
                seconds[recorded] + self.rng.integers(30, 900, recorded.sum()),
                channel=channel,
                granted=granted[recorded],
            )

    def _campaign(self, day: int, day_date: date, events: _Events) -> None:
        p = self.params
        known = np.flatnonzero(self.joined)
        u = self.rng.random(len(known))
        control = known[
            (u >= p.campaign_treated_share)
            & (u < p.campaign_treated_share + p.campaign_control_share)
        ]
        candidates = known[u < p.campaign_treated_share]
        allowed = np.column_stack([self._deliverable(candidates, ch) for _, ch in self.pairs])
        reachable = allowed.any(axis=1)
        candidates, allowed = candidates[reachable], allowed[reachable]
        choice = np.argmax(np.where(allowed, self.rng.random(allowed.shape), -1.0), axis=1)
        propensity = p.campaign_treated_share / allowed.sum(axis=1)
        campaign_id = f"CMP-{day_date:%Y-%m}"
        names = np.array([a.name for a, _ in self.pairs], dtype=object)
        channels = np.array([ch for _, ch in self.pairs], dtype=object)
        events.add(
            "campaign_history",
            candidates,
            self._times(day, len(candidates)),
            campaign_id=campaign_id,
            action=names[choice],
            channel=channels[choice],
            randomised=True,
            propensity=np.round(propensity, 4),
            is_control=False,
        )
        events.add(
            "campaign_history",
            control,
            self._times(day, len(control)),
            campaign_id=campaign_id,
            action="no_action",
            channel="none",
            randomised=True,
            propensity=round(p.campaign_control_share, 4),
            is_control=True,
        )
        # The effect: the 90-day churn probability moves by the true effect from its level now.
        treated = candidates[self.alive[candidates]]
        effect = self.effects[treated, choice[self.alive[candidates]]]
        p0 = np.clip(
            1.0 - np.exp(-p.treatment_horizon_days * self.hazard(day)[treated]), 1e-4, 0.95
        )
        p1 = np.clip(p0 + effect, 5e-4, 0.95)
        # ``p0`` is the current hazard's, an ongoing treatment included: the new one multiplies
        # it (replacing the multiplier undid the earlier treatment, so a re-treated person lost
        # its effect while a control kept it, which biased every off-policy estimate down).
        ongoing = np.where(
            self.treatment_until[treated] >= day, self.treatment_multiplier[treated], 1.0
        )
        self.treatment_multiplier[treated] = ongoing * np.log1p(-p1) / np.log1p(-p0)
        self.treatment_until[treated] = day + p.treatment_horizon_days
        for channel, sender in (("email", self._send_emails), ("sms", self._send_sms)):
            sent = candidates[channels[choice] == channel]
            sender(sent, day, campaign_id, events)

    def _deliverable(self, who: np.ndarray, channel: str) -> np.ndarray:
        rules = {
            "email": self.consent[who, 0],
            "sms": self.consent[who, 1],
            "app": self.consent[who, 2] & self.prefers[who, 2],
            "call_center": self.consent[who, 3],
            "store": self.has_card[who],
            "web": self.online[who],
        }
        return rules.get(channel, np.ones(len(who), bool))

    def _response_scale(self, who: np.ndarray) -> np.ndarray:
        return np.where(self.alive[who], 1.0, self.params.churned_message_response)

    def _send_emails(self, who: np.ndarray, day: int, campaign_id: str, events: _Events) -> None:
        rng, eng = self.rng, self.engagement[who]
        sent_at = self._times(day, len(who))
        events.add("email_events", who, sent_at, campaign_id=campaign_id, event_type="sent")
        bounced = rng.random(len(who)) < 0.003
        events.add(
            "email_events",
            who[bounced],
            sent_at[bounced] + 5,
            campaign_id=campaign_id,
            event_type="bounce",
        )
        opened = ~bounced & (rng.random(len(who)) < (0.04 + 0.5 * eng) * self._response_scale(who))
        open_at = sent_at + rng.integers(60, 30_000, len(who))
        events.add(
            "email_events", who[opened], open_at[opened], campaign_id=campaign_id, event_type="open"
        )
        clicked = opened & (rng.random(len(who)) < 0.08 + 0.3 * eng)
        events.add(
            "email_events",
            who[clicked],
            open_at[clicked] + 20,
            campaign_id=campaign_id,
            event_type="click",
        )
        unsubscribed = (
            ~bounced & self.alive[who] & (rng.random(len(who)) < 0.0008 + 0.005 * (1 - eng))
        )
        leavers = who[unsubscribed]
        events.add(
            "email_events",
            leavers,
            open_at[unsubscribed] + 40,
            campaign_id=campaign_id,
            event_type="unsubscribe",
        )
        self._withdraw(leavers, 0, open_at[unsubscribed] + 41, events)

    def _send_sms(self, who: np.ndarray, day: int, campaign_id: str, events: _Events) -> None:
        rng, eng = self.rng, self.engagement[who]
        sent_at = self._times(day, len(who))
        events.add("sms_events", who, sent_at, campaign_id=campaign_id, event_type="sent")
        clicked = rng.random(len(who)) < (0.02 + 0.12 * eng) * self._response_scale(who)
        events.add(
            "sms_events",
            who[clicked],
            sent_at[clicked] + rng.integers(30, 7200, clicked.sum()),
            campaign_id=campaign_id,
            event_type="click",
        )
        opted_out = self.alive[who] & (rng.random(len(who)) < 0.002 + 0.012 * (1 - eng))
        events.add(
            "sms_events",
            who[opted_out],
            sent_at[opted_out] + 600,
            campaign_id=campaign_id,
            event_type="opt_out",
        )
        self._withdraw(who[opted_out], 1, sent_at[opted_out] + 601, events)

    def _withdraw(
        self, who: np.ndarray, channel_index: int, seconds: np.ndarray, events: _Events
    ) -> None:
        self.consent[who, channel_index] = False
        events.add("consents", who, seconds, channel=CONSENT_CHANNELS[channel_index], granted=False)

    def _consent_changes(self, day: int, events: _Events) -> None:
        changing_mind = self.rng.random(self.n) < self.params.consent_change_rate
        who = np.flatnonzero(self.alive & changing_mind)
        channel = self.rng.integers(4, size=len(who))
        for index, name in enumerate(CONSENT_CHANNELS):
            changing = who[channel == index]
            new_state = ~self.consent[changing, index]
            self.consent[changing, index] = new_state
            events.add(
                "consents",
                changing,
                self._times(day, len(changing)),
                channel=name,
                granted=new_state,
            )

    def _session_rows(
        self,
        who: np.ndarray,
        day: int,
        views: np.ndarray,
        added: np.ndarray,
        closing: np.ndarray,
        logged_in: np.ndarray,
        events: _Events,
        last_product: np.ndarray | None = None,
    ) -> np.ndarray:
        """Emit sessions: a page view, ``views`` product views, then an optional add to cart and
        a closing event (``cart_abandoned``/``checkout``). Returns the last product viewed."""
        rng, count = self.rng, len(who)
        if last_product is None:
            last_product = rng.integers(self.params.product_count, size=count)
        app = self.prefers[who, 2] & (~self.prefers[who, 1] | (rng.random(count) < 0.5))
        slot = np.where((self.device_count[who] == 2) & (rng.random(count) < 0.3), 2, 1)
        session = self._next_ids("session", count)
        start = self._times(day, count)
        lengths = 1 + views + added + (closing != "")
        rows = np.repeat(np.arange(count), lengths)
        step = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        after_views = step - views[rows]
        event_type = np.where(
            step == 0,
            "page_view",
            np.where(
                after_views <= 0,
                "product_view",
                np.where(after_views == 1, "add_to_cart", closing[rows]),
            ),
        ).astype(object)
        product = np.where(
            after_views >= 0,
            last_product[rows],
            rng.integers(self.params.product_count, size=len(rows)),
        )
        product = np.where(step == 0, -1, product)
        shows_price = (event_type == "product_view") | (event_type == "add_to_cart")
        price = np.where(shows_price, self.web_price[np.maximum(product, 0)], np.nan)
        events.add(
            "web_sessions",
            who[rows],
            start[rows] + step * rng.integers(20, 150, len(rows)),
            channel=np.where(app[rows], "app", "web").astype(object),
            session_id=session[rows],
            _device_slot=slot[rows],
            _logged_in=logged_in[rows],
            event_type=event_type,
            product_id=product,
            price_seen=price,
        )
        return last_product

    def _browse(self, day: int, events: _Events) -> None:
        p, rng = self.params, self.rng
        rate = p.session_rate_base + p.session_rate_engagement * self.engagement
        who = np.flatnonzero(
            self.alive & self.online & (self.device_count > 0) & (rng.random(self.n) < rate)
        )
        if not len(who):
            return
        views = 1 + rng.poisson(1.0, len(who))
        added = rng.random(len(who)) < p.add_to_cart_probability
        logged = added & (rng.random(len(who)) < p.abandon_logged_probability)
        closing = np.where(logged, "cart_abandoned", "").astype(object)
        logged_in = rng.random(len(who)) < np.where(self.prefers[who, 2], 0.6, 0.3)
        last_product = self._session_rows(who, day, views, added, closing, logged_in, events)
        self.viewed_product[who] = last_product
        self.viewed_day[who] = day
        # An abandoned cart: an engaged person often comes back for it within a few days.
        abandoned = who[added]
        self.cart_day[abandoned] = day
        comes_back = rng.random(len(abandoned)) < (
            p.cart_recovery_base + p.cart_recovery_engagement * self.engagement[abandoned]
        )
        self.recovery_day[abandoned[comes_back]] = day + rng.integers(1, 5, comes_back.sum())

    def _purchase(self, day: int, events: _Events) -> None:
        p, rng = self.params, self.rng
        rate = (
            (p.purchase_rate_base + p.purchase_rate_engagement * self.engagement)
            * self.value_level**0.3
            * np.array([1.3, 1.0, 0.9, 0.6])[self.segment]
        )
        spontaneous = self.alive & (rng.random(self.n) < rate)
        recovering = self.alive & (self.recovery_day == day)
        who = np.flatnonzero(spontaneous | recovering)
        # Ignored abandoned carts: not bought within the window (checked before today's buys).
        stale = (self.cart_day >= 0) & (day - self.cart_day > p.ignored_cart_after_days)
        self.ignored_carts[stale & self.alive] += 1.0
        self.cart_day[stale] = -1
        if not len(who):
            return
        count = len(who)
        weights = self.prefers[who] * np.array([1.3, 0.8, 0.7])
        cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        channel = (rng.random(count)[:, None] > cumulative).sum(axis=1)
        channel = np.minimum(channel, 2)
        is_recovery = recovering[who]
        online_pick = np.where(
            self.prefers[who, 2] & (~self.prefers[who, 1] | (rng.random(count) < 0.5)), 2, 1
        )
        channel = np.where(is_recovery, online_pick, channel)
        recent_view = (day - self.viewed_day[who] <= p.viewed_product_memory_days) & (
            self.viewed_product[who] >= 0
        )
        reuse_view = is_recovery | (
            recent_view & (channel == 0) & (rng.random(count) < p.store_buys_viewed_product)
        )
        product = np.where(
            reuse_view, self.viewed_product[who], rng.integers(p.product_count, size=count)
        )
        in_store = channel == 0
        unit_price = np.where(in_store, self.store_price[product], self.web_price[product])
        items = 1 + rng.poisson(0.6 * self.value_level[who])
        extra = (items - 1) * np.exp(rng.normal(np.log(18.0), 0.5, count)) * self.value_level[who]
        amount = np.round(unit_price + extra, 2)
        discounted = rng.random(count) < 0.1 + 0.25 * self.price_sensitivity[who]
        discount = np.where(discounted, np.round(amount * rng.uniform(0.05, 0.2, count), 2), 0.0)
        is_return = rng.random(count) < 0.03
        seconds = self._times(day, count)
        store_rows = np.flatnonzero(in_store)
        events.add(
            "pos_sales",
            who[store_rows],
            seconds[store_rows],
            store_id=np.array(
                [f"S{s:03d}" for s in rng.integers(1, 60, len(store_rows))], dtype=object
            ),
            amount=amount[store_rows],
            items=items[store_rows],
            discount_amount=discount[store_rows],
            product_id=product[store_rows],
            unit_price=unit_price[store_rows],
            is_return=is_return[store_rows],
        )
        online_rows = np.flatnonzero(~in_store)
        ordered = who[online_rows]
        promo = np.where(
            rng.random(len(online_rows)) < 0.1,
            np.array(_PROMO_CODES, dtype=object)[
                rng.integers(len(_PROMO_CODES), size=len(online_rows))
            ],
            None,
        )
        slot = np.where(
            (self.device_count[ordered] == 2) & (rng.random(len(ordered)) < 0.3),
            2,
            np.where(self.device_count[ordered] >= 1, 1, 0),
        )
        events.add(
            "web_orders",
            ordered,
            seconds[online_rows],
            channel=np.where(channel[online_rows] == 2, "app", "web").astype(object),
            _device_slot=slot,
            amount=amount[online_rows],
            items=items[online_rows],
            discount_amount=discount[online_rows],
            promo_code=promo,
            product_id=product[online_rows],
            unit_price=unit_price[online_rows],
            is_return=is_return[online_rows],
        )
        browsers = online_rows[self.device_count[ordered] > 0]
        if len(browsers):
            ones = np.ones(len(browsers), np.int64)
            self._session_rows(
                who[browsers],
                day,
                ones,
                ones.astype(bool),
                np.full(len(browsers), "checkout", dtype=object),
                rng.random(len(browsers)) < 0.8,
                events,
                last_product=product[browsers],
            )
        self.cart_day[who] = -1
        self.recovery_day[who] = -1
        self.online_order_day[ordered] = day
        # A price gap seen: bought in store a product just viewed online at another price.
        viewed_price = self.web_price[np.maximum(self.viewed_product[who], 0)]
        gap = np.abs(unit_price - viewed_price) / viewed_price
        saw_gap = in_store & reuse_view & (gap > 0.02)
        self.price_gap[who[saw_gap]] += 4.0 * gap[saw_gap]
        self.price_gap_day[who[saw_gap]] = day
        surveyed = rng.random(count) < p.nps_after_purchase
        self._nps(
            who[surveyed], seconds[surveyed] + 3600 * rng.integers(2, 48, surveyed.sum()), events
        )

    def _nps(self, who: np.ndarray, seconds: np.ndarray, events: _Events) -> None:
        friction = self.unresolved[who] + self.price_gap[who] + 0.5 * self.ignored_carts[who]
        latent = (
            8.0
            + 1.5 * (self.engagement[who] - 0.5)
            - 0.8 * self.dissatisfaction[who]
            - 1.3 * friction
            + self.rng.normal(0.0, 1.3, len(who))
        )
        score = np.clip(np.round(latent), 0, 10)
        self.low_scores[who] += np.where(score <= 6, (7 - score) / 3, 0.0)
        events.add("surveys", who, seconds, survey_type="nps", score=score)

    def _contacts(self, day: int, events: _Events) -> None:
        p, rng = self.params, self.rng
        repeat = np.flatnonzero(self.alive & (self.case_next_day == day))
        rate = (
            p.contact_rate_base
            + 0.002 * self.service
            + p.contact_rate_after_online_order * (day - self.online_order_day <= 7)
            + p.contact_rate_after_price_gap * (day - self.price_gap_day <= 7)
        )
        new = np.flatnonzero(self.alive & (self.case_next_day < 0) & (rng.random(self.n) < rate))
        self.case_id[new] = self._next_ids("case", len(new))
        self.case_contacts[new] = 0
        u = rng.random(len(new))
        reason = np.where(
            day - self.price_gap_day[new] <= 7,
            np.where(u < 0.6, "price", "product"),
            np.where(
                day - self.online_order_day[new] <= 7,
                np.where(u < 0.55, "delivery", np.where(u < 0.8, "return", "billing")),
                np.array(["product", "billing", "other", "return", "price"], dtype=object)[
                    rng.integers(5, size=len(new))
                ],
            ),
        )
        self.case_reason[new] = reason
        who = np.concatenate([repeat, new])
        if not len(who):
            return
        first = np.concatenate([np.zeros(len(repeat), bool), np.ones(len(new), bool)])
        resolved_p = np.where(first, p.first_contact_resolved, p.repeat_contact_resolved)
        resolved_p = resolved_p - 0.15 * np.isin(self.case_reason[who], ["delivery", "price"])
        resolved = rng.random(len(who)) < resolved_p
        self.case_contacts[who] += 1
        # Friction: an unresolved contact, and more so a repeated one.
        self.unresolved[who] += np.where(
            resolved, np.where(first, 0.0, 0.3), np.where(first, 1.0, 1.4)
        )
        again = (
            ~resolved
            & (self.case_contacts[who] < p.max_contacts_per_case)
            & (rng.random(len(who)) < p.repeat_contact_probability)
        )
        self.case_next_day[who] = np.where(again, day + rng.integers(1, 7, len(who)), -1)
        seconds = self._times(day, len(who))
        events.add(
            "contact_center",
            who,
            seconds,
            case_id=self.case_id[who],
            contact_channel=np.array(["phone", "chat", "email"], dtype=object)[
                rng.choice(3, size=len(who), p=[0.6, 0.3, 0.1])
            ],
            reason=self.case_reason[who].astype(object),
            resolved=resolved,
            handle_minutes=np.round(
                np.exp(rng.normal(np.log(7.0), 0.5, len(who))) * np.where(resolved, 1.0, 1.6), 1
            ),
        )
        surveyed = rng.random(len(who)) < p.ces_after_contact
        ces = np.clip(
            np.round(
                5.6
                - 2.0 * ~resolved[surveyed]
                - 0.4 * (self.case_contacts[who[surveyed]] - 1)
                - 0.3 * self.dissatisfaction[who[surveyed]]
                + rng.normal(0.0, 1.0, surveyed.sum())
            ),
            1,
            7,
        )
        self.low_scores[who[surveyed]] += np.where(ces <= 3, 0.6, 0.0)
        events.add("surveys", who[surveyed], seconds[surveyed] + 7200, survey_type="ces", score=ces)

    def _social(self, day: int, events: _Events) -> None:
        p, rng = self.params, self.rng
        friction = np.minimum(self.unresolved + self.price_gap + self.ignored_carts, 3.0)
        who = np.flatnonzero(
            self.alive
            & self.has_social
            & (rng.random(self.n) < p.social_rate_base + p.social_rate_friction * friction)
        )
        if not len(who):
            return
        complaint_p = 0.1 + 0.25 * np.minimum(friction[who], 2.0)
        u = rng.random(len(who))
        kind = np.where(
            u < complaint_p,
            "complaint",
            np.where(
                u < complaint_p + 0.2, "praise", np.where(u < complaint_p + 0.35, "dm", "mention")
            ),
        )
        low = {"complaint": -1.0, "praise": 0.3, "dm": -0.5, "mention": -0.3}
        high = {"complaint": -0.3, "praise": 1.0, "dm": 0.5, "mention": 0.6}
        sentiment = rng.uniform(np.vectorize(low.get)(kind), np.vectorize(high.get)(kind))
        events.add(
            "social",
            who,
            self._times(day, len(who)),
            interaction_type=kind.astype(object),
            sentiment=np.round(sentiment, 2),
        )

    def _churn(self, day: int) -> None:
        alive = np.flatnonzero(self.alive)
        churned = alive[self.rng.random(len(alive)) < self.hazard(day)[alive]]
        self.alive[churned] = False
        self.churn_day[churned] = day
        self.case_next_day[churned] = -1
        self.recovery_day[churned] = -1


# ---- price observations: the world's prices as a retailer logs them (own random stream) ------


def observe_prices(
    world: _World, events: _Events, days: range, rng: np.random.Generator
) -> _Events:
    """The ``price_observations`` rows of one month of simulated ``events``.

    The weekly price feed shows every product on web, app and a store shelf (no customer); a
    share of the price-showing product views (the session's device, the email when logged in)
    and of the store receipts of card holders (card scanned) are logged with the customer. Only
    reads ``events`` and draws only from ``rng``, so the other feeds are unchanged by it.
    """
    p = world.params
    out = _Events()
    products = np.arange(p.product_count)
    no_slot = np.zeros(p.product_count, np.int64)
    no_flag = np.zeros(p.product_count, bool)
    for day in days:
        if day % p.price_feed_every_days:
            continue
        for channel, price in (
            ("web", world.web_price),
            ("app", world.web_price),
            ("store", world.store_price),
        ):
            stores = rng.integers(1, 60, p.product_count)
            out.add(
                "price_observations",
                np.full(p.product_count, -1),
                day * SECONDS_PER_DAY + rng.integers(5 * 3600, 9 * 3600, p.product_count),
                channel=np.full(p.product_count, channel, dtype=object),
                product_id=products,
                price=price,
                store_id=np.array(
                    [f"S{s:03d}" if channel == "store" else None for s in stores], dtype=object
                ),
                _device_slot=no_slot,
                _logged_in=no_flag,
                _card=no_flag,
            )
    sessions = events.frame("web_sessions")
    if not sessions.empty:
        views = sessions[
            (sessions["event_type"] == "product_view")
            & sessions["price_seen"].notna().to_numpy()
            & (rng.random(len(sessions)) < p.price_observed_view_share)
        ]
        out.add(
            "price_observations",
            views["_person"].to_numpy(),
            views["_seconds"].to_numpy(),
            channel=views["channel"].to_numpy(dtype=object),
            product_id=views["product_id"].to_numpy(),
            price=views["price_seen"].to_numpy(dtype=np.float64),
            store_id=np.full(len(views), None, dtype=object),
            _device_slot=views["_device_slot"].to_numpy().astype(np.int64),
            _logged_in=views["_logged_in"].to_numpy().astype(bool),
            _card=np.zeros(len(views), bool),
        )
    sales = events.frame("pos_sales")
    if not sales.empty:
        person = sales["_person"].to_numpy()
        receipts = sales[
            ~sales["is_return"].to_numpy().astype(bool)
            & world.has_card[person]
            & (rng.random(len(sales)) < p.price_observed_receipt_share)
        ]
        out.add(
            "price_observations",
            receipts["_person"].to_numpy(),
            receipts["_seconds"].to_numpy(),
            channel=np.full(len(receipts), "store", dtype=object),
            product_id=receipts["product_id"].to_numpy(),
            price=receipts["unit_price"].to_numpy(dtype=np.float64),
            store_id=receipts["store_id"].to_numpy(dtype=object),
            _device_slot=np.zeros(len(receipts), np.int64),
            _logged_in=np.zeros(len(receipts), bool),
            _card=np.ones(len(receipts), bool),
        )
    return out


# ---- writing: identifiers, text, dirt, duplicates (per feed per month) ----------------------

# Feeds written month by month from simulated events. The CRM export is one extra file
# (``crm_attributes/crm_attributes.csv``); ``price_observations`` is written month by month
# too, from its own random stream (see :func:`observe_prices`); ``transactions`` (imported order
# logs) is not simulated.
MONTHLY_FEEDS: tuple[str, ...] = (
    "pos_sales",
    "web_orders",
    "web_sessions",
    "email_events",
    "sms_events",
    "contact_center",
    "social",
    "surveys",
    "consents",
    "loyalty_members",
    "campaign_history",
)

_KEY_PREFIX = {
    "pos_sales": "POS",
    "web_orders": "WO",
    "web_sessions": "WS",
    "email_events": "EM",
    "sms_events": "SM",
    "contact_center": "CC",
    "social": "SO",
    "surveys": "SV",
    "consents": "CN",
    "campaign_history": "CH",
    "price_observations": "PO",
}
# Share of rows in which a source system records the person's identifier (when the person has one).
_ID_PRESENCE: dict[str, dict[str, float]] = {
    "pos_sales": {"loyalty_card": 0.85, "phone": 0.07, "email": 0.18},
    "web_orders": {"email": 0.97, "phone": 0.35, "loyalty_card": 0.25},
    "web_sessions": {},
    "email_events": {"email": 1.0},
    "sms_events": {"phone": 1.0},
    "contact_center": {"phone": 0.75, "email": 0.45, "loyalty_card": 0.1},
    "social": {"handle": 1.0, "email": 0.15},
    "surveys": {"email": 0.8, "phone": 0.25},
    "consents": {"loyalty_card": 0.3},
    "loyalty_members": {"email": 0.9, "phone": 0.8},
    "campaign_history": {"email": 0.9, "phone": 0.5, "loyalty_card": 0.7},
}


class _Writer:
    """Turns a month of events into contract CSV files, with noise, dirt and duplicates."""

    def __init__(
        self,
        persons: pd.DataFrame,
        settings: Settings,
        start: date,
        params: WorldParameters,
        rng: np.random.Generator,
    ) -> None:
        self.start, self.params, self.rng = start, params, rng
        self.raw_dir = settings.raw_dir
        self.dirty_share = settings.simulation.dirty_row_share
        self.carry: dict[str, pd.DataFrame] = {}
        self.counters: dict[str, int] = defaultdict(int)
        self.rows_per_feed: dict[str, int] = dict.fromkeys(FEEDS, 0)
        self.dirty_by_kind: dict[str, int] = dict.fromkeys(DIRTY_KINDS, 0)
        self.duplicates = 0
        self.duplicates_next_month = 0
        self.files = 0
        self.person_ids = persons["person_id"].to_numpy()
        self.emails = email_variants(persons["email"])
        self.phones = phone_variants(persons["phone_national"])
        self.cards = persons["loyalty_card"].to_numpy()
        self.handles = persons["social_handle"].to_numpy()
        self.devices = persons[["device_id_1", "device_id_2"]].to_numpy()
        settings.truth_dir.mkdir(parents=True, exist_ok=True)
        schema = pa.schema(
            [
                ("feed", pa.string()),
                ("record_key", pa.string()),
                ("person_id", pa.string()),
                ("dirty_kind", pa.string()),
                ("file", pa.string()),
            ]
        )
        self.records = pq.ParquetWriter(settings.truth_dir / "records.parquet", schema)

    def close(self) -> None:
        self.records.close()

    def write_price_observations(
        self, month: str, events: _Events, last: bool, rng: np.random.Generator
    ) -> None:
        """Write the month's ``price_observations``, drawing identifiers, dirt and duplicates
        from ``rng`` rather than the writer's own stream: the other feeds stay byte-identical."""
        own, self.rng = self.rng, rng
        try:
            self.write_month(month, events, last, feeds=("price_observations",))
        finally:
            self.rng = own

    def write_month(
        self, month: str, events: _Events, last: bool, feeds: tuple[str, ...] = MONTHLY_FEEDS
    ) -> None:
        """Write every feed with rows this month (plus last month's late duplicates)."""
        for name in feeds:
            feed = FEEDS[name]
            frame = events.frame(name)
            carried = self.carry.pop(name, None)
            if frame.empty and carried is None:
                continue
            if frame.empty:
                text, kinds = pd.DataFrame(columns=list(feed.columns)), np.array([], object)
            else:
                text, kinds = self._contract_frame(feed, frame)
            same, later = pick_duplicates(
                len(text),
                kinds == "",
                self.params.duplicate_row_share,
                0.0 if last else self.params.duplicate_next_month_share,
                self.rng,
            )
            if len(later):
                self.carry[name] = text.iloc[later]
            self.duplicates += len(same) + len(later)
            self.duplicates_next_month += len(later)
            # An exact copy of the line right after the original, as a retried export would do.
            repeat = np.ones(len(text), np.int64)
            repeat[same] = 2
            output = text.iloc[np.repeat(np.arange(len(text)), repeat)]
            if carried is not None:
                output = pd.concat([output, carried], ignore_index=True)
            path = self.raw_dir / name / f"{name}_{month}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(csv_text(output), encoding="utf-8")
            self.files += 1
            self.rows_per_feed[name] += len(output)
            if not frame.empty:
                relative = str(path.relative_to(self.raw_dir))
                self.records.write_table(
                    pa.table(
                        {
                            "feed": pa.array([name] * len(text), pa.string()),
                            "record_key": pa.array(
                                text[feed.key].to_numpy(dtype=object), pa.string()
                            ),
                            "person_id": pa.array(self._person_ids(frame), pa.string()),
                            "dirty_kind": pa.array(np.where(kinds == "", None, kinds), pa.string()),
                            "file": pa.array([relative] * len(text), pa.string()),
                        }
                    )
                )

    def _person_ids(self, frame: pd.DataFrame) -> np.ndarray:
        """The true person of each row; ``None`` for rows of no person (the price feed)."""
        person = frame["_person"].to_numpy().astype(np.int64)
        return np.where(person >= 0, self.person_ids[np.maximum(person, 0)], None)

    def write_crm_attributes(self, persons: pd.DataFrame, joined: np.ndarray) -> None:
        """A CRM export of the persons who joined: plan, region and age band (static rows).

        The plan leans on the person's value level (premium members spend more), so the CRM
        columns carry some signal for the models, as a real CRM's would.
        """
        people = np.flatnonzero(joined)
        if not len(people):
            return
        rank = pd.Series(persons["value_level"].to_numpy()[people]).rank(pct=True).to_numpy()
        noisy = np.clip(rank + self.rng.normal(0.0, 0.15, len(people)), 0.0, 1.0)
        plan = np.select([noisy > 0.8, noisy > 0.5], ["premium", "plus"], "basic")
        age = self.start.year - persons["birth_year"].to_numpy()[people]
        bands = np.array(["18-24", "25-34", "35-44", "45-54", "55-64", "65+"], dtype=object)
        band = bands[np.searchsorted([25, 35, 45, 55, 65], age, side="right")]
        cards = self.cards[people]
        text = pd.DataFrame(
            {
                "crm_id": _coded("CRM", 9, np.arange(len(people))),
                "email": self._identifier_values("email", people, np.ones(len(people), bool)),
                "loyalty_card": cards,
                "plan": plan,
                "region": persons["region"].to_numpy()[people],
                "age_band": band,
            }
        )
        path = self.raw_dir / "crm_attributes" / "crm_attributes.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(csv_text(text), encoding="utf-8")
        self.files += 1
        self.rows_per_feed["crm_attributes"] = len(text)
        self.records.write_table(
            pa.table(
                {
                    "feed": pa.array(["crm_attributes"] * len(text), pa.string()),
                    "record_key": pa.array(text["crm_id"].to_numpy(dtype=object), pa.string()),
                    "person_id": pa.array(self.person_ids[people], pa.string()),
                    "dirty_kind": pa.array([None] * len(text), pa.string()),
                    "file": pa.array([str(path.relative_to(self.raw_dir))] * len(text)),
                }
            )
        )

    def _contract_frame(self, feed: Feed, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The month's rows of one feed as contract text columns, then spoiled a little."""
        person = frame["_person"].to_numpy()
        count = len(frame)
        out: dict[str, np.ndarray] = {}
        if feed.key == "card_number":
            out["card_number"] = self.cards[person]
        else:
            first = self.counters[feed.name]
            self.counters[feed.name] += count
            out[feed.key] = _coded(_KEY_PREFIX[feed.name], 9, np.arange(first, first + count))
        out[feed.time_column] = format_timestamps(
            frame["_seconds"].to_numpy(), self.start, self.rng
        )
        for column, id_type in feed.id_columns.items():
            if column != feed.key:
                out[column] = self._identifier(feed.name, column, id_type, frame, person)
        self._at_least_one_identifier(feed.name, out, person)
        for column, spec in feed.columns.items():
            if column in out:
                continue
            values = frame[column].to_numpy() if column in frame else np.full(count, None)
            if column in _CODED_COLUMNS:
                prefix, width = _CODED_COLUMNS[column]
                out[column] = _coded(prefix, width, np.where(pd.isna(values), -1, values))
            else:
                out[column] = to_text(spec, values)
        text = pd.DataFrame({column: out[column] for column in feed.columns})
        text, kinds = inject_dirty_rows(text, feed, self.dirty_share, self.rng)
        for kind, kind_count in zip(
            *np.unique(kinds[kinds != ""], return_counts=True), strict=True
        ):
            self.dirty_by_kind[kind] += int(kind_count)
        return text, kinds

    def _identifier(
        self, feed: str, column: str, id_type: str, frame: pd.DataFrame, person: np.ndarray
    ) -> np.ndarray:
        """The identifier a source system holds for each row, or ``None`` when it has none."""
        rng, count = self.rng, len(person)
        if id_type == "device_id":
            slot = frame["_device_slot"].to_numpy().astype(np.int64)
            keep = (slot > 0) & ((feed == "web_sessions") | (rng.random(count) < 0.75))
            return np.where(keep, self.devices[person, np.maximum(slot - 1, 0)], None)
        if feed == "consents" and id_type in ("email", "phone"):
            own_channels = ["email", "app"] if id_type == "email" else ["sms", "call_center"]
            keep = np.isin(frame["channel"].to_numpy(), own_channels) | (rng.random(count) < 0.2)
        elif feed in ("web_sessions", "price_observations") and id_type == "email":
            keep = frame["_logged_in"].to_numpy().astype(bool)
        elif feed == "price_observations":
            keep = frame["_card"].to_numpy().astype(bool)  # a receipt scanned with the card
        else:
            keep = rng.random(count) < _ID_PRESENCE[feed].get(column, 0.0)
        return self._identifier_values(id_type, person, keep)

    def _identifier_values(self, id_type: str, person: np.ndarray, keep: np.ndarray) -> np.ndarray:
        out = np.full(len(person), None, dtype=object)
        rows = person[keep]
        if id_type == "email":
            out[keep] = pick_variants(self.emails, rows, EMAIL_VARIANT_SHARES, self.rng)
        elif id_type == "phone":
            out[keep] = pick_variants(self.phones, rows, PHONE_FORMAT_SHARES, self.rng)
        elif id_type == "loyalty_card":
            out[keep] = self.cards[rows]
        elif id_type == "social_handle":
            out[keep] = self.handles[rows]
        return out

    def _at_least_one_identifier(
        self, feed: str, out: dict[str, np.ndarray], person: np.ndarray
    ) -> None:
        """Contacts, surveys and campaign sends always carry a way to reach the person."""
        fallback = {"contact_center": "phone", "surveys": "email", "campaign_history": "email"}
        if feed not in fallback:
            return
        id_columns = list(FEEDS[feed].id_columns)
        missing = np.all([pd.isna(out[c]) for c in id_columns], axis=0)
        column = fallback[feed]
        out[column][missing] = self._identifier_values(
            column, person[missing], np.ones(missing.sum(), bool)
        )


_CODED_COLUMNS: dict[str, tuple[str, int]] = {
    "product_id": ("SKU", 5),
    "case_id": ("CASE", 8),
    "session_id": ("SES", 9),
}


# ---- the public entry point -----------------------------------------------------------------


def simulate(
    settings: Settings,
    customers: int | None = None,
    months: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> SimulationSummary:
    """Simulate the retailer and write its raw feeds and the ground truth (replacing old ones).

    Args:
        settings: paths (``raw_dir``, ``truth_dir``), ``simulation.*`` defaults, the actions.
        customers / months / seed: override ``settings.simulation``.
        progress: show a progress bar over the simulated days.

    Returns:
        A summary of the rows, dirt and duplicates written.
    """
    sim = settings.simulation
    customers = sim.customers if customers is None else customers
    months = sim.months if months is None else months
    seed = sim.seed if seed is None else seed
    if customers < 1 or months < 1:
        raise ValueError(
            f"simulate needs at least 1 customer and 1 month, got {customers=}, {months=}"
        )
    actions = settings.actions
    if not action_channel_pairs(actions):
        raise ValueError("settings.actions has no deliverable action: check configs/actions.yaml")
    start = sim.start_date
    end = (pd.Timestamp(start) + pd.DateOffset(months=months)).date()
    params = world_parameters(sim)

    for folder in (settings.raw_dir, settings.truth_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    # Spawned children are keyed by their index: adding the fifth (price observations) leaves
    # the first four, and so every other feed, unchanged.
    person_rng, effect_rng, world_rng, output_rng, price_rng = np.random.default_rng(seed).spawn(5)
    persons = draw_persons(person_rng, customers, start, months, params)
    pairs = action_channel_pairs(actions)
    effects = true_treatment_effects(persons, actions, effect_rng)
    effect_matrix = effects["effect"].to_numpy().reshape(len(pairs), customers).T
    world = _World(persons, effect_matrix, pairs, start, params, world_rng)
    writer = _Writer(persons, settings, start, params, output_rng)

    days = pd.date_range(start, end, inclusive="left")
    events = _Events()
    month_first_day = 0
    try:
        for day, timestamp in enumerate(
            tqdm(days, desc="simulating", unit="day", disable=not progress)
        ):
            world.step(day, timestamp.date(), events)
            last_day = day == len(days) - 1
            if last_day or days[day + 1].month != timestamp.month:
                writer.write_month(f"{timestamp:%Y-%m}", events, last=last_day)
                prices = observe_prices(world, events, range(month_first_day, day + 1), price_rng)
                writer.write_price_observations(
                    f"{timestamp:%Y-%m}", prices, last=last_day, rng=price_rng
                )
                events = _Events()
                month_first_day = day + 1
        writer.write_crm_attributes(persons, persons["join_day"].to_numpy() < len(days))
    finally:
        writer.close()

    churned_at = pd.Series(pd.NaT, index=persons.index, dtype="datetime64[ns]")
    has_churned = world.churn_day >= 0
    churned_at[has_churned] = pd.Timestamp(start) + pd.to_timedelta(
        world.churn_day[has_churned], unit="D"
    )
    truth = persons.drop(columns=["join_day"]).assign(churned_at=churned_at)
    truth = truth[
        ["person_id", "joined_at", "churned_at"]
        + [c for c in truth.columns if c not in ("person_id", "joined_at", "churned_at")]
    ]
    truth.to_parquet(settings.truth_dir / "persons.parquet", index=False)
    effects.to_parquet(settings.truth_dir / "treatment_effects.parquet", index=False)

    summary = SimulationSummary(
        seed=seed,
        persons=customers,
        start=start,
        end=end,
        rows_per_feed=writer.rows_per_feed,
        files_written=writer.files,
        dirty_rows=sum(writer.dirty_by_kind.values()),
        dirty_rows_by_kind=writer.dirty_by_kind,
        duplicate_rows=writer.duplicates,
        duplicate_rows_next_month=writer.duplicates_next_month,
        churned_persons=int(has_churned.sum()),
        raw_dir=settings.raw_dir,
        truth_dir=settings.truth_dir,
    )
    (settings.truth_dir / "simulation.json").write_text(
        json.dumps(
            summary.model_dump(mode="json", exclude={"raw_dir", "truth_dir"})
            | {
                "dirty_row_share": sim.dirty_row_share,
                "duplicate_row_share": params.duplicate_row_share,
                "campaign_treated_share": params.campaign_treated_share,
                "campaign_control_share": params.campaign_control_share,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    return summary


def load_truth(settings: Settings) -> dict[str, pd.DataFrame]:
    """The ground-truth tables (for tests and benchmarks; the product must never call this)."""
    folder = settings.truth_dir
    if not (folder / "persons.parquet").exists():
        raise FileNotFoundError(f"no simulation in {folder}: run `omniretain simulate` first")
    return {
        name: pd.read_parquet(folder / f"{name}.parquet")
        for name in ("persons", "records", "treatment_effects")
    }
