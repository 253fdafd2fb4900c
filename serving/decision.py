"""The next-best-action decision: which action, on which channel, is worth its cost.

Plain functions, no server and no heavy imports: this runs on every request, after the two model
scores are known. The rules, in order:

1. **Eligibility** (business rules, not model output):
   - the action's own ``eligibility`` rules of the catalogue (``configs/actions.yaml``), all of
     which must hold; a missing (NaN) feature fails its rule. Shipped: ``service_callback`` needs
     an open service case (``open_cases > 0``), ``cart_reminder`` an abandoned cart in the last
     72 hours (``hours_since_last_abandoned_cart <= 72``);
   - the contact policy (:mod:`serving.policy`) may hold an action back (its cooldown);
   - a *retention* action needs a customer at risk: ``churn_probability`` at least
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
   - retention: ``churn_probability x uplift x customer_value - cost`` (the value we keep by
     lowering the churn probability by ``uplift``);
   - growth: ``(1 - repurchase_probability) x uplift x customer_value - cost``: a customer who
     would buy anyway gains nothing from a nudge, so only the share who would *not* repurchase
     can be moved.
   ``uplift`` comes from ``DecisionContext.uplift`` (the catalogue's ``base_uplift`` until uplift
   models land) and ``customer_value`` is ``spend_365d`` (floored at 0: net refunds put nothing at
   stake).
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

Everything here is pure and deterministic given its inputs (randomness comes in as numbers), so
campaigns and batch scoring call :func:`decide` directly.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

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
CART_REMINDER_WINDOW_HOURS = 72.0  # read by serving.batch; the catalogue's rule decides here
OPEN_CASE_WINDOW_S = 30 * 86400.0  # a pushed case counts as open this long (as open_cases)
IN_SESSION_UPLIFT_FACTOR = 1.5  # an offer where the customer is right now works better

CONSENT_FEATURE_BY_CHANNEL: dict[str, str] = {
    "email": "consent_email",
    "sms": "consent_sms",
    "app": "consent_app",
    "call_center": "consent_call_center",
}
CHANNELS_WITHOUT_CONSENT: frozenset[str] = frozenset({"store", "web"})


def catalogue_uplift(action: Action, channel: str, features: Mapping[str, float]) -> float:
    """The catalogue's prior ``base_uplift``: the same for every customer and channel."""
    return action.base_uplift


@dataclass(frozen=True)
class DecisionContext:
    """Knobs of the decision that are not the customer's data; the defaults are the policy.

    Attributes:
        uplift: where the uplift of an (action, channel) comes from; plug an uplift model here.
        at_risk_threshold: churn probability from which retention actions are allowed.
        high_risk_threshold: churn probability of the "high" risk band (for reporting).
        cart_window_hours: kept for ``serving.batch``; ``decide`` reads the catalogue's rule.
        in_session_uplift_factor: uplift multiplier of the channel the customer is using now.
        max_alternatives: how many runner-up actions to return.
        max_drivers: how many churn drivers to put in the reasons.
        wording: feature name -> wording of its value, for the reasons.
    """

    uplift: UpliftFunction = catalogue_uplift
    at_risk_threshold: float = MEDIUM_RISK_FROM
    high_risk_threshold: float = HIGH_RISK_FROM
    cart_window_hours: float = CART_REMINDER_WINDOW_HOURS
    in_session_uplift_factor: float = IN_SESSION_UPLIFT_FACTOR
    max_alternatives: int = 3
    max_drivers: int = 3
    wording: Mapping[str, Wording] = field(default_factory=lambda: FEATURE_WORDING)


DEFAULT_CONTEXT = DecisionContext()


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
    """Business rules that decide whether an action may be considered at all."""
    if action.name == NO_ACTION:
        return False  # the fallback, never a candidate
    for rule in action.eligibility:
        if not rule_holds(_value(features, rule.feature, math.nan), rule):
            return False
    if action.goal == "retention" and churn_probability < context.at_risk_threshold:
        return False
    return True


def expected_value(
    action: Action,
    uplift: float,
    churn_probability: float,
    repurchase_probability: float,
    customer_value: float,
) -> float:
    """Value gained by the action minus its cost (see the module docstring for the choice)."""
    movable_share = (
        churn_probability if action.goal == "retention" else 1.0 - repurchase_probability
    )
    return movable_share * uplift * customer_value - action.cost


def _candidates(
    features: Mapping[str, float],
    churn_probability: float,
    repurchase_probability: float,
    actions: Sequence[Action],
    context: DecisionContext,
    customer_value: float,
    blocked_channels: Mapping[str, str],
    blocked_actions: Mapping[str, str],
    current_channel: str | None,
) -> list[_Candidate]:
    """Every eligible, consented (action, channel) the contact policy allows, best first."""
    candidates: list[_Candidate] = []
    for catalogue_index, action in enumerate(actions):
        if action.name in blocked_actions:
            continue
        if not action_eligible(action, features, churn_probability, context):
            continue
        for channel_index, channel in enumerate(action.channels):
            if channel in blocked_channels or not channel_allowed(channel, features):
                continue
            uplift = context.uplift(action, channel, features)
            if channel == current_channel:
                uplift *= context.in_session_uplift_factor
            value = expected_value(
                action, uplift, churn_probability, repurchase_probability, customer_value
            )
            candidates.append(
                _Candidate(action, channel, value, uplift, catalogue_index, channel_index)
            )
    candidates.sort(
        key=lambda c: (
            -c.expected_value,
            c.action.cost,
            -c.action.priority,
            c.catalogue_index,
            c.channel_index,
        )
    )
    return candidates


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
    churn_probability: float,
    repurchase_probability: float,
    customer_value: float,
    context: DecisionContext,
) -> str:
    """One sentence on why this action and channel won (or why nothing did)."""
    if chosen is None:
        if best_rejected is None:
            if churn_probability < context.at_risk_threshold:
                return (
                    f"No action: churn risk is low ({churn_probability:.0%}) and there is no "
                    "growth reason or consented channel for an offer."
                )
            return "No action: no action is allowed for this customer on a consented channel."
        return (
            f"No action: the best option, {best_rejected.action.name} by "
            f"{best_rejected.channel}, would cost more than it is expected to return "
            f"({best_rejected.expected_value:.2f})."
        )
    action = chosen.action
    if action.goal == "retention":
        odds = f"{churn_probability:.0%} churn risk"
    else:
        odds = f"{1.0 - repurchase_probability:.0%} chance of no purchase without a nudge"
    described = action.name
    if action.description:
        described += f" ({action.description.rstrip('.')})"
    return (
        f"{described} by {chosen.channel} has the highest expected value: {odds} x "
        f"{chosen.uplift:.0%} expected uplift x {customer_value:,.2f} customer value "
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


def _explore(
    ranked: list[_Candidate], greedy: _Candidate | None, exploration: Exploration
) -> tuple[_Candidate | None, float, bool]:
    """(choice, propensity, explored): epsilon-greedy over one option per action plus none.

    The options are each eligible action on its best allowed channel, plus ``no_action``; the
    propensity is the probability of the returned option under this policy:
    ``(1 - share) x [it is the greedy one] + share / number of options``.
    """
    options: list[_Candidate | None] = [None]
    seen: set[str] = set()
    for candidate in ranked:
        if candidate.action.name not in seen:
            seen.add(candidate.action.name)
            options.append(candidate)
    share = min(max(exploration.share, 0.0), 1.0)
    uniform = share / len(options)
    if exploration.draw < share:
        index = min(int(exploration.pick * len(options)), len(options) - 1)
        picked = options[index]
        is_greedy = (picked is None and greedy is None) or (
            picked is not None and greedy is not None and picked == greedy
        )
        return picked, (1.0 - share) * is_greedy + uniform, True
    return greedy, (1.0 - share) + uniform, False


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
    blocked_channels: Mapping[str, str] | None = None,
    blocked_actions: Mapping[str, str] | None = None,
    current_channel: str | None = None,
    control_group: bool = False,
    exploration: Exploration | None = None,
) -> Decision:
    """Choose the next best action for one customer and say why.

    Pure and fast (no I/O, about 0.1 ms): the service, batch scoring and campaigns call it.

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
    if customer_value is None or math.isnan(customer_value):
        customer_value = _value(features, "spend_365d", 0.0)
    customer_value = max(customer_value, 0.0)
    ranked = _candidates(
        features,
        churn_probability,
        repurchase_probability,
        actions,
        context,
        customer_value,
        blocked_channels,
        blocked_actions,
        current_channel,
    )
    best = ranked[0] if ranked else None
    greedy = best if best is not None and best.expected_value > 0 else None

    chosen, propensity, explored = greedy, 1.0, False
    if control_group:
        chosen = None
    elif exploration is not None:
        chosen, propensity, explored = _explore(ranked, greedy, exploration)

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
        reasons.append(
            _why_chosen(
                chosen, best, churn_probability, repurchase_probability, customer_value, context
            )
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
