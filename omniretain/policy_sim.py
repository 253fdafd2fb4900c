"""The next period under a targeting policy, from the simulator's truth (benchmarks only).

The simulator knows what the product cannot: each person's hazard at the end of the history
(hence the 90-day churn probability ``p0`` with no action) and the true effect of every
(action, channel) on that probability (``truth/treatment_effects.parquet``). As in the
simulator's own campaigns (:meth:`omniretain.simulator._World._campaign`), a treated person's
90-day churn probability becomes ``p1 = clip(p0 + effect, 5e-4, 0.95)``; a person who has already
churned is not moved at all, but the contact is still paid for.

The end state is not stored by ``simulate``; :func:`replay_end_state` re-runs the simulator's
world with the same seed (the world has its own random stream, independent of the writer), and
checks that every person churned on the same day as in ``truth/persons.parquet``.

The value of a policy is the **expected** incremental retained value over no action (no
sampling noise): ``sum over contacted persons of (p0 - p1) x customer value - cost``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from omniretain.settings import Settings

NO_CHOICE = -1
P1_FLOOR, P1_CEILING = 5e-4, 0.95  # the simulator's clip of the treated 90-day probability


class TruthMismatchError(RuntimeError):
    """The replayed world does not match the stored truth (simulator changed since the run)."""


@dataclass(frozen=True)
class EndState:
    """Per person at the end of the simulated history."""

    person_ids: np.ndarray
    alive: np.ndarray
    churn_probability_90d: np.ndarray  # p0 without any action (meaningful for the alive)
    pairs: list[tuple[str, str]]  # (action, channel) columns of ``effects``
    effects: np.ndarray  # persons x pairs, the true absolute change of p0
    # campaign date -> (alive, p0) of every person at that monthly campaign's send, as the
    # simulator's campaign computed them: the truth of an off-policy estimate over the logs
    at_campaigns: dict[date, tuple[np.ndarray, np.ndarray]]


def replay_end_state(settings: Settings) -> EndState:
    """Re-run the simulated world of ``truth_dir`` to its last day (no files written)."""
    from omniretain import simulator as sim

    summary = json.loads((settings.truth_dir / "simulation.json").read_text())
    seed, customers = int(summary["seed"]), int(summary["persons"])
    start, end = date.fromisoformat(summary["start"]), date.fromisoformat(summary["end"])
    params = sim.world_parameters(summary)
    actions = settings.actions
    person_rng, effect_rng, world_rng, _ = np.random.default_rng(seed).spawn(4)
    months = (end.year - start.year) * 12 + end.month - start.month
    persons = sim.draw_persons(person_rng, customers, start, months, params)
    pairs = sim.action_channel_pairs(actions)
    effects = sim.true_treatment_effects(persons, actions, effect_rng)
    effect_matrix = effects["effect"].to_numpy().reshape(len(pairs), customers).T
    world = sim._World(persons, effect_matrix, pairs, start, params, world_rng)
    at_campaigns: dict[date, tuple[np.ndarray, np.ndarray]] = {}
    campaign = world._campaign

    def recorded_campaign(day: int, day_date: date, events: sim._Events) -> None:
        hazard = world.hazard(day)
        p0_now = np.clip(1.0 - np.exp(-params.treatment_horizon_days * hazard), 1e-4, P1_CEILING)
        at_campaigns[day_date] = (world.alive.copy(), p0_now)
        campaign(day, day_date, events)

    world._campaign = recorded_campaign  # observes, changes nothing (same random stream)
    days = pd.date_range(start, end, inclusive="left")
    for day, timestamp in enumerate(days):
        world.step(day, timestamp.date(), sim._Events())

    truth = pd.read_parquet(settings.truth_dir / "persons.parquet", columns=["churned_at"])
    replayed = world.churn_day >= 0
    if not np.array_equal(replayed, truth["churned_at"].notna().to_numpy()):
        raise TruthMismatchError(
            "replaying the simulation does not reproduce truth/persons.parquet; re-run "
            "`omniretain simulate` with this code"
        )
    hazard = world.hazard(len(days))
    p0 = np.clip(1.0 - np.exp(-params.treatment_horizon_days * hazard), 1e-4, P1_CEILING)
    return EndState(
        person_ids=persons["person_id"].to_numpy(),
        alive=world.alive.copy(),
        churn_probability_90d=p0,
        pairs=[(action.name, channel) for action, channel in pairs],
        effects=effect_matrix,
        at_campaigns=at_campaigns,
    )


def retained_gain(p0: np.ndarray, effect: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Reduction of the 90-day churn probability by a treatment (0 for the already churned)."""
    p1 = np.clip(p0 + effect, P1_FLOOR, P1_CEILING)
    return np.where(alive, p0 - p1, 0.0)


def net_gain_matrix(
    p0: np.ndarray,
    effects: np.ndarray,
    alive: np.ndarray,
    value: np.ndarray,
    costs: np.ndarray,
) -> np.ndarray:
    """(persons x pairs) true incremental retained value of each treatment, minus its cost."""
    gain = retained_gain(p0[:, None], effects, alive[:, None])
    return gain * value[:, None] - costs[None, :]


def policy_value(net_gain: np.ndarray, choice: np.ndarray) -> float:
    """Total true net gain of a policy; ``choice`` is a pair index or ``NO_CHOICE`` per row."""
    treated = choice != NO_CHOICE
    return float(net_gain[np.flatnonzero(treated), choice[treated]].sum())


def limit_contacts(choice: np.ndarray, priority: np.ndarray, contacts: int) -> np.ndarray:
    """Keep the ``contacts`` treated rows of highest ``priority``; the rest get no action."""
    treated = np.flatnonzero(choice != NO_CHOICE)
    keep = treated[np.argsort(-priority[treated], kind="stable")[:contacts]]
    limited = np.full_like(choice, NO_CHOICE)
    limited[keep] = choice[keep]
    return limited


def random_policy(allowed: np.ndarray, contacts: int, rng: np.random.Generator) -> np.ndarray:
    """``contacts`` random persons with an allowed pair get a random allowed pair."""
    choice = np.argmax(np.where(allowed, rng.random(allowed.shape), -1.0), axis=1)
    choice = np.where(allowed.any(axis=1), choice, NO_CHOICE)
    return limit_contacts(choice, rng.random(len(choice)), contacts)


def top_risk_policy(
    allowed: np.ndarray, risk: np.ndarray, average_value: np.ndarray, contacts: int
) -> np.ndarray:
    """The ``contacts`` riskiest persons get the allowed pair that is best on average."""
    ranked_pairs = np.where(allowed, average_value[None, :], -np.inf)
    choice = np.where(allowed.any(axis=1), np.argmax(ranked_pairs, axis=1), NO_CHOICE)
    return limit_contacts(choice, risk, contacts)


def oracle_policy(net_gain: np.ndarray, allowed: np.ndarray, contacts: int) -> np.ndarray:
    """Knows the true effects: the ``contacts`` best positive (person, pair) net gains."""
    values = np.where(allowed, net_gain, -np.inf)
    best = np.argmax(values, axis=1)
    best_value = values[np.arange(len(values)), best]
    choice = np.where(best_value > 0, best, NO_CHOICE)
    return limit_contacts(choice, best_value, contacts)


def customer_persons(settings: Settings) -> pd.DataFrame:
    """``customer_id -> person_id``: the person behind most of a customer's records."""
    import duckdb

    truth = settings.truth_dir / "records.parquet"
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            f"""SELECT customer_id, arg_max(person_id, n) AS person_id FROM (
                  SELECT rc.customer_id, t.person_id, count(*) AS n
                  FROM record_customers rc
                  JOIN read_parquet('{truth}') t
                    ON t.feed = rc.source_feed AND t.record_key = rc.source_id
                  GROUP BY ALL)
                GROUP BY customer_id"""
        ).df()


def snips_incremental_value(
    matches_policy: np.ndarray,
    is_control: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    baseline: np.ndarray | None = None,
) -> float:
    """Per-customer value of a policy over no action, from logged randomised data.

    Self-normalised inverse propensity (SNIPS) for both the policy and no action: each logged
    unit whose logged action is the one the policy would choose counts with weight
    ``1 / propensity``; no action is valued the same way on the control units. Self-normalising
    removes the need to know the share of customers the logger left out of the experiment.

    Args:
        matches_policy: the logged (action, channel) is the policy's choice (control rows match
            a policy that chooses no action).
        is_control: the unit was in the randomised control group (no action).
        propensity: probability of the logged assignment.
        reward: the unit's outcome in currency (e.g. -churned x value - cost).
        baseline: optional prediction of the reward from the unit's features alone (the same
            whatever the action: e.g. -P(churn) x value). Subtracted from the reward on both
            sides (doubly robust with an action-independent outcome model): unbiased whatever
            its quality, and the closer it is to the reward, the smaller the variance.
    """
    weights = 1.0 / np.asarray(propensity, dtype=np.float64)
    reward = np.asarray(reward, dtype=np.float64)
    if baseline is not None:
        reward = reward - np.asarray(baseline, dtype=np.float64)

    def snips(mask: np.ndarray) -> float:
        total = weights[mask].sum()
        return float((weights[mask] * reward[mask]).sum() / total) if total > 0 else 0.0

    return snips(np.asarray(matches_policy, bool)) - snips(np.asarray(is_control, bool))


def ipw_incremental_value(
    policy_treats: np.ndarray,
    matches_policy: np.ndarray,
    is_control: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    baseline: np.ndarray | None = None,
) -> float:
    """Per-customer value of a policy over no action, from logged randomised data, counting
    only the units the policy would treat (where it chooses no action the difference is 0).

    For a unit the policy treats: ``+(reward - baseline) / propensity`` if the logged action is
    the policy's, ``-(reward - baseline) / propensity`` if it was a control unit; the sum is
    divided by the estimated population ``sum(1 / propensity)`` over the control units (the
    logs need not say how many customers stayed out of the experiment). Less noisy than
    :func:`snips_incremental_value` when the policy leaves many customers alone, and the
    baseline (an action-independent prediction of the reward, e.g. ``-P(churn) x value``)
    removes the customers' own variation without biasing the estimate.
    """
    treats = np.asarray(policy_treats, bool)
    control = np.asarray(is_control, bool)
    weights = 1.0 / np.asarray(propensity, dtype=np.float64)
    residual = np.asarray(reward, dtype=np.float64)
    if baseline is not None:
        residual = residual - np.asarray(baseline, dtype=np.float64)
    population = weights[control].sum()
    if population <= 0:
        return 0.0
    treated_side = treats & np.asarray(matches_policy, bool) & ~control
    control_side = treats & control
    return float(
        ((weights * residual)[treated_side].sum() - (weights * residual)[control_side].sum())
        / population
    )


def doubly_robust_incremental_value(
    policy_treats: np.ndarray,
    matches_policy: np.ndarray,
    is_control: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    predicted_control: np.ndarray,
    predicted_gain: np.ndarray,
) -> float:
    """Per-customer value of a policy over no action: the outcome model's own prediction,
    corrected by inverse-propensity weighted residuals (doubly robust).

    ``predicted_control`` predicts the reward without action (e.g. ``-P(churn) x value``) and
    ``predicted_gain`` the reward gained by the policy's choice (e.g. the uplift model's
    reduction of P(churn) x value), for every logged unit. The direct part is the mean predicted
    gain over the units the policy treats (every logged unit counts: the experiment drew them at
    random); the correction is :func:`ipw_incremental_value` of the residuals, which removes the
    outcome model's bias whatever its quality. The closer the predictions, the smaller the noise
    of the correction; with ``predicted_gain = 0`` it is :func:`ipw_incremental_value` with a
    baseline.
    """
    treats = np.asarray(policy_treats, bool)
    gain = np.asarray(predicted_gain, dtype=np.float64)
    matched = np.asarray(matches_policy, bool) & ~np.asarray(is_control, bool)
    residual = np.asarray(reward, dtype=np.float64) - np.asarray(predicted_control, np.float64)
    residual = residual - np.where(matched, gain, 0.0)  # the treated side predicts q0 + gain
    direct = float(np.where(treats, gain, 0.0).mean()) if len(treats) else 0.0
    return direct + ipw_incremental_value(treats, matches_policy, is_control, propensity, residual)
