"""Churn drivers (reason codes): which features raised a customer's score, in plain words.

The churn model's per-feature contributions (log-odds) say *which* features pushed a customer's
score up; a store manager or a CRM agent needs that as a sentence about the customer ("no
purchase for 140 days"), not as a column name. Known features get a template; any other feature
falls back to its name made readable, with its value, so a new feature from the feature builder
is never silently dropped from the explanation.

Two ways to compute the contributions, both exact decompositions of the raw score (they sum,
with the bias, to the booster's log-odds):

- ``path`` (served by default): path attribution (Saabas, as in ``treeinterpreter``). Along the
  path a row takes through a tree, every split changes the node value; that change is credited
  to the split's feature. The path is fixed by the leaf, so each leaf's contribution vector is
  precomputed once per booster from ``dump_model()`` (:class:`PathAttribution`); a request asks
  LightGBM for the leaf of each tree (``pred_leaf``, its own traversal: missing values and
  categorical splits exactly as in scoring) and sums one table row per tree: about 0.2 ms for
  the 300-tree churn model, against about 2 ms for TreeSHAP.
- ``treeshap``: LightGBM ``pred_contrib`` (TreeSHAP), which also credits features *off* the path
  (interaction effects spread fairly). ``serving.reasons: treeshap`` in the configuration serves
  it (``CalibratedClassifier.contributions``). Batch scoring follows the same setting
  (:func:`contributions`), so both give the same words for the same customer.

Only the top 3 positive drivers are shown; on the demo state the two agree on most customers'
top 3 (``benchmarks/latency.py`` measures and prints the agreement; docs/api.md has figures).
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Literal

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


ReasonMethod = Literal["path", "treeshap"]


class PathAttribution:
    """Path attribution (Saabas) of a LightGBM booster, precomputed per leaf.

    For every leaf of every tree, the vector of node-value changes along its path, credited to
    the split features, is one row of ``table`` (leaves x features); the root values summed are
    the bias. A row's contributions are then the sum of the table rows of the leaves it reaches:
    O(trees) NumPy work, no tree walk in Python. Built once per booster (``dump_model`` of the
    trees used: about 0.2 s for 300 trees); read-only afterwards, hence thread-safe.
    """

    def __init__(self, booster: Any, num_iteration: int | None, n_features: int) -> None:
        iterations = num_iteration if num_iteration and num_iteration > 0 else -1
        dump = booster.dump_model(num_iteration=iterations)
        trees = [info["tree_structure"] for info in dump["tree_info"]]
        leaf_counts = [int(info["num_leaves"]) for info in dump["tree_info"]]
        self.n_features = n_features
        self.offsets = np.concatenate([[0], np.cumsum(leaf_counts)[:-1]]).astype(np.int64)
        self.table = np.zeros((int(sum(leaf_counts)), n_features), dtype=np.float64)
        bias = 0.0
        for offset, root in zip(self.offsets.tolist(), trees, strict=True):
            bias += _node_value(root)
            stack = [(root, np.zeros(n_features))]
            while stack:
                node, path = stack.pop()
                if "leaf_value" in node or "split_feature" not in node:
                    self.table[offset + int(node.get("leaf_index", 0))] = path
                    continue
                value, feature = _node_value(node), int(node["split_feature"])
                for child in (node["left_child"], node["right_child"]):
                    child_path = path.copy()
                    child_path[feature] += _node_value(child) - value
                    stack.append((child, child_path))
        self.bias = bias

    def __call__(self, leaves: np.ndarray) -> np.ndarray:
        """Contributions of rows given their leaf per tree ((rows x trees), LightGBM's
        ``pred_leaf``): (rows x (features + 1)), the last column the bias, as ``pred_contrib``."""
        leaves = np.asarray(leaves, dtype=np.int64).reshape(-1, len(self.offsets))
        out = np.empty((leaves.shape[0], self.n_features + 1), dtype=np.float64)
        out[:, -1] = self.bias
        chunk = 128  # rows gathered at once: (chunk x trees x features) floats, ~20 MB at most
        for start in range(0, leaves.shape[0], chunk):
            rows = self.table[leaves[start : start + chunk] + self.offsets]
            out[start : start + chunk, :-1] = rows.sum(axis=1)
        return out


def _node_value(node: Mapping[str, Any]) -> float:
    """The output of a node of ``dump_model()``: a leaf's value or a split node's internal one."""
    return float(node["leaf_value"] if "leaf_value" in node else node["internal_value"])


_ATTRIBUTIONS: weakref.WeakKeyDictionary[Any, dict[int, PathAttribution]] = (
    weakref.WeakKeyDictionary()
)
_ATTRIBUTIONS_LOCK = threading.Lock()


def path_attribution(model: Any) -> PathAttribution:
    """The :class:`PathAttribution` of a classifier's booster (per model object: a new champion
    gets its own; the old one goes with its booster)."""
    key = int(model.best_iteration or -1)
    with _ATTRIBUTIONS_LOCK:
        per_booster = _ATTRIBUTIONS.setdefault(model.booster, {})
        attribution = per_booster.get(key)
        if attribution is None:
            attribution = PathAttribution(
                model.booster, model.best_iteration, len(model.feature_names)
            )
            per_booster[key] = attribution
    return attribution


def path_contributions(model: Any, matrix: np.ndarray) -> np.ndarray:
    """Path-attribution contributions of a classifier with a LightGBM booster, shaped like
    ``pred_contrib`` ((rows x (features + 1)), bias last, summing to the raw score)."""
    from serving.models import leaves_one

    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim == 1 or matrix.shape[0] == 1:  # one row: LightGBM's single-row fast path
        leaves = leaves_one(model, matrix)
    else:
        leaves = model.booster.predict(
            matrix, pred_leaf=True, num_iteration=model.best_iteration, num_threads=1
        )
    return path_attribution(model)(leaves)


class ContributionCache:
    """The churn model's contributions per (model version, feature vector), LRU.

    ``method`` ``path`` (default) is path attribution (about 0.2 ms a row), ``treeshap`` is
    LightGBM's TreeSHAP (about 2 ms a row, more than the rest of a decision). Either way the
    same customer asked again with unchanged features (a page reload, the call centre and the
    app in the same minute) gets the same contributions from here, exactly. The key is the
    model version and the raw bytes of the float64 row the model scores, so a changed feature
    or a new champion always recomputes. Thread-safe (a lock around the dict).
    """

    def __init__(self, max_entries: int = 50_000, method: ReasonMethod = "path") -> None:
        self.max_entries = max_entries
        self.method = method
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
        values = contributions(champion.model, row, self.method)[0, :-1]  # last column: bias
        named = dict(zip(champion.model.feature_names, values.tolist(), strict=True))
        with self._lock:
            self.misses += 1
            self._entries[key] = named
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return named


def contributions(model: Any, matrix: np.ndarray, method: ReasonMethod = "path") -> np.ndarray:
    """Per-feature contributions (log-odds, bias last) of the churn model by ``method``.

    A model without a LightGBM booster (a test double, a future model kind) gets its own
    ``contributions`` whatever the method.
    """
    if not hasattr(model, "booster"):
        return np.asarray(model.contributions(matrix))
    if method == "path":
        return path_contributions(model, matrix)
    if np.asarray(matrix).shape[0] == 1:  # LightGBM's single-row fast path
        from serving.models import contributions_one

        return contributions_one(model, matrix)
    return np.asarray(model.contributions(matrix))
