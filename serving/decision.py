"""The next-best-action decision: which action, on which channel, is worth its cost.

Plain functions, no server and no heavy imports: this runs on every request, after the two model
scores are known. The rules, in order:

1. **Eligibility** (business rules, not model output):
   - the action's own ``eligibility`` rules of the catalogue (``configs/actions.yaml``), all of
     which must hold; a missing (NaN) feature fails its rule. Shipped: ``service_callback`` needs
     an open service case (``open_cases > 0``), ``cart_reminder`` an abandoned cart in the last
     72 hours (``hours_since_last_abandoned_cart <= 72``), ``loyalty_points`` a loyalty member
     (``loyalty_member == 1``: double points reward nobody without a card);
   - the contact policy (:mod:`serving.policy`) may hold an action back (its cooldown);
   - a *retention* action needs a customer at risk: the retainable risk at least
     ``DecisionContext.at_risk_threshold`` (the lower edge of the "medium" risk band). Spending
     a retention budget on a customer who is not at risk is the classic waste of churn
     programmes: even with a positive expected value on paper, the uplift prior is not
     calibrated for loyal customers;
   - a *growth* action needs a growth reason: its own rule when it has one (the abandoned cart
     for ``cart_reminder``); a growth action without a rule is always eligible and must earn its
     place through its expected value. A customer who is neither at risk nor has a growth reason
     therefore gets ``no_action``.
2. **Consent** and **contact policy**: a channel with a consent feature (``email``, ``sms``,
   ``app``, ``call_center``) is used only when that feature is exactly 1; ``store`` and ``web``
   need none (the offer is shown at the next visit). Any other channel is refused (fail
   closed): we never contact a customer on a channel whose consent we cannot check. The
   contact policy may then hold a consented channel back too (caps, cooldown after a contact,
   quiet hours); it never opens one.
3. **Expected value** of each eligible (action, channel), in currency over the horizon:
   - retention: ``retainable_risk x reach x uplift x customer_value - cost`` (the value we keep
     by lowering the churn probability by ``uplift``). The retainable risk
     (:func:`retainable_risk`) is P(churn) of a customer still active, 0 for one whose last
     purchase and last web/app session are both older than the churn window
     (``DecisionContext.active_within_days``): P(no purchase in the next 90 days) is highest
     for customers who are already gone, and no contact retains them (measured on the
     simulator, docs/models.md: the churn score correlates -0.09 with the true retainable risk,
     the retainable risk +0.20). ``reach`` is the share of the channel's messages the customer
     reads (:func:`channel_reach`: the email open rate for email, 1 elsewhere);
   - growth: ``(1 - repurchase_probability) x reach x uplift x customer_value - cost``: a
     customer who would buy anyway gains nothing from a nudge, so only the share who would
     *not* repurchase can be moved.
   ``uplift`` comes from ``DecisionContext.uplift`` (the catalogue's ``base_uplift``, a
   *relative* uplift: the share of the movable probability the action removes) and
   ``customer_value`` is ``spend_365d`` (floored at 0: net refunds put nothing at stake).
   An uplift model estimates the *absolute* reduction of P(churn) instead, which already says
   who can be moved (a customer who is gone or would stay anyway has ~0): with
   ``DecisionContext.uplift_is_reduction`` (:data:`MODEL_UPLIFT_CONTEXT`) the value is
   ``reduction x customer_value - cost``, with no movable share and no clip
   (:func:`uplift_matrix`).
   The channel the customer is using right now (request context) gets its uplift multiplied by
   ``DecisionContext.in_session_uplift_factor``; a cart in the request counts as a cart
   abandoned now (:func:`apply_request_context`).
4. The highest positive expected value wins; ties go to the cheaper action, then to the higher
   ``priority``, then to catalogue and channel order (the catalogue lists channels by
   preference). If none is positive: ``no_action`` with expected value 0.
5. **Control and exploration**: a customer of the stable hash-based control group
   (:func:`in_control_group`) gets ``no_action`` whatever the values; otherwise, with probability
   ``Exploration.share`` the choice is a uniformly random option among the eligible actions (each
   on its best channel) and ``no_action``, and the decision carries its ``propensity`` (the
   probability that this policy chose it) for inverse-propensity estimates later.

Everything here is pure and deterministic given its inputs (randomness comes in as numbers).
One function computes it: :func:`decide_arrays`, numpy over (customers x action-channel)
matrices. The HTTP service calls it through :func:`decide` with one customer (which adds the
reasons and alternatives a person reads); batch scoring and campaigns call it with a million.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from omniretain.settings import Action, EligibilityRule
from serving.reasons import FEATURE_WORDING, Wording, top_churn_drivers

RiskBand = Literal["low", "medium", "high"]
UpliftFunction = Callable[[Action, str, Mapping[str, float]], float]
"""(action, channel, customer features) -> absolute reduction of churn (or non-purchase)."""

NO_ACTION = "no_action"
NO_CHANNEL = "none"

MEDIUM_RISK_FROM = 0.3  # churn probability where a customer starts to be "at risk"
HIGH_RISK_FROM = 0.6
OPEN_CASE_WINDOW_S = 30 * 86400.0  # a pushed case counts as open this long (as open_cases)
IN_SESSION_UPLIFT_FACTOR = 1.5  # an offer where the customer is right now works better
ACTIVE_WITHIN_DAYS = 90.0  # a purchase this recent makes a customer retainable (churn window)

CONSENT_FEATURE_BY_CHANNEL: dict[str, str] = {
    "email": "consent_email",
    "sms": "consent_sms",
    "app": "consent_app",
    "call_center": "consent_call_center",
}
CHANNELS_WITHOUT_CONSENT: frozenset[str] = frozenset({"store", "web"})
# The share of a channel's messages this customer actually reads: an offer works only on those
# who see it. A catalogue prior on such a channel is multiplied by it (:func:`movable_share`);
# unknown (NaN) keeps the prior. Measured on the simulator (docs/models.md): +9 points of the
# oracle with the catalogue priors, because the email prior was paid for unread emails.
REACH_FEATURE_BY_CHANNEL: dict[str, str] = {"email": "email_open_rate_90d"}
# Activity that shows a customer is still there (retainable): a purchase or a web/app session.
ACTIVITY_RECENCY_FEATURES: tuple[str, ...] = ("days_since_last_purchase", "days_since_last_session")


def catalogue_uplift(action: Action, channel: str, features: Mapping[str, float]) -> float:
    """The catalogue's prior ``base_uplift``: the same for every customer and channel."""
    return action.base_uplift


@dataclass(frozen=True)
class DecisionContext:
    """Knobs of the decision that are not the customer's data; the defaults are the policy.

    Attributes:
        uplift: where the uplift of an (action, channel) comes from; plug an uplift model here.
        at_risk_threshold: retainable risk from which retention actions are allowed.
        active_within_days: a customer whose last purchase is older is gone, not retainable
            (:func:`retainable_risk`); the churn label's window (``labels.churn_window_days``).
        high_risk_threshold: churn probability of the "high" risk band (for reporting).
        in_session_uplift_factor: uplift multiplier of the channel the customer is using now.
        uplift_is_reduction: the uplift matrix holds absolute reductions of the movable
            probability (an uplift model's, :func:`uplift_matrix`): value = reduction x
            customer value - cost, not movable share x uplift x customer value - cost.
        max_alternatives: how many runner-up actions to return.
        max_drivers: how many churn drivers to put in the reasons.
        wording: feature name -> wording of its value, for the reasons.
    """

    uplift: UpliftFunction = catalogue_uplift
    at_risk_threshold: float = MEDIUM_RISK_FROM
    active_within_days: float = ACTIVE_WITHIN_DAYS
    high_risk_threshold: float = HIGH_RISK_FROM
    in_session_uplift_factor: float = IN_SESSION_UPLIFT_FACTOR
    uplift_is_reduction: bool = False
    max_alternatives: int = 3
    max_drivers: int = 3
    wording: Mapping[str, Wording] = field(default_factory=lambda: FEATURE_WORDING)


DEFAULT_CONTEXT = DecisionContext()
# With a per-customer uplift model the at-risk gate goes: the model's reduction already says who
# can be moved, and the gate (which protects the catalogue's flat prior) shuts out most of the
# customers worth keeping (measured on the simulator: docs/models.md). Its uplift matrix holds
# absolute reductions (:func:`uplift_matrix`), valued as they are.
MODEL_UPLIFT_CONTEXT = DecisionContext(at_risk_threshold=0.0, uplift_is_reduction=True)


class Alternative(BaseModel):
    """A runner-up: what else could be done, and what it is worth."""

    action: str
    channel: str
    expected_value: float


class Decision(BaseModel):
    """The next best action for one customer, with the why."""

    action: str
    channel: str
    expected_value: float = Field(description="Currency over the horizon, 2 decimals.")
    reasons: list[str]
    alternatives: list[Alternative]
    propensity: float = Field(1.0, description="Probability that this policy made this choice.")
    explored: bool = Field(False, description="Chosen at random (exploration), not by value.")
    control_group: bool = Field(False, description="Held out on purpose: no contact.")


@dataclass(frozen=True)
class Exploration:
    """A share of decisions picks a random option; ``draw`` and ``pick`` are uniform in [0, 1).

    The caller supplies the random numbers (the service draws them per request), so that
    :func:`decide` stays a pure function and a test can force either branch.
    """

    share: float
    draw: float
    pick: float


@dataclass(frozen=True)
class _Candidate:
    action: Action
    channel: str
    expected_value: float
    uplift: float
    catalogue_index: int
    channel_index: int


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def rule_holds(value: float, rule: EligibilityRule) -> bool:
    """``value op rule.value``; a missing (NaN) value never passes, even ``!=``."""
    if math.isnan(value):
        return False
    return bool(_OPERATORS[rule.op](value, rule.value))


def in_control_group(customer_id: str, share: float, salt: str) -> bool:
    """Stable hold-out: the same customer is in (or out of) the control group on every call.

    SHA-256 of ``salt:customer_id`` read as a number in [0, 1); changing the salt draws a new
    group. Independent of Python's per-process hash seed, so every worker agrees.
    """
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def apply_request_context(
    features: Mapping[str, float], cart_value: float | None = None
) -> dict[str, float]:
    """The features as the request context changes them: a cart in hand is a cart at stake now.

    A cart sent with the request (the customer is on the site with items in the basket) counts
    as abandoned now (``hours_since_last_abandoned_cart = 0``, one more cart in 30 days).
    """
    updated = dict(features)
    if cart_value is not None and cart_value > 0:
        updated["hours_since_last_abandoned_cart"] = 0.0
        updated["abandoned_carts_30d"] = _value(features, "abandoned_carts_30d", 0.0) + 1.0
        updated["cart_value"] = float(cart_value)
    return updated


def risk_band(
    churn_probability: float,
    medium_from: float = MEDIUM_RISK_FROM,
    high_from: float = HIGH_RISK_FROM,
) -> RiskBand:
    """Bucket a churn probability for people: ``low`` < medium_from <= ``medium`` < high_from."""
    if churn_probability >= high_from:
        return "high"
    if churn_probability >= medium_from:
        return "medium"
    return "low"


def _value(features: Mapping[str, float], name: str, default: float) -> float:
    """A feature as a float; missing or NaN becomes ``default`` (the safe reading)."""
    raw = features.get(name)
    if raw is None:
        return default
    value = float(raw)
    return default if math.isnan(value) else value


def channel_allowed(channel: str, features: Mapping[str, float]) -> bool:
    """Consent check: consent features must be exactly 1; unknown channels are refused."""
    if channel in CHANNELS_WITHOUT_CONSENT:
        return True
    consent_feature = CONSENT_FEATURE_BY_CHANNEL.get(channel)
    if consent_feature is None:
        return False
    return _value(features, consent_feature, 0.0) == 1.0


def action_eligible(
    action: Action,
    features: Mapping[str, float],
    churn_probability: float,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> bool:
    """Business rules that decide whether an action may be considered at all (a retention
    action needs a retainable risk of at least ``context.at_risk_threshold``)."""
    if action.name == NO_ACTION:
        return False  # the fallback, never a candidate
    for rule in action.eligibility:
        if not rule_holds(_value(features, rule.feature, math.nan), rule):
            return False
    if action.goal == "retention":
        risk = retainable_risk(_OneCustomer(features), np.array([churn_probability]), context)
        if risk[0] < context.at_risk_threshold:
            return False
    return True


def expected_value(
    action: Action,
    uplift: float,
    churn_probability: float,
    repurchase_probability: float,
    customer_value: float,
) -> float:
    """Value gained by the action minus its cost (see the module docstring for the choice);
    ``churn_probability`` is the retainable risk (:func:`retainable_risk`)."""
    movable_share = (
        churn_probability if action.goal == "retention" else 1.0 - repurchase_probability
    )
    return movable_share * uplift * customer_value - action.cost


def _alternatives(
    ranked: list[_Candidate], chosen: _Candidate | None, limit: int
) -> list[Alternative]:
    """Runner-ups, one per action (its best channel), best first, the winner left out."""
    seen: set[str] = {chosen.action.name} if chosen else set()
    alternatives: list[Alternative] = []
    for candidate in ranked:
        if candidate.action.name in seen:
            continue
        seen.add(candidate.action.name)
        alternatives.append(
            Alternative(
                action=candidate.action.name,
                channel=candidate.channel,
                expected_value=round(candidate.expected_value, 2),
            )
        )
        if len(alternatives) == limit:
            break
    return alternatives


def _why_chosen(
    chosen: _Candidate | None,
    best_rejected: _Candidate | None,
    retainable: float,
    repurchase_probability: float,
    customer_value: float,
    context: DecisionContext,
    reach: float = 1.0,
) -> str:
    """One sentence on why this action and channel won (or why nothing did);
    ``retainable`` is the retainable risk (:func:`retainable_risk`), ``reach`` the customer's
    reach on the chosen channel (:func:`channel_reach`)."""
    if chosen is None:
        if best_rejected is None:
            if retainable < context.at_risk_threshold:
                return (
                    f"No action: retainable churn risk is low ({retainable:.0%}) and there is "
                    "no growth reason or consented channel for an offer."
                )
            return "No action: no action is allowed for this customer on a consented channel."
        return (
            f"No action: the best option, {best_rejected.action.name} by "
            f"{best_rejected.channel}, would cost more than it is expected to return "
            f"({best_rejected.expected_value:.2f})."
        )
    action = chosen.action
    if action.goal == "retention":
        odds = f"{retainable:.0%} retainable churn risk"
    else:
        odds = f"{1.0 - repurchase_probability:.0%} chance of no purchase without a nudge"
    described = action.name
    if action.description:
        described += f" ({action.description.rstrip('.')})"
    if context.uplift_is_reduction:
        lowered = "churn risk" if action.goal == "retention" else "the chance of no purchase"
        return (
            f"{described} by {chosen.channel} has the highest expected value: it is expected "
            f"to lower {lowered} by {chosen.uplift:.1%} (uplift model) x "
            f"{customer_value:,.2f} customer value - {action.cost:.2f} cost = "
            f"{chosen.expected_value:.2f}."
        )
    read = f" x {reach:.0%} of {chosen.channel} messages read" if reach < 1.0 else ""
    return (
        f"{described} by {chosen.channel} has the highest expected value: {odds} x "
        f"{chosen.uplift:.0%} expected uplift{read} x {customer_value:,.2f} customer value "
        f"- {action.cost:.2f} cost = {chosen.expected_value:.2f}."
    )


def _policy_reason(
    blocked_channels: Mapping[str, str], blocked_actions: Mapping[str, str], limit: int = 3
) -> str | None:
    """One sentence on what the contact policy held back, or None when it held nothing."""
    held = [f"{name} ({why})" for name, why in blocked_actions.items()]
    held += [f"{channel} ({why})" for channel, why in blocked_channels.items()]
    if not held:
        return None
    more = f" and {len(held) - limit} more" if len(held) > limit else ""
    return "Contact policy held back: " + "; ".join(held[:limit]) + more + "."


def apply_realtime_fields(features: Mapping[str, float], now_epoch_s: float) -> dict[str, float]:
    """Fold the pushed real-time fields (``POST /events``) into the snapshot's features.

    ``last_cart_abandoned_at`` / ``last_case_opened_at`` are epoch seconds (NaN when none): a
    cart abandoned after the snapshot shortens ``hours_since_last_abandoned_cart``; a case opened
    in the last 30 days counts as an open case. ``cart_value`` passes through.
    """
    updated = dict(features)
    cart_at = _value(features, "last_cart_abandoned_at", math.nan)
    if not math.isnan(cart_at):
        hours = max((now_epoch_s - cart_at) / 3600.0, 0.0)
        snapshot_hours = _value(features, "hours_since_last_abandoned_cart", math.inf)
        updated["hours_since_last_abandoned_cart"] = min(hours, snapshot_hours)
    case_at = _value(features, "last_case_opened_at", math.nan)
    if not math.isnan(case_at) and 0 <= now_epoch_s - case_at <= OPEN_CASE_WINDOW_S:
        updated["open_cases"] = max(_value(features, "open_cases", 0.0), 1.0)
    return updated


# ---- the vectorised core: one decision function for one customer and for a million ----------
FeatureColumns = Mapping[str, np.ndarray]
"""Feature name -> values, one per customer (a DataFrame works as is; NaN = unknown)."""


@dataclass(frozen=True)
class ActionChannel:
    """One column of the decision matrices: an action of the catalogue on one of its channels."""

    action: Action
    channel: str
    catalogue_index: int
    channel_index: int


def action_channel_columns(actions: Sequence[Action]) -> list[ActionChannel]:
    """Every (action, channel) that may be chosen, in catalogue then channel order."""
    return [
        ActionChannel(action, channel, catalogue_index, channel_index)
        for catalogue_index, action in enumerate(actions)
        if action.name != NO_ACTION
        for channel_index, channel in enumerate(action.channels)
    ]


@dataclass(frozen=True)
class DecisionTable:
    """The catalogue as arrays over its (action, channel) columns, built once per catalogue.

    ``tie_order`` lists the columns in the order that wins a tie of expected value: the cheaper
    action, then the higher ``priority``, then catalogue and channel order.
    """

    actions: tuple[Action, ...]
    columns: tuple[ActionChannel, ...]
    cost: np.ndarray
    base_uplift: np.ndarray
    is_retention: np.ndarray
    tie_order: np.ndarray
    tie_rank: np.ndarray
    action_index: np.ndarray  # column -> index into ``candidate_actions``
    candidate_actions: tuple[Action, ...]
    action_names: np.ndarray  # per column, plus no_action at index -1
    channel_names: np.ndarray  # per column, plus "none" at index -1
    action_starts: np.ndarray  # first column of each candidate action (columns are grouped)
    channels: tuple[str, ...]  # the distinct channels of the columns
    channel_index: np.ndarray  # column -> index into ``channels``

    @property
    def width(self) -> int:
        return len(self.columns)

    def columns_of(self, action_name: str) -> np.ndarray:
        return np.array(
            [i for i, c in enumerate(self.columns) if c.action.name == action_name], dtype=np.intp
        )


_TABLES: dict[tuple[int, ...], DecisionTable] = {}


def decision_table(actions: Sequence[Action]) -> DecisionTable:
    """The :class:`DecisionTable` of a catalogue (cached: the catalogue is fixed per process)."""
    key = tuple(id(action) for action in actions)
    table = _TABLES.get(key)
    if table is not None and all(a is b for a, b in zip(table.actions, actions, strict=True)):
        return table
    columns = tuple(action_channel_columns(actions))
    candidate_actions = tuple(a for a in actions if a.name != NO_ACTION and a.channels)
    action_position = {id(a): i for i, a in enumerate(candidate_actions)}
    tie_order = np.array(
        sorted(
            range(len(columns)),
            key=lambda i: (
                columns[i].action.cost,
                -columns[i].action.priority,
                columns[i].catalogue_index,
                columns[i].channel_index,
            ),
        ),
        dtype=np.intp,
    )
    tie_rank = np.empty(len(columns), dtype=np.intp)
    tie_rank[tie_order] = np.arange(len(columns))
    channels = tuple(dict.fromkeys(c.channel for c in columns))
    starts = np.cumsum([0, *(len(a.channels) for a in candidate_actions)])[:-1]
    table = DecisionTable(
        actions=tuple(actions),
        columns=columns,
        cost=np.array([c.action.cost for c in columns], dtype=np.float64),
        base_uplift=np.array([c.action.base_uplift for c in columns], dtype=np.float64),
        is_retention=np.array([c.action.goal == "retention" for c in columns], dtype=bool),
        tie_order=tie_order,
        tie_rank=tie_rank,
        action_index=np.array([action_position[id(c.action)] for c in columns], dtype=np.intp),
        candidate_actions=candidate_actions,
        action_names=np.array([c.action.name for c in columns] + [NO_ACTION], dtype=object),
        channel_names=np.array([c.channel for c in columns] + [NO_CHANNEL], dtype=object),
        action_starts=starts.astype(np.intp),
        channels=channels,
        channel_index=np.array([channels.index(c.channel) for c in columns], dtype=np.intp),
    )
    _TABLES[key] = table
    return table


def feature_column(features: FeatureColumns, name: str, default: float, n: int) -> np.ndarray:
    """A feature as float64 per customer; absent or NaN becomes ``default`` (the safe reading)."""
    if name not in features:
        return np.full(n, default, dtype=np.float64)
    raw = features[name]
    values = raw.to_numpy(dtype=np.float64, na_value=np.nan) if hasattr(raw, "to_numpy") else raw
    values = np.asarray(values, dtype=np.float64)
    if math.isnan(default):
        return values
    return np.where(np.isnan(values), default, values)


_COMPARISONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def retainable_risk(
    features: FeatureColumns,
    churn_probability: np.ndarray,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> np.ndarray:
    """(n,) the share of a customer's value a retention contact can still save: P(churn) for a
    customer still active (a purchase or a web/app session within
    ``context.active_within_days``: :data:`ACTIVITY_RECENCY_FEATURES`), 0 for one who is not.

    The churn label (no purchase in the next window) is 1 for every customer who is already
    gone, so the churn score is highest where there is nothing left to retain. Among customers
    still active it is the risk of lapsing. Measured on the simulator (docs/models.md): the
    activity rule tells the living from the gone better than the last purchase alone
    (correlation with being alive 0.77 against 0.61) and better than BG/NBD's P(alive) (0.47,
    whose ``P(churn) - (1 - P(alive))`` correlates -0.02 with the truth); a learned P(lapse |
    active) did no better either. An unknown recency (NaN) on every feature keeps the score.
    """
    churn_probability = np.asarray(churn_probability, dtype=np.float64)
    n = len(churn_probability)
    days = np.full(n, np.nan)
    for name in ACTIVITY_RECENCY_FEATURES:
        days = np.fmin(days, feature_column(features, name, math.nan, n))
    with np.errstate(invalid="ignore"):
        lapsed = days > context.active_within_days
    return np.where(lapsed, 0.0, churn_probability)


def channel_reach(features: FeatureColumns, table: DecisionTable, n: int) -> np.ndarray:
    """(n x columns) the share of the column's channel messages the customer reads
    (:data:`REACH_FEATURE_BY_CHANNEL`, clipped to [0, 1]; NaN or a channel without a reach
    feature: 1)."""
    reach = np.ones((n, table.width))
    for index, channel in enumerate(table.channels):
        name = REACH_FEATURE_BY_CHANNEL.get(channel)
        if name is None or name not in features:
            continue
        values = np.clip(feature_column(features, name, 1.0, n), 0.0, 1.0)
        reach[:, table.channel_index == index] = values[:, None]
    return reach


def allowed_matrix(
    features: FeatureColumns,
    churn_probability: np.ndarray,
    table: DecisionTable,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> np.ndarray:
    """(customers x columns): eligibility (:func:`action_eligible`) and consent
    (:func:`channel_allowed`), before the contact policy."""
    n = len(churn_probability)
    at_risk = retainable_risk(features, churn_probability, context) >= context.at_risk_threshold
    by_action = np.ones((n, len(table.candidate_actions)), dtype=bool)
    for index, action in enumerate(table.candidate_actions):
        for rule in action.eligibility:  # a missing feature or NaN never passes (fail closed)
            values = feature_column(features, rule.feature, math.nan, n)
            with np.errstate(invalid="ignore"):
                by_action[:, index] &= _COMPARISONS[rule.op](values, rule.value)
            if rule.op == "!=":  # the only comparison a NaN passes
                by_action[:, index] &= ~np.isnan(values)
        if action.goal == "retention":
            by_action[:, index] &= at_risk
    by_channel = np.empty((n, len(table.channels)), dtype=bool)
    for index, channel in enumerate(table.channels):
        if channel in CHANNELS_WITHOUT_CONSENT:
            by_channel[:, index] = True
        elif channel in CONSENT_FEATURE_BY_CHANNEL:
            by_channel[:, index] = (
                feature_column(features, CONSENT_FEATURE_BY_CHANNEL[channel], 0.0, n) == 1.0
            )
        else:
            by_channel[:, index] = False  # fail closed
    return by_action[:, table.action_index] & by_channel[:, table.channel_index]


@dataclass
class ArrayDecisions:
    """Decisions for n customers; a column index of -1 means ``no_action``.

    Attributes:
        column: the chosen column per customer.
        greedy: the column the values alone choose (-1 when none is positive).
        values: (customers x columns) expected values, -inf where not allowed.
        expected_value: of the chosen column, 0 for no action (not rounded).
        propensity: probability that the policy made this choice.
        explored: chosen at random. control: held out.
        customer_value: the value at stake used per customer.
        uplift: (customers x columns) uplift used (after the in-session factor); one row
            for everyone when it is the catalogue's.
    """

    table: DecisionTable
    column: np.ndarray
    greedy: np.ndarray
    values: np.ndarray
    expected_value: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    control: np.ndarray
    customer_value: np.ndarray
    uplift: np.ndarray

    @property
    def action(self) -> np.ndarray:
        return self.table.action_names[self.column]

    @property
    def channel(self) -> np.ndarray:
        return self.table.channel_names[self.column]

    def ranked(self, row: int) -> np.ndarray:
        """The allowed columns of one customer, best first (ties as ``tie_order``)."""
        values = self.values[row]
        allowed = self.table.tie_order[np.isfinite(values[self.table.tie_order])]
        return allowed[np.argsort(-values[allowed], kind="stable")]


def _best_per_action(values: np.ndarray, table: DecisionTable) -> tuple[np.ndarray, np.ndarray]:
    """(customers x actions) best value and its column (ties: the first channel listed; the
    columns of an action are contiguous and share cost and priority)."""
    n = len(values)
    best_value = np.maximum.reduceat(values, table.action_starts, axis=1)
    best_column = np.empty((n, len(table.candidate_actions)), dtype=np.intp)
    ends = [*table.action_starts[1:].tolist(), table.width]
    for index, (start, end) in enumerate(zip(table.action_starts.tolist(), ends, strict=True)):
        best_column[:, index] = start + np.argmax(values[:, start:end], axis=1)
    return best_value, best_column


def _explore_arrays(
    values: np.ndarray, greedy: np.ndarray, table: DecisionTable, share: float, pick: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(choice, propensity) of exploring customers: a uniform pick among ``no_action`` and each
    allowed action on its best channel, listed best first (the order :func:`decide` shows)."""
    best_value, best_column = _best_per_action(values, table)
    options = 1 + np.isfinite(best_value).sum(axis=1)
    # Actions best first: by value, then the tie rank of their best column.
    order = np.lexsort((table.tie_rank[best_column], -best_value), axis=1)
    index = np.minimum((pick * options).astype(np.intp), options - 1)
    rows = np.arange(len(values))
    picked_action = order[rows, np.maximum(index - 1, 0)]
    choice = np.where(index == 0, -1, best_column[rows, picked_action])
    propensity = (1.0 - share) * (choice == greedy) + share / options
    return choice, propensity


def decide_arrays(
    features: FeatureColumns,
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    actions: Sequence[Action],
    context: DecisionContext = DEFAULT_CONTEXT,
    *,
    customer_value: np.ndarray | None = None,
    uplift: np.ndarray | None = None,
    in_session: np.ndarray | None = None,
    blocked: np.ndarray | None = None,
    control: np.ndarray | None = None,
    exploration_share: float = 0.0,
    draw: np.ndarray | None = None,
    pick: np.ndarray | None = None,
) -> ArrayDecisions:
    """The decision of the module docstring for n customers at once, as array operations.

    Every path calls this: :func:`decide` with n = 1 (the HTTP service), batch scoring and
    campaigns with the whole population.

    Args:
        features: feature name -> (n,) values (a DataFrame works).
        churn_probability / repurchase_probability: (n,) model scores.
        actions: the catalogue.
        context: thresholds and the in-session factor (its ``uplift`` function is not used
            here: pass ``uplift``).
        customer_value: (n,) value at stake (NaN = unknown); ``spend_365d`` when omitted;
            floored at 0.
        uplift: (n x columns) uplift, relative to the movable share (the catalogue's
            ``base_uplift`` when omitted), or absolute reductions with
            ``context.uplift_is_reduction`` (:func:`uplift_matrix`).
        in_session: (n x columns) True where the customer is on that channel now.
        blocked: (n x columns) True where the contact policy holds the column back.
        control: (n,) True for the control group: no action, propensity 1.
        exploration_share: share of decisions that pick a random option; ``draw`` and ``pick``
            (n,) uniform numbers decide which ones and what (the caller draws them).
    """
    table = decision_table(actions)
    churn_probability = np.asarray(churn_probability, dtype=np.float64)
    repurchase_probability = np.asarray(repurchase_probability, dtype=np.float64)
    n = len(churn_probability)
    spend = feature_column(features, "spend_365d", 0.0, n)
    if customer_value is None:
        value = spend
    else:
        customer_value = np.asarray(customer_value, dtype=np.float64)
        value = np.where(np.isnan(customer_value), spend, customer_value)
    value = np.maximum(value, 0.0)
    if uplift is None:
        uplift = table.base_uplift[None, :]
    elif uplift.shape != (n, table.width):
        raise ValueError(f"uplift must have shape {(n, table.width)}, got {uplift.shape}")
    if in_session is not None:
        uplift = np.where(in_session, uplift * context.in_session_uplift_factor, uplift)
    reduction = (
        uplift
        if context.uplift_is_reduction
        else movable_share(features, churn_probability, repurchase_probability, table, context)
        * uplift
    )
    values = reduction * value[:, None] - table.cost[None, :]
    allowed = allowed_matrix(features, churn_probability, table, context)
    if blocked is not None:
        allowed &= ~blocked
    values = np.where(allowed, values, -np.inf)

    rows = np.arange(n)
    if table.width:
        position = np.argmax(values[:, table.tie_order], axis=1)
        best = table.tie_order[position]
        greedy = np.where(values[rows, best] > 0, best, -1)
    else:
        greedy = np.full(n, -1, dtype=np.intp)
    control = np.zeros(n, dtype=bool) if control is None else np.asarray(control, dtype=bool)
    column = np.where(control, -1, greedy)
    propensity = np.ones(n)
    explored = np.zeros(n, dtype=bool)
    share = min(max(exploration_share, 0.0), 1.0)
    if draw is not None and pick is not None and table.width:
        active = ~control
        explored = active & (np.asarray(draw) < share)
        if explored.any():
            picked, picked_propensity = _explore_arrays(
                values[explored], greedy[explored], table, share, np.asarray(pick)[explored]
            )
            column[explored] = picked
            propensity[explored] = picked_propensity
        stays = active & ~explored
        if stays.any():
            best_value = np.maximum.reduceat(values[stays], table.action_starts, axis=1)
            propensity[stays] = (1.0 - share) + share / (1 + np.isfinite(best_value).sum(axis=1))
    chosen = column >= 0
    expected = (
        np.where(chosen, values[rows, np.maximum(column, 0)], 0.0) if table.width else (np.zeros(n))
    )
    return ArrayDecisions(
        table=table,
        column=column,
        greedy=greedy,
        values=values,
        expected_value=expected,
        propensity=propensity,
        explored=explored,
        control=control,
        customer_value=value,
        uplift=np.asarray(uplift),
    )


class _OneCustomer(Mapping[str, np.ndarray]):
    """One customer's feature mapping seen as (1,) columns, converted only when read."""

    def __init__(self, features: Mapping[str, float]) -> None:
        self._features = features

    def __getitem__(self, name: str) -> np.ndarray:
        raw = self._features[name]
        return np.array([math.nan if raw is None else float(raw)])

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __iter__(self):  # noqa: ANN204 - Mapping protocol
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


def uplift_row(
    table: DecisionTable,
    effects: Mapping[tuple[str, str], float] | None = None,
    function: UpliftFunction | None = None,
    features: Mapping[str, float] | None = None,
) -> np.ndarray:
    """(1 x columns) uplift of one customer: ``-effect`` of an uplift model's arm (a negative
    change of P(churn) retains), else ``function`` (a context's), else ``base_uplift``."""
    row = table.base_uplift.copy()
    for index, column in enumerate(table.columns):
        effect = effects.get((column.action.name, column.channel)) if effects else None
        if effect is not None:
            row[index] = -float(effect)
        elif function is not None:
            row[index] = function(column.action, column.channel, features or {})
    return row[None, :]


def uplift_matrix(
    effects: np.ndarray,
    arms: Sequence[tuple[str, str]],
    table: DecisionTable,
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    *,
    features: FeatureColumns,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> np.ndarray:
    """(customers x columns) absolute reductions of the movable probability, for
    :data:`MODEL_UPLIFT_CONTEXT`: an uplift model's ``-effect`` on P(churn) where it has the arm,
    else the catalogue's relative prior times the movable share the engine uses without a
    model (:func:`movable_share`: the retainable risk for a retention action, 1 - P(repurchase)
    for a growth one), so that both mean the same thing.

    The model's reduction already says who can be moved, so the engine values it as it is
    (``reduction x value - cost``): no division by the movable share and no clip, which
    undervalued every customer whose true reduction exceeds the churn score (16 points of the
    oracle with the true effects, docs/models.md). Without the at-risk gate either.
    """
    movable = movable_share(features, churn_probability, repurchase_probability, table, context)
    matrix = movable * table.base_uplift[None, :]
    arm_index = {tuple(arm): i for i, arm in enumerate(arms)}
    for index, column in enumerate(table.columns):
        position = arm_index.get((column.action.name, column.channel))
        if position is not None:
            matrix[:, index] = -np.asarray(effects[:, position], dtype=np.float64)
    return matrix


def movable_share(
    features: FeatureColumns,
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    table: DecisionTable,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> np.ndarray:
    """(customers x columns) the probability an action on a channel can move: the retainable
    risk (:func:`retainable_risk`) for a retention action, 1 - P(repurchase) for a growth one,
    times the customer's reach on the channel (:func:`channel_reach`)."""
    churn_probability = np.asarray(churn_probability, dtype=np.float64)
    repurchase_probability = np.asarray(repurchase_probability, dtype=np.float64)
    share = np.where(
        table.is_retention[None, :],
        retainable_risk(features, churn_probability, context)[:, None],
        1.0 - repurchase_probability[:, None],
    )
    return share * channel_reach(features, table, len(churn_probability))


class RowColumns(Mapping[str, np.ndarray]):
    """Feature rows (one mapping per customer) seen as columns, built only when read: the
    :data:`FeatureColumns` face of the rows the HTTP service reads from the online store."""

    def __init__(self, rows: Sequence[Mapping[str, float | None]]) -> None:
        self._rows = rows

    def __getitem__(self, name: str) -> np.ndarray:
        values = [row.get(name) for row in self._rows]
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)

    def __contains__(self, name: object) -> bool:
        return any(name in row for row in self._rows)

    def __iter__(self):  # noqa: ANN204 - Mapping protocol
        return iter(dict.fromkeys(name for row in self._rows for name in row))

    def __len__(self) -> int:
        return len(set().union(*self._rows)) if self._rows else 0


def decide(
    customer_id: str,
    features: Mapping[str, float],
    churn_probability: float,
    repurchase_probability: float,
    churn_contributions: Mapping[str, float],
    actions: Sequence[Action],
    context: DecisionContext | None = None,
    *,
    customer_value: float | None = None,
    uplift: np.ndarray | None = None,
    blocked_channels: Mapping[str, str] | None = None,
    blocked_actions: Mapping[str, str] | None = None,
    current_channel: str | None = None,
    control_group: bool = False,
    exploration: Exploration | None = None,
) -> Decision:
    """Choose the next best action for one customer and say why.

    :func:`decide_arrays` with one customer (about 0.2 ms), plus the reasons and the ranked
    alternatives a person reads.

    Args:
        customer_id: the customer (kept for the signature of callers and logs).
        features: the customer's feature values (NaN or absent = unknown); apply
            :func:`apply_request_context` first for a request's cart.
        churn_probability: P(churn) from the churn model.
        repurchase_probability: P(purchase in the repurchase window) from that model.
        churn_contributions: feature name -> contribution to the churn score (log-odds), bias
            excluded.
        actions: the action catalogue (``settings.actions``).
        context: policy knobs; ``DecisionContext()`` when omitted.
        customer_value: the value at stake (a value model's prediction); ``spend_365d`` when
            omitted; floored at 0.
        uplift: (1 x columns) uplift (:func:`uplift_row`); else ``context.uplift``.
        blocked_channels: channel -> reason, from the contact policy (caps, cooldown, quiet
            hours); these channels are not used.
        blocked_actions: action -> reason (action cooldown); these actions are not chosen.
        current_channel: where the customer is now (its uplift is raised, see the module doc).
        control_group: the customer is held out: ``no_action`` whatever the values.
        exploration: when given, a share of decisions picks a random option (see
            :class:`Exploration`); the decision carries the propensity of its choice.
    """
    context = context or DEFAULT_CONTEXT
    blocked_channels = blocked_channels or {}
    blocked_actions = blocked_actions or {}
    table = decision_table(actions)
    if uplift is None and context.uplift is not catalogue_uplift:
        uplift = uplift_row(table, function=context.uplift, features=features)
    blocked = None
    if blocked_channels or blocked_actions:
        blocked = np.array(
            [
                [
                    c.channel in blocked_channels or c.action.name in blocked_actions
                    for c in table.columns
                ]
            ],
            dtype=bool,
        )
    in_session = None
    if current_channel is not None:
        in_session = np.array([[c.channel == current_channel for c in table.columns]], dtype=bool)
    result = decide_arrays(
        _OneCustomer(features),
        np.array([churn_probability], dtype=np.float64),
        np.array([repurchase_probability], dtype=np.float64),
        actions,
        context,
        customer_value=None if customer_value is None else np.array([customer_value], float),
        uplift=uplift,
        in_session=in_session,
        blocked=blocked,
        control=np.array([control_group]),
        exploration_share=exploration.share if exploration else 0.0,
        draw=np.array([exploration.draw]) if exploration else None,
        pick=np.array([exploration.pick]) if exploration else None,
    )
    ranked = [
        _Candidate(
            table.columns[index].action,
            table.columns[index].channel,
            float(result.values[0, index]),
            float(result.uplift[0, index]),
            table.columns[index].catalogue_index,
            table.columns[index].channel_index,
        )
        for index in result.ranked(0).tolist()
    ]
    by_column = dict(zip(result.ranked(0).tolist(), ranked, strict=True))
    best = ranked[0] if ranked else None
    chosen = by_column.get(int(result.column[0]))
    propensity, explored = float(result.propensity[0]), bool(result.explored[0])
    value = float(result.customer_value[0])
    retainable = float(
        retainable_risk(_OneCustomer(features), np.array([churn_probability]), context)[0]
    )

    drivers = top_churn_drivers(
        dict(churn_contributions), features, limit=context.max_drivers, wording=context.wording
    )
    reasons = [f"Churn risk is raised by: {driver}." for driver in drivers]
    if not drivers:
        reasons.append("No feature raises this customer's churn risk above the average.")
    policy_reason = _policy_reason(blocked_channels, blocked_actions)
    if policy_reason:
        reasons.append(policy_reason)
    if control_group:
        reasons.append(
            "No action: the customer is in the control group, held out so that the value of "
            "our actions can be measured."
        )
    elif explored:
        described = f"{chosen.action.name} by {chosen.channel}" if chosen else "no action"
        reasons.append(
            f"Exploration: {described} was picked at random (probability {propensity:.1%}) to "
            "keep learning what works."
        )
    else:
        reach = 1.0
        if chosen is not None:
            reach = float(channel_reach(_OneCustomer(features), table, 1)[0, int(result.column[0])])
        reasons.append(
            _why_chosen(chosen, best, retainable, repurchase_probability, value, context, reach)
        )
    return Decision(
        action=chosen.action.name if chosen else NO_ACTION,
        channel=chosen.channel if chosen else NO_CHANNEL,
        expected_value=round(chosen.expected_value, 2) if chosen else 0.0,
        reasons=reasons,
        alternatives=_alternatives(ranked, chosen, context.max_alternatives),
        propensity=round(propensity, 6),
        explored=explored,
        control_group=control_group,
    )
