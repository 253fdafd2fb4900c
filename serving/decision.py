"""The next-best-action decision: which action, on which channel, is worth its cost.

Plain functions, no server and no heavy imports: this runs on every request, after the two model
scores are known. The rules, in order:

1. **Eligibility** (business rules, not model output):
   - ``service_callback`` needs an open service case (``open_cases > 0``);
   - ``cart_reminder`` needs an abandoned cart in the last 72 hours
     (``hours_since_last_abandoned_cart <= 72``);
   - a *retention* action needs a customer at risk: ``churn_probability`` at least
     ``DecisionContext.at_risk_threshold`` (the lower edge of the "medium" risk band). Spending
     a retention budget on a customer who is not at risk is the classic waste of churn
     programmes: even with a positive expected value on paper, the uplift prior is not
     calibrated for loyal customers;
   - a *growth* action needs a growth reason: its own rule when it has one (the abandoned cart
     for ``cart_reminder``); a growth action without a rule is always eligible and must earn its
     place through its expected value. A customer who is neither at risk nor has a growth reason
     therefore gets ``no_action``.
2. **Consent**: a channel with a consent feature (``email``, ``sms``, ``app``, ``call_center``) is
   used only when that feature is exactly 1; ``store`` and ``web`` need none (the offer is shown
   at the next visit). Any other channel is refused (fail closed): we never contact a customer
   on a channel whose consent we cannot check.
3. **Expected value** of each eligible (action, channel), in currency over the horizon:
   - retention: ``churn_probability x uplift x customer_value - cost`` (the value we keep by
     lowering the churn probability by ``uplift``);
   - growth: ``(1 - repurchase_probability) x uplift x customer_value - cost``: a customer who
     would buy anyway gains nothing from a nudge, so only the share who would *not* repurchase
     can be moved.
   ``uplift`` comes from ``DecisionContext.uplift`` (the catalogue's ``base_uplift`` until uplift
   models land) and ``customer_value`` is ``spend_365d`` (floored at 0: net refunds put nothing at
   stake).
4. The highest positive expected value wins; ties go to the cheaper action, then to catalogue and
   channel order (the catalogue lists channels by preference). If none is positive: ``no_action``
   with expected value 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from omniretain.settings import Action
from serving.reasons import FEATURE_WORDING, Wording, top_churn_drivers

RiskBand = Literal["low", "medium", "high"]
UpliftFunction = Callable[[Action, str, Mapping[str, float]], float]
"""(action, channel, customer features) -> absolute reduction of churn (or non-purchase)."""

NO_ACTION = "no_action"
NO_CHANNEL = "none"

MEDIUM_RISK_FROM = 0.3  # churn probability where a customer starts to be "at risk"
HIGH_RISK_FROM = 0.6
CART_REMINDER_WINDOW_HOURS = 72.0

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
        cart_window_hours: how recent an abandoned cart must be for a cart reminder.
        max_alternatives: how many runner-up actions to return.
        max_drivers: how many churn drivers to put in the reasons.
        wording: feature name -> wording of its value, for the reasons.
    """

    uplift: UpliftFunction = catalogue_uplift
    at_risk_threshold: float = MEDIUM_RISK_FROM
    high_risk_threshold: float = HIGH_RISK_FROM
    cart_window_hours: float = CART_REMINDER_WINDOW_HOURS
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


@dataclass(frozen=True)
class _Candidate:
    action: Action
    channel: str
    expected_value: float
    uplift: float
    catalogue_index: int
    channel_index: int


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
    if action.name == "service_callback" and _value(features, "open_cases", 0.0) <= 0:
        return False
    if action.name == "cart_reminder":
        hours = _value(features, "hours_since_last_abandoned_cart", math.inf)
        if hours > context.cart_window_hours:
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
    actions: list[Action],
    context: DecisionContext,
) -> list[_Candidate]:
    """Every eligible, consented (action, channel), best first."""
    customer_value = max(_value(features, "spend_365d", 0.0), 0.0)
    candidates: list[_Candidate] = []
    for catalogue_index, action in enumerate(actions):
        if not action_eligible(action, features, churn_probability, context):
            continue
        for channel_index, channel in enumerate(action.channels):
            if not channel_allowed(channel, features):
                continue
            uplift = context.uplift(action, channel, features)
            value = expected_value(
                action, uplift, churn_probability, repurchase_probability, customer_value
            )
            candidates.append(
                _Candidate(action, channel, value, uplift, catalogue_index, channel_index)
            )
    candidates.sort(
        key=lambda c: (-c.expected_value, c.action.cost, c.catalogue_index, c.channel_index)
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
        f"{chosen.uplift:.0%} expected uplift x {customer_value:,.2f} spent in the last year "
        f"- {action.cost:.2f} cost = {chosen.expected_value:.2f}."
    )


def decide(
    customer_id: str,
    features: dict[str, float],
    churn_probability: float,
    repurchase_probability: float,
    churn_contributions: dict[str, float],
    actions: list[Action],
    context: DecisionContext | None = None,
) -> Decision:
    """Choose the next best action for one customer and say why.

    Args:
        customer_id: the customer (kept for the signature of callers and logs).
        features: the customer's feature values (NaN or absent = unknown).
        churn_probability: P(churn) from the churn model.
        repurchase_probability: P(purchase in the repurchase window) from that model.
        churn_contributions: feature name -> contribution to the churn score (log-odds), bias
            excluded.
        actions: the action catalogue (``settings.actions``).
        context: policy knobs; ``DecisionContext()`` when omitted.
    """
    context = context or DEFAULT_CONTEXT
    ranked = _candidates(features, churn_probability, repurchase_probability, actions, context)
    best = ranked[0] if ranked else None
    chosen = best if best is not None and best.expected_value > 0 else None

    customer_value = max(_value(features, "spend_365d", 0.0), 0.0)
    drivers = top_churn_drivers(
        churn_contributions, features, limit=context.max_drivers, wording=context.wording
    )
    reasons = [f"Churn risk is raised by: {driver}." for driver in drivers]
    if not drivers:
        reasons.append("No feature raises this customer's churn risk above the average.")
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
    )
