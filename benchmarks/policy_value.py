"""Decision quality on the simulator: incremental retained value of five targeting policies.

Runs the pipeline (simulate, ingest, build-features, train) on a fresh simulated population in
its own state folder, decides for the latest snapshot as the service does (churn and repurchase
champions, the uplift champion if there is one), then values each policy against the
simulator's truth (:mod:`omniretain.policy_sim`): no action, random action, top-risk customers
get the on-average best action, our engine, and the oracle that knows the true effects. Every
policy faces the same consent and catalogue eligibility rules; the targeting policies contact
as many customers as our engine does. The simulated retailer randomises more of its monthly
campaigns than the default settings (50% random arms + 15% control instead of 25% + 10%: the
documented ``simulation.campaign_*_share`` settings), so that there is enough randomised
history to learn the uplift model from and to estimate policies offline.

    python benchmarks/policy_value.py [--quick] [--diagnose] [--state-dir DIR] [--customers N]

Default population 4,000 persons over 12 months (12,838 randomised sends with outcomes; about
22 minutes under a load average of 13 on 2 cores, 4 minutes of CPU); ``--quick`` 1,500 persons
(4,795 sends; 14 minutes under load 10, 3.7 minutes of CPU).

Last line: JSON with no_action, random, top_risk, ours, oracle, ips_estimate_ours.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, benchmark_parser, telemetry_off


def run_pipeline(
    state_dir: Path, customers: int, months: int, seed: int, treated: float, control: float
) -> None:
    cli = [str(Path(sys.executable).with_name("omniretain")), "--state-dir", str(state_dir)]
    env = os.environ | {  # the documented simulator settings (configs/omniretain.yaml)
        "OMNIRETAIN_SIMULATION__CAMPAIGN_TREATED_SHARE": str(treated),
        "OMNIRETAIN_SIMULATION__CAMPAIGN_CONTROL_SHARE": str(control),
    }
    for step in (
        ["simulate", "--customers", str(customers), "--months", str(months), "--seed", str(seed)],
        ["ingest"],
        ["build-features"],
        ["train"],
    ):
        started = time.perf_counter()
        subprocess.run(cli + step, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
        print(f"  {step[0]}: {time.perf_counter() - started:.0f} s", file=sys.stderr)


def load_uplift(settings):
    """The uplift champion as the service loads it, or None (the service then uses the
    catalogue's priors)."""
    from training.registry import ModelNotFoundError, load_champion

    try:
        return load_champion(settings, "uplift")
    except (ModelNotFoundError, ValueError):
        return None


def our_decisions(settings, frame, churn, repurchase, uplift):
    """The engine's choice per row, as the service makes it: the churn and repurchase
    champions, and the uplift model's per-customer reductions when one is given (else the
    catalogue's ``base_uplift`` with its at-risk gate). Returns (decisions, churn_p)."""
    from serving.batch import decide_batch, feature_matrix, predict_probability

    churn_p = predict_probability(churn, feature_matrix(frame, churn.feature_names))
    repurchase_p = predict_probability(repurchase, feature_matrix(frame, repurchase.feature_names))
    if uplift is None:
        return decide_batch(frame, churn_p, repurchase_p, settings.actions), churn_p
    from serving.decision import decision_table, uplift_matrix

    # the service's own path: the model's arms, the catalogue prior x movable share elsewhere
    reduction = uplift_matrix(
        uplift.effects(feature_matrix(frame, uplift.feature_names)),
        uplift.arms,
        decision_table(settings.actions),
        churn_p,
        repurchase_p,
        features=frame,
    )
    return decide_with_reductions(settings, frame, churn_p, repurchase_p, reduction), churn_p


def decide_with_reductions(settings, frame, churn_p, repurchase_p, reduction):
    """The engine given per-customer absolute reductions of P(churn) (customers x columns),
    valued as they are (``reduction x value - cost``) with no at-risk gate, as the service
    uses an uplift champion (:data:`serving.decision.MODEL_UPLIFT_CONTEXT`)."""
    from serving.batch import decide_batch
    from serving.decision import MODEL_UPLIFT_CONTEXT

    return decide_batch(
        frame, churn_p, repurchase_p, settings.actions, reduction, MODEL_UPLIFT_CONTEXT
    )


def diagnose(settings, frame, churn_p, repurchase_p, gain, net_gain, allowed, alive_p0) -> None:
    """What the features could give (diagnosis only, reads the truth; never the product path).

    Runs the engine on (a) the true realised reductions ``gain`` (persons x columns: ``p0 - p1``,
    0 for the already churned), the engine's own ceiling; (b) a regression of that truth on the
    observed features (LightGBM per column, cross-fitted on two halves of the persons): what a
    perfect learner could reach from these features with this many persons; (c) each arm's mean
    true effect and the true effects, capped by the churn score and by the product's retainable
    risk (:func:`serving.decision.retainable_risk`), i.e. what a perfect average-effect model
    gives with each notion of who can be moved; and prints how both scores relate to the true
    retainable risk ``alive x p0``.
    """
    import lightgbm as lgb

    from omniretain.policy_sim import NO_CHOICE, oracle_policy, policy_value
    from serving.decision import decision_table, retainable_risk
    from training.train import feature_columns

    features = feature_columns(frame)
    X = frame[features].to_numpy(dtype=float, na_value=np.nan)
    folds = np.random.default_rng(0).integers(0, 2, len(frame))
    fitted = np.zeros_like(gain)
    for fold in range(2):
        for j in range(gain.shape[1]):
            regression = lgb.LGBMRegressor(
                n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=20
            )
            regression.set_params(verbose=-1, n_jobs=1)
            regression.fit(X[folds != fold], gain[folds != fold, j])
            fitted[folds == fold, j] = regression.predict(X[folds == fold])
    retainable = retainable_risk(frame, churn_p)
    retention = decision_table(settings.actions).is_retention[None, :]
    mean_effect = np.array(
        [
            gain[allowed[:, j], j].mean() if allowed[:, j].any() else 0.0
            for j in range(gain.shape[1])
        ]
    )
    per_arm = np.broadcast_to(mean_effect, gain.shape)

    def capped(reduction, risk):  # a retention reduction never exceeds who can be moved
        return np.where(retention, np.minimum(reduction, risk[:, None]), reduction)

    print("diagnosis (reads the truth; never used by the product):")
    for label, reduction in (
        ("engine on the true realised reductions", gain),
        ("engine on a regression of them on the features", fitted),
        ("true reductions capped by the churn score", capped(gain, churn_p)),
        ("true reductions capped by the retainable risk", capped(gain, retainable)),
        (
            "arm mean true reduction capped by the churn score",
            capped(per_arm, churn_p),
        ),
        ("arm mean capped by the retainable risk", capped(per_arm, retainable)),
    ):
        choice = decide_with_reductions(settings, frame, churn_p, repurchase_p, reduction).column
        choice = np.where(choice >= 0, choice, NO_CHOICE)
        oracle = policy_value(net_gain, oracle_policy(net_gain, allowed, int((choice >= 0).sum())))
        value = policy_value(net_gain, choice)
        correlation = np.corrcoef(reduction[allowed], gain[allowed])[0, 1]
        print(
            f"  {label:<50}{value:>12,.2f}  {value / oracle:.0%} of the oracle at equal "
            f"contacts; correlation with the truth {correlation:.2f}"
        )
    best = gain.max(axis=1)
    for label, score in (("churn score", churn_p), ("retainable risk", retainable)):
        print(
            f"  correlation of the {label} with alive x p0 "
            f"{np.corrcoef(score, alive_p0)[0, 1]:.2f}, with the best retainable reduction "
            f"{np.corrcoef(score, best)[0, 1]:.2f}"
        )


def ips_estimate_ours(settings, churn, repurchase, uplift, end) -> dict[str, float]:
    """Off-policy estimates of our policy's incremental value per customer from the randomised
    monthly campaigns the simulated retailer logged (``campaigns`` in the warehouse).

    For each campaign with 90 days of follow-up: our choice from the newest snapshot before it
    (point in time), the logged (action, channel) and propensity, and the retained-value reward
    ``-(churned within 90 days) x spend_365d`` (churn from the truth: the outcome, not a model of
    it). Two estimators (``omniretain.policy_sim``):

    * ``ipw``: inverse propensity with a baseline ``-P(churn) x spend_365d`` from the churn score
      (the same for every action, so it removes variance, not value);
    * ``dr``: doubly robust, the engine's own expected gain of its choice (expected value plus
      cost) corrected by the inverse-propensity weighted residuals.

    The cost of our choices is known for every unit and is subtracted exactly. Returns each
    estimate with its bootstrap standard error, the logged units and the support share, and
    ``truth``: what the estimates estimate, from the simulator (``end.at_campaigns``): the mean
    over the logged units of the true net gain of our choice at that campaign's send (0 where
    ours does nothing). It is not the benchmark's ``ours``, which values the last snapshot's
    decisions on the end state: another population of customers and moments.
    """
    import duckdb
    import pandas as pd

    from omniretain.policy_sim import (
        customer_persons,
        doubly_robust_incremental_value,
        ipw_incremental_value,
        retained_gain,
    )
    from serving.batch import features_path

    horizon = pd.Timedelta(days=settings.labels.churn_window_days)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        logged = con.execute(
            "SELECT customer_id, occurred_at, action, channel, propensity, is_control "
            "FROM campaigns WHERE randomised"
        ).df()
        data_end = con.execute("SELECT max(occurred_at) FROM purchases").fetchone()[0]
    features = pd.read_parquet(features_path(settings))
    features["event_timestamp"] = features["event_timestamp"].dt.tz_convert(None)
    persons = pd.read_parquet(settings.truth_dir / "persons.parquet")
    # The logger's support: the campaign drew among the pairs it could deliver (the simulator's
    # rules, with the consents given at joining; later withdrawals are rare). A choice of ours
    # outside it (say an offer on the web for a store-only customer) was never logged.
    deliverable = {
        "email": persons["consent_email_at_join"],
        "sms": persons["consent_sms_at_join"],
        "app": persons["consent_app_at_join"] & persons["prefers_app"],
        "call_center": persons["consent_call_center_at_join"],
        "store": persons["loyalty_card"].notna(),
        "web": persons["prefers_web"] | persons["prefers_app"],
    }
    persons = persons[["person_id", "churned_at"]].assign(
        **{f"deliverable_{channel}": mask.to_numpy() for channel, mask in deliverable.items()}
    )
    logged = logged.merge(customer_persons(settings), on="customer_id").merge(
        persons, on="person_id"
    )
    logged = logged[logged["occurred_at"] + horizon <= pd.Timestamp(data_end)]
    costs = {action.name: action.cost for action in settings.actions}
    parts = []
    cutoffs = sorted(features["event_timestamp"].unique())
    for _month, group in logged.groupby(logged["occurred_at"].dt.to_period("M")):
        start = group["occurred_at"].min()
        earlier = [c for c in cutoffs if c <= start]
        if not earlier:
            continue
        snapshot = features[features["event_timestamp"] == earlier[-1]]
        snapshot = snapshot[snapshot["customer_id"].isin(group["customer_id"])].reset_index(
            drop=True
        )
        decisions, churn_p = our_decisions(settings, snapshot, churn, repurchase, uplift)
        value = snapshot["spend_365d"].fillna(0.0).clip(lower=0.0)
        cost = pd.Series(decisions.action).map(costs).fillna(0.0).to_numpy()
        ours = pd.DataFrame(
            {
                "customer_id": snapshot["customer_id"],
                "our_action": decisions.action,
                "our_channel": decisions.channel,
                "our_cost": cost,
                # the engine's expected retained value of its choice (its expected value + cost)
                "our_gain": np.where(decisions.column >= 0, decisions.expected_value + cost, 0.0),
                "value": value,
                "baseline": -churn_p * value.to_numpy(),  # control variate: the churn score
            }
        )
        parts.append(group.merge(ours, on="customer_id"))
    units = pd.concat(parts, ignore_index=True)
    person_index = {person: i for i, person in enumerate(end.person_ids)}
    pair_index = {pair: i for i, pair in enumerate(end.pairs)}
    persons_of_units = units["person_id"].map(person_index).to_numpy()
    ours_pair = np.array(
        [
            pair_index.get(pair, -1)
            for pair in zip(units["our_action"], units["our_channel"], strict=True)
        ]
    )
    true_gain = np.zeros(len(units))
    for day, rows in units.groupby(units["occurred_at"].dt.date).indices.items():
        alive_then, p0_then = end.at_campaigns[day]
        who, pair = persons_of_units[rows], ours_pair[rows]
        acts = pair >= 0
        effect = end.effects[who[acts], pair[acts]]
        gain = retained_gain(p0_then[who[acts]], effect, alive_then[who[acts]])
        true_gain[rows[acts]] = gain * units["value"].to_numpy()[rows[acts]]
    truth = float((true_gain - units["our_cost"].to_numpy()).mean())
    churned = units["churned_at"].notna() & (units["churned_at"] <= units["occurred_at"] + horizon)
    matches = (units["action"] == units["our_action"]) & (units["channel"] == units["our_channel"])
    matches |= units["is_control"] & (units["our_action"] == "no_action")
    treats = (units["our_action"] != "no_action").to_numpy()
    supported = np.zeros(len(units), dtype=bool)
    for channel in deliverable:
        on_channel = (units["our_channel"] == channel).to_numpy()
        supported |= on_channel & units[f"deliverable_{channel}"].to_numpy(dtype=bool)
    # Value where ours has logging support, extrapolated to all of its contacts.
    support_share = float(supported[treats].mean()) if treats.any() else 1.0
    arrays = (
        treats & supported,
        matches.to_numpy(),
        units["is_control"].to_numpy(dtype=bool),
        units["propensity"].to_numpy(dtype=float),
        # -churned x value: ``-churned`` of a boolean Series is its negation (not churned),
        # which made the reward the retained value while the baseline predicts minus the lost
        # one: no bias, but a control variate of the wrong sign that multiplied the noise.
        -(churned.to_numpy(dtype=float) * units["value"].to_numpy(dtype=float)),
        units["baseline"].to_numpy(dtype=float),
        units["our_gain"].to_numpy(dtype=float),
        units["our_cost"].to_numpy(dtype=float),
    )

    def estimates(treats, matched, control, propensity, retained, baseline, gain, cost):
        # Costs of our choices are known for every unit: only the churn part needs weighting.
        scale, paid = max(support_share, 1e-9), float(cost.mean())
        ipw = ipw_incremental_value(treats, matched, control, propensity, retained, baseline)
        dr = doubly_robust_incremental_value(
            treats, matched, control, propensity, retained, baseline, gain
        )
        return np.array([ipw / scale - paid, dr / scale - paid])

    point = estimates(*arrays)
    rng = np.random.default_rng(0)  # bootstrap over logged units: the estimates' noise
    resamples = np.array(
        [
            estimates(*(a[sample] for a in arrays))
            for sample in (rng.integers(0, len(units), len(units)) for _ in range(200))
        ]
    )
    error = resamples.std(axis=0)
    return {
        "ipw": float(point[0]),
        "ipw_se": float(error[0]),
        "dr": float(point[1]),
        "dr_se": float(error[1]),
        "units": len(units),
        "matched": int((arrays[0] & arrays[1] & ~arrays[2]).sum()),
        "support_share": support_share,
        "truth": truth,
    }


def main() -> None:
    parser = benchmark_parser(
        __doc__,
        state_dir="reuse the trained state in DIR, or run the pipeline into it when it has none",
        quick="small population",
    )
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=101, help="a population unlike the default")
    parser.add_argument(
        "--campaign-treated-share",
        type=float,
        default=0.5,
        help="share of known persons in each simulated monthly campaign's random arms "
        "(simulation.campaign_treated_share; the product default is 0.25)",
    )
    parser.add_argument(
        "--campaign-control-share",
        type=float,
        default=0.15,
        help="share held out as control in each simulated campaign (default setting: 0.10)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also run the engine on the true effects and on a regression of them on the "
        "features (reads the truth: what the features could give)",
    )
    parser.add_argument(
        "--without-uplift-model",
        action="store_true",
        help="ours decides with the catalogue priors even when an uplift champion exists (what "
        "the service does without one): compares the priors' path across states",
    )
    args = parser.parse_args()
    telemetry_off()

    from omniretain.policy_sim import (
        NO_CHOICE,
        customer_persons,
        net_gain_matrix,
        oracle_policy,
        policy_value,
        random_policy,
        replay_end_state,
        top_risk_policy,
    )
    from omniretain.settings import load_settings
    from serving.batch import (
        action_channel_columns,
        features_path,
        read_latest_snapshot,
    )
    from serving.decision import DecisionContext, allowed_matrix, decision_table
    from training.registry import load_champion

    state_dir = args.state_dir
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="omniretain_policy_value_"))
    if not (load_settings(state_dir=state_dir).truth_dir / "simulation.json").exists():
        customers = args.customers or (1500 if args.quick else 4000)
        months = 12 if args.quick else args.months
        print(
            f"fresh population in {state_dir}: {customers} persons, {months} months, "
            f"seed {args.seed}, "
            f"campaigns {args.campaign_treated_share:.0%} random arms + "
            f"{args.campaign_control_share:.0%} control",
            file=sys.stderr,
        )
        run_pipeline(
            state_dir,
            customers,
            months,
            args.seed,
            args.campaign_treated_share,
            args.campaign_control_share,
        )
    settings = load_settings(state_dir=state_dir)

    started = time.perf_counter()
    end = replay_end_state(settings)
    mapping = customer_persons(settings)
    frame = read_latest_snapshot(features_path(settings))
    frame = frame.merge(mapping, on="customer_id", how="inner")
    frame = frame.drop_duplicates("person_id").reset_index(drop=True)  # one decision per person
    person_index = {person: i for i, person in enumerate(end.person_ids)}
    rows = frame["person_id"].map(person_index).to_numpy()

    churn = load_champion(settings, "churn").model
    repurchase = load_champion(settings, "repurchase").model
    loaded_uplift = None if args.without_uplift_model else load_uplift(settings)
    uplift = loaded_uplift.model if loaded_uplift else None
    decisions, churn_p = our_decisions(settings, frame, churn, repurchase, uplift)

    columns = action_channel_columns(settings.actions)
    truth_column = {pair: i for i, pair in enumerate(end.pairs)}
    effects = end.effects[rows][:, [truth_column[(c.action.name, c.channel)] for c in columns]]
    costs = np.array([c.action.cost for c in columns])
    value = np.maximum(frame["spend_365d"].fillna(0.0).to_numpy(dtype=float), 0.0)
    net_gain = net_gain_matrix(
        end.churn_probability_90d[rows], effects, end.alive[rows], value, costs
    )
    # Every policy faces the same hard constraints as ours: consent and the catalogue's
    # eligibility rules (a call-back needs an open case, a cart reminder a recent cart...).
    # The at-risk gate of the catalogue prior is our engine's own choice, not a constraint.
    allowed = allowed_matrix(
        frame, churn_p, decision_table(settings.actions), DecisionContext(at_risk_threshold=0.0)
    )

    ours = np.where(decisions.column >= 0, decisions.column, NO_CHOICE)
    if not allowed[np.flatnonzero(ours != NO_CHOICE), ours[ours != NO_CHOICE]].all():
        raise AssertionError("our engine chose an action the constraints forbid")
    contacts = int((ours != NO_CHOICE).sum())
    average_net_gain = np.where(allowed, net_gain, np.nan)
    average_net_gain = np.nanmean(np.where(allowed.any(axis=0), average_net_gain, 0.0), axis=0)
    rng = np.random.default_rng(0)
    policies = {
        "no_action": np.full(len(frame), NO_CHOICE),
        "random": random_policy(allowed, contacts, rng),
        "top_risk": top_risk_policy(allowed, churn_p, average_net_gain, contacts),
        "ours": ours,
        "oracle": oracle_policy(net_gain, allowed, contacts),
    }
    unlimited_oracle = oracle_policy(net_gain, allowed, len(frame))
    figures: dict[str, float | None] = {
        name: round(policy_value(net_gain, choice), 2) for name, choice in policies.items()
    }
    offline = ips_estimate_ours(settings, churn, repurchase, uplift, end)
    figures["ips_estimate_ours"] = round(offline["ipw"] * len(frame), 2)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]}; state {state_dir}"
    )
    print(
        f"{len(frame)} customers at the last snapshot, {int(end.alive[rows].sum())} alive; "
        f"every targeting policy contacts {contacts} (as many as ours); valued in "
        f"{time.perf_counter() - started:.1f} s"
    )
    simulation = json.loads((settings.truth_dir / "simulation.json").read_text())
    print(
        f"simulated campaigns: {simulation.get('campaign_treated_share', 0.25):.0%} random arms, "
        f"{simulation.get('campaign_control_share', 0.10):.0%} control"
    )
    print(
        "ours decides with "
        + (f"uplift model v{loaded_uplift.version}" if loaded_uplift else "catalogue priors")
        + ("" if loaded_uplift else " (no uplift champion, or --without-uplift-model)")
    )
    print(f"{'policy':<12}{'contacts':>10}{'incremental value':>20}{'vs oracle':>11}")
    oracle = figures["oracle"] or 0.0
    for name, choice in policies.items():
        share = f"{figures[name] / oracle:.0%}" if oracle > 0 else "-"
        print(f"{name:<12}{int((choice != NO_CHOICE).sum()):>10}{figures[name]:>20,.2f}{share:>11}")
    print(
        f"(oracle without the contact budget: {int((unlimited_oracle != NO_CHOICE).sum())} "
        f"contacts, {policy_value(net_gain, unlimited_oracle):,.2f})"
    )
    n = len(frame)
    print(
        f"off-policy estimates of ours from {offline['units']:,} logged randomised campaign "
        f"units ({offline['matched']:,} treated as ours would), per customer-campaign x {n:,} "
        f"customers (+- bootstrap s.e., [95% interval]); {offline['support_share']:.0%} of our "
        "contacts had logging support (the rest extrapolated):"
    )
    print(
        f"  {'truth of the same estimand':<26}{offline['truth'] * n:>12,.2f}  (ours at the logged "
        "campaigns' sends, from the simulator; the table's ours values the end state)"
    )
    for key, label in (("ipw", "IPS, churn-score baseline"), ("dr", "doubly robust")):
        estimate, error = offline[key] * n, offline[f"{key}_se"] * n
        low, high = estimate - 1.96 * error, estimate + 1.96 * error
        covered = "covers" if low <= offline["truth"] * n <= high else "MISSES"
        print(
            f"  {label:<26}{estimate:>12,.2f} +- {error:,.0f} [{low:,.0f}, {high:,.0f}] "
            f"{covered} the truth"
        )
    if figures["top_risk"]:
        print(f"ours / top_risk = {figures['ours'] / figures['top_risk']:.2f}")
    if args.diagnose:
        from omniretain.policy_sim import retained_gain
        from serving.batch import feature_matrix, predict_probability

        repurchase_p = predict_probability(
            repurchase, feature_matrix(frame, repurchase.feature_names)
        )
        p0, alive = end.churn_probability_90d[rows], end.alive[rows]
        gain = retained_gain(p0[:, None], effects, alive[:, None])
        diagnose(settings, frame, churn_p, repurchase_p, gain, net_gain, allowed, alive * p0)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
