"""Plain-language wording for churn drivers (reason codes).

The churn model's per-feature contributions (LightGBM ``pred_contrib``, log-odds) say *which*
features pushed a customer's score up; a store manager or a CRM agent needs that as a sentence
about the customer ("no purchase for 140 days"), not as a column name. Known features get a
template; any other feature falls back to its name made readable, with its value, so a new
feature from the feature builder is never silently dropped from the explanation.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from features.contract import PURCHASE_CHANNELS

Wording = Callable[[float], str]

NO_ABANDONED_CART_HOURS = 99999.0  # the feature builder's value for "no abandoned cart"


def _count(value: float) -> str:
    """A count or amount without a pointless ``.0``."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _plural(value: float, singular: str, plural: str | None = None) -> str:
    return f"{_count(value)} {singular if value == 1 else (plural or singular + 's')}"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _days_since_last_purchase(value: float) -> str:
    return f"no purchase for {_plural(value, 'day')}"


def _hours_since_cart(value: float) -> str:
    if value >= NO_ABANDONED_CART_HOURS:
        return "no abandoned cart on record"
    if value < 48:
        return f"abandoned a cart {_plural(value, 'hour')} ago"
    return f"abandoned a cart {_plural(round(value / 24), 'day')} ago"


def _consent(channel: str) -> Wording:
    def wording(value: float) -> str:
        return f"{'has' if value >= 1 else 'has not'} given consent to {channel}"

    return wording


def _share(value: float) -> str:
    return f"{value:.0%}"


FEATURE_WORDING: dict[str, Wording] = {
    "days_since_last_purchase": _days_since_last_purchase,
    "days_since_last_session": lambda v: f"no web or app visit for {_plural(v, 'day')}",
    "tenure_days": lambda v: f"a customer for {_plural(v, 'day')}",
    "purchases_90d": lambda v: f"{_plural(v, 'purchase')} in the last 90 days",
    "purchase_trend_90d": lambda v: (
        f"{_plural(abs(v), 'purchase')} {'more' if v >= 0 else 'fewer'} than in the 90 days before"
    ),
    "spend_365d": lambda v: f"spent {_money(v)} in the last 365 days",
    "channel_breadth_90d": lambda v: f"used {_plural(v, 'channel')} in the last 90 days",
    "open_cases": lambda v: f"{_plural(v, 'unresolved service case')}",
    "unresolved_contacts_90d": lambda v: (
        f"{_plural(v, 'unresolved contact')} with customer service in the last 90 days"
    ),
    "repeat_contacts_7d": lambda v: f"had to contact customer service again {_plural(v, 'time')}",
    "abandoned_carts_30d": lambda v: f"{_plural(v, 'abandoned cart')} in the last 30 days",
    "ignored_abandoned_carts_90d": lambda v: (
        f"{_plural(v, 'abandoned cart')} not bought afterwards in the last 90 days"
    ),
    "hours_since_last_abandoned_cart": _hours_since_cart,
    "contacts_30d": lambda v: f"{_plural(v, 'contact')} with customer service in the last 30 days",
    "contacts_90d": lambda v: f"{_plural(v, 'contact')} with customer service in the last 90 days",
    "returns_365d": lambda v: f"{_plural(v, 'return')} in the last 365 days",
    "return_rate_365d": lambda v: f"returned {_share(v)} of orders in the last 365 days",
    "last_nps": lambda v: f"last NPS answer {_count(v)} out of 10",
    "last_ces": lambda v: f"last customer effort score {_count(v)} out of 7",
    "social_complaints_90d": lambda v: f"{_plural(v, 'complaint')} on social media in 90 days",
    "email_open_rate_90d": lambda v: f"opened {_share(v)} of emails in the last 90 days",
    "unsubscribed": lambda v: "unsubscribed from email or SMS" if v >= 1 else "still subscribed",
    "consent_email": _consent("email"),
    "consent_sms": _consent("SMS"),
    "consent_app": _consent("app notifications"),
    "consent_call_center": _consent("calls"),
}

for _channel in PURCHASE_CHANNELS:
    FEATURE_WORDING[f"days_since_last_purchase_{_channel}"] = lambda v, channel=_channel: (
        f"no {channel} purchase for {_plural(v, 'day')}"
    )
FEATURE_WORDING["historic_clv"] = lambda v: f"spent {_money(v)} in total so far"
FEATURE_WORDING["nps_change"] = lambda v: f"NPS answer changed by {v:+.0f} points"

_WINDOW = re.compile(r"^(?P<stem>.+?)_(?P<days>\d+)d(?:_(?P<suffix>[a-z_]+))?$")


def readable_feature_name(feature_name: str) -> str:
    """``spend_90d_web`` -> ``spend in the last 90 days (web)``; other names lose underscores."""
    match = _WINDOW.match(feature_name)
    if match:
        words = f"{match['stem'].replace('_', ' ')} in the last {match['days']} days"
        return f"{words} ({match['suffix'].replace('_', ' ')})" if match["suffix"] else words
    return feature_name.replace("_", " ")


def describe_feature(
    feature_name: str, value: float | None, wording: Mapping[str, Wording] | None = None
) -> str:
    """One plain sentence fragment about a feature's value for this customer."""
    templates = FEATURE_WORDING if wording is None else wording
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{readable_feature_name(feature_name)}: unknown"
    template = templates.get(feature_name)
    if template is not None:
        return template(float(value))
    return f"{readable_feature_name(feature_name)}: {_count(float(value))}"


def top_churn_drivers(
    contributions: Mapping[str, float],
    features: Mapping[str, float],
    limit: int = 3,
    wording: Mapping[str, Wording] | None = None,
) -> list[str]:
    """The ``limit`` features that raised the churn score most, worded for a person.

    Only positive contributions count: a feature that lowered the risk is no reason to act.
    Ties are broken by feature name so the same customer always gets the same explanation.
    """
    positive = [
        (name, contribution)
        for name, contribution in contributions.items()
        if contribution > 0 and math.isfinite(contribution)
    ]
    positive.sort(key=lambda item: (-item[1], item[0]))
    return [describe_feature(name, features.get(name), wording) for name, _ in positive[:limit]]


class ContributionCache:
    """The churn model's TreeSHAP contributions per (model version, feature vector), LRU.

    TreeSHAP (LightGBM ``pred_contrib``) costs about 2 ms per row, more than the rest of a
    decision; the same customer asked again with unchanged features (a page reload, the call
    centre and the app in the same minute) gets the same contributions from here, exactly.
    The key is the model version and the raw bytes of the float64 row the model scores, so a
    changed feature or a new champion always recomputes. Thread-safe (a lock around the dict).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes], dict[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, champion: Any, row: np.ndarray) -> dict[str, float]:
        """Feature name -> contribution (bias excluded) of ``champion.model`` for ``row``."""
        key = (str(champion.version), row.tobytes())
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return cached
        from serving.models import contributions_one

        model = champion.model
        if len(row) == 1 and hasattr(model, "booster"):  # LightGBM's single-row fast path
            values = contributions_one(model, row)[0, :-1]  # the last column is the bias
        else:
            values = model.contributions(row)[0, :-1]
        contributions = dict(zip(model.feature_names, values.tolist(), strict=True))
        with self._lock:
            self.misses += 1
            self._entries[key] = contributions
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return contributions
