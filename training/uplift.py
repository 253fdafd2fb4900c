"""Action response (uplift) models from the randomised campaign history.

**Sign convention:** an effect is the change of the customer's probability of churning (no
purchase in the next ``labels.churn_window_days`` days) caused by sending that action on that
channel, compared with sending nothing: **negative = the action retains**, positive = it pushes
the customer away. The same convention as the simulator's ``treatment_effects.parquet``.

Data: every send of the ``campaigns`` table (treated arms and the randomised control group
``no_action``/``none``), the customer's point-in-time features at the send (the last snapshot
at or before it) and the outcome read from ``purchases`` after it. Sends whose outcome window is
not fully observed are left out.

Three learners are fitted and measured on the last campaigns held out (Qini coefficient per arm),
and on the simulator against the true effects (``docs/models.md``):

* **S-learner** (single model with the arm as a feature, interactions learned by the trees):
  every send informs every arm, which matters when an arm has a few hundred sends;
* **T-learner**: one model per arm and one for the controls;
* **interaction**: one logistic model shared by every arm over an arm-free base risk, the action
  and the channel each adding a term linear in a few customer traits (:data:`EFFECT_MODIFIERS`):
  about 130 coefficients, for logs too small for trees per arm.

The product uses the **S-learner** (:data:`LEARNER`): on the simulated retailer (3,000 persons,
15 months, 8,282 sends with observed outcomes) its estimates correlated with the true effects at
0.20 against 0.03 for the T-learner; on the benchmark's 1,500 persons (4,795 sends) none of the
three finds per-customer signal (correlations near 0, every held-out Qini within noise of 0), and
the champion gate keeps such a model out of the decisions. Held-out Qini of the S and T learners
is logged on every run, so the choice can be revisited on a retailer's own logs. The registered
:class:`UpliftModel` answers ``predict(row) -> {(action, channel): effect}`` (numpy and one
booster call, one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.labels import to_utc_naive

if TYPE_CHECKING:
    import lightgbm as lgb

    from omniretain.settings import Action, Settings

CONTROL_ARM = ("no_action", "none")
OUTCOME = "churned"
ARM_FEATURE = "uplift_arm"
HOLDOUT_CAMPAIGNS = 2
LEARNER = "s_learner"  # chosen by measurement against the simulator's true effects
LEARNERS = ("s_learner", "t_learner")  # compared on every training run (held-out Qini)
# "interaction" too can be fitted (fit_uplift); measured by the benchmark, not on every run: its
# out-of-fold base risk costs about three S-learner fits, and it did not do better (docs/models.md)
ALL_LEARNERS = (*LEARNERS, "interaction")
PREDICTION_THREADS = 1
UPLIFT_LIGHTGBM = {
    "n_estimators": 100,
    "learning_rate": 0.08,
    "num_leaves": 15,
    "min_child_samples": 60,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
}

Arm = tuple[str, str]


@dataclass(frozen=True)
class EffectModifier:
    """A customer trait an action's effect may depend on, read from the feature columns:
    ``column``, divided by ``per`` (a share of it, ``per`` floored at 1), ``log1p`` if ``log``."""

    name: str
    column: str
    per: str | None = None
    log: bool = False

    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.per is None else (self.column, self.per)

    def values(self, matrix: np.ndarray, position: dict[str, int]) -> np.ndarray:
        value = np.nan_to_num(matrix[:, position[self.column]], nan=0.0)
        if self.per is not None:
            value = value / np.maximum(np.nan_to_num(matrix[:, position[self.per]], nan=0.0), 1.0)
        return np.log1p(np.maximum(value, 0.0)) if self.log else value


# The few traits through which who responds to what is read (the interaction learner): how
# engaged (opens, clicks, visits, recency), how price-driven (promotion use), how much service
# they ask for, and where they shop (app and store shares: what a channel can reach).
EFFECT_MODIFIERS: tuple[EffectModifier, ...] = (
    EffectModifier("email_open_rate", "email_open_rate_90d"),
    EffectModifier("email_click_rate", "email_click_rate_90d"),
    EffectModifier("sms_click_rate", "sms_click_rate_90d"),
    EffectModifier("promotion_share", "promo_share_365d"),
    EffectModifier("service_contacts", "contacts_90d", log=True),
    EffectModifier("app_share", "purchases_365d_app", per="purchases_365d"),
    EffectModifier("store_share", "purchases_365d_store", per="purchases_365d"),
    EffectModifier("sessions", "sessions_90d", log=True),
    EffectModifier("recency", "days_since_last_purchase", log=True),
    EffectModifier("frequency", "purchases_365d", log=True),
)
INTERACTION_C = 0.3  # inverse L2 strength of the interaction learner (standardised traits)
BASE_FOLDS = 5  # out-of-fold base risk for the interaction learner's fit


@dataclass
class InteractionEffects:
    """``logit P(churn) = a + b x base logit + w'z + (1, z)'(theta_action + theta_channel)``:
    one logistic model shared by every arm, the action and the channel each adding a term
    linear in a few standardised traits ``z``. A few hundred sends per arm inform ``theta`` of
    an action through every channel it was sent on (and a channel through every action)."""

    modifiers: list[EffectModifier]
    mean: np.ndarray
    scale: np.ndarray
    intercept: float
    base_weight: float
    trait_weights: np.ndarray
    action_terms: dict[str, np.ndarray]  # action -> (1 + traits) coefficients
    channel_terms: dict[str, np.ndarray]

    def traits(self, matrix: np.ndarray, position: dict[str, int]) -> np.ndarray:
        z = np.column_stack([m.values(matrix, position) for m in self.modifiers])
        return np.column_stack([np.ones(len(z)), (z - self.mean) / self.scale])

    def effects(self, traits: np.ndarray, base_logit: np.ndarray, arms: list[Arm]) -> np.ndarray:
        eta = self.intercept + self.base_weight * base_logit + traits[:, 1:] @ self.trait_weights
        control = _sigmoid(eta)
        zero = np.zeros(traits.shape[1])
        return (
            np.column_stack(
                [
                    _sigmoid(
                        eta
                        + traits
                        @ (self.action_terms.get(a, zero) + self.channel_terms.get(c, zero))
                    )
                    - control
                    for a, c in arms
                ]
            )
            if arms
            else np.zeros((len(traits), 0))
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class UpliftDataError(RuntimeError):
    """No usable campaign history (no control group, no observed outcome)."""


# ---- the send frame (pure) -----------------------------------------------------------------


def send_outcomes(
    sends: pd.DataFrame, purchases: pd.DataFrame, data_end: pd.Timestamp, window_days: int
) -> pd.DataFrame:
    """Each send whose window is observed, with ``churned`` = no purchase in ``(t, t + window]``."""
    end = to_utc_naive([data_end])[0]
    window = pd.Timedelta(days=window_days)
    frame = sends.copy()
    frame["occurred_at"] = to_utc_naive(frame["occurred_at"])
    frame = frame[frame["occurred_at"] + window <= end].reset_index(drop=True)
    bought = purchases.loc[
        ~purchases.get("is_return", pd.Series(False, purchases.index)).fillna(False).astype(bool),
        ["customer_id", "occurred_at"],
    ]
    bought = bought.assign(occurred_at=to_utc_naive(bought["occurred_at"])).sort_values(
        "occurred_at"
    )
    after = pd.merge_asof(
        frame[["occurred_at", "customer_id"]]
        .assign(row=np.arange(len(frame)))
        .sort_values("occurred_at"),
        bought.rename(columns={"occurred_at": "next_purchase"}).assign(
            occurred_at=lambda f: f["next_purchase"]
        ),
        on="occurred_at",
        by="customer_id",
        direction="forward",
        allow_exact_matches=False,
    ).sort_values("row")
    next_purchase = after["next_purchase"].to_numpy()
    within = ~pd.isna(next_purchase) & (next_purchase <= (frame["occurred_at"] + window).to_numpy())
    frame[OUTCOME] = (~within).astype(np.int64)
    return frame


def features_at_sends(sends: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Join each send with the customer's last feature snapshot at or before the send."""
    snapshots = features.assign(snapshot_at=to_utc_naive(features["event_timestamp"])).sort_values(
        "snapshot_at"
    )
    left = sends.assign(row=np.arange(len(sends))).sort_values("occurred_at")
    joined = pd.merge_asof(
        left,
        snapshots.drop(columns=["event_timestamp"], errors="ignore"),
        left_on="occurred_at",
        right_on="snapshot_at",
        by="customer_id",
        direction="backward",
    )
    return joined[joined["snapshot_at"].notna()].sort_values("row").drop(columns=["row"])


# ---- metrics (pure) ------------------------------------------------------------------------


def qini_coefficient(churned: np.ndarray, treated: np.ndarray, benefit: np.ndarray) -> float:
    """Area between the Qini curve of ``benefit`` (higher = target first) and random targeting,
    per send; the outcome counted is *retention* (1 - churned). NaN without both groups."""
    retained = 1.0 - np.asarray(churned, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    if treated.all() or not treated.any():
        return float("nan")
    order = np.argsort(-np.asarray(benefit, dtype=np.float64), kind="stable")
    t, r = treated[order], retained[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    r_t, r_c = np.cumsum(r * t), np.cumsum(r * ~t)
    qini = r_t - np.divide(r_c * n_t, n_c, out=np.zeros_like(r_c), where=n_c > 0)
    random_line = qini[-1] * np.arange(1, len(qini) + 1) / len(qini)
    return float(np.mean(qini - random_line) / len(qini))


# ---- learners ------------------------------------------------------------------------------


def _fit_classifier(X: np.ndarray, y: np.ndarray, feature_names: list[str]) -> lgb.Booster:
    import lightgbm as lgb

    from training.model import lightgbm_parameters

    classifier = lgb.LGBMClassifier(**lightgbm_parameters(UPLIFT_LIGHTGBM))
    classifier.fit(X, y, feature_name=list(feature_names))
    return classifier.booster_


@dataclass
class UpliftModel:
    """Per-arm effects on P(churn) for one feature row; negative retains (see module doc)."""

    feature_names: list[str]
    arms: list[Arm]
    learner: str  # "s_learner", "t_learner" or "interaction"
    boosters: dict[str, Any] = field(default_factory=dict)
    interaction: InteractionEffects | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)

    def _matrix(self, X: Any) -> np.ndarray:
        if hasattr(X, "columns"):
            X = X[self.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        matrix = np.asarray(X, dtype=np.float64)
        return matrix.reshape(1, -1) if matrix.ndim == 1 else matrix

    def effects(self, X: Any, predict: Any = None) -> np.ndarray:
        """Effect matrix, shape ``(n_rows, n_arms)``, columns in ``arms`` order.

        ``predict(booster, matrix)`` replaces ``booster.predict`` with one thread (batch
        scoring passes its compiled, multi-threaded one); the S-learner then scores the rows
        arm by arm on one matrix instead of stacking every row once per arm (a million rows of
        60 features and 11 arms would stack to 5 GB). The same numbers either way.
        """
        matrix = self._matrix(X)
        n = len(matrix)
        if self.learner == "s_learner" and predict is not None:
            with_arm = np.column_stack([matrix, np.zeros(n)])
            probability = np.empty((n, len(self.arms) + 1))
            for code in range(len(self.arms) + 1):  # 0 = control
                with_arm[:, -1] = code
                probability[:, code] = predict(self.boosters["s"], with_arm)
            return probability[:, 1:] - probability[:, :1]
        if predict is None:

            def predict(booster: Any, rows: np.ndarray) -> np.ndarray:
                return booster.predict(rows, num_threads=PREDICTION_THREADS)

        if self.learner == "s_learner":
            codes = np.arange(len(self.arms) + 1, dtype=np.float64)  # 0 = control
            stacked = np.repeat(matrix, len(codes), axis=0)
            stacked = np.column_stack([stacked, np.tile(codes, n)])
            probability = predict(self.boosters["s"], stacked).reshape(n, len(codes))
            return probability[:, 1:] - probability[:, :1]
        if self.learner == "interaction" and self.interaction is not None:
            base = predict(self.boosters["base"], matrix)
            position = {name: i for i, name in enumerate(self.feature_names)}
            traits = self.interaction.traits(matrix, position)
            return self.interaction.effects(traits, _logit(base), self.arms)
        if not self.arms:  # no arm had enough sends to learn from
            return np.zeros((n, 0))
        control = predict(self.boosters["control"], matrix)
        return np.column_stack(
            [predict(self.boosters[f"{a}|{c}"], matrix) - control for a, c in self.arms]
        )

    def predict(self, X_row: Any) -> dict[Arm, float]:
        """``{(action, channel): change of P(churn)}`` for one customer; negative = retains."""
        row = self.effects(X_row)[0]
        return {arm: float(value) for arm, value in zip(self.arms, row, strict=True)}


def arm_codes(frame: pd.DataFrame, arms: list[Arm]) -> np.ndarray:
    index = {arm: code + 1 for code, arm in enumerate(arms)}
    return np.array(
        [index.get((a, c), 0) for a, c in zip(frame["action"], frame["channel"], strict=True)],
        dtype=np.float64,
    )


def fit_uplift(frame: pd.DataFrame, feature_names: list[str], learner: str) -> UpliftModel:
    """Fit one learner on sends (features, ``action``, ``channel``, ``churned``)."""
    is_control = (frame["action"] == CONTROL_ARM[0]).to_numpy()
    if not is_control.any():
        raise UpliftDataError("the campaign history has no control sends: uplift is not identified")
    arms = sorted(
        {(a, c) for a, c in zip(frame["action"], frame["channel"], strict=True)} - {CONTROL_ARM}
    )
    X = frame[feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
    y = frame[OUTCOME].to_numpy(dtype=np.int64)
    if learner not in ALL_LEARNERS:
        raise ValueError(f"unknown uplift learner {learner!r}; one of {ALL_LEARNERS}")
    model = UpliftModel(list(feature_names), arms, learner)
    if learner == "interaction":
        return _fit_interaction(model, frame, X, y)
    if learner == "s_learner":
        codes = arm_codes(frame, arms)
        model.boosters["s"] = _fit_classifier(
            np.column_stack([X, codes]), y, [*feature_names, ARM_FEATURE]
        )
        return model
    if not _learnable(y[is_control]):
        raise UpliftDataError("the control sends have too few rows or one outcome only")
    model.boosters["control"] = _fit_classifier(X[is_control], y[is_control], feature_names)
    fitted: list[Arm] = []
    for action, channel in arms:
        mask = ((frame["action"] == action) & (frame["channel"] == channel)).to_numpy()
        if not _learnable(y[mask]):  # a T-learner needs enough sends of both outcomes per arm
            continue
        model.boosters[f"{action}|{channel}"] = _fit_classifier(X[mask], y[mask], feature_names)
        fitted.append((action, channel))
    model.arms = fitted
    return model


def _fit_interaction(
    model: UpliftModel, frame: pd.DataFrame, X: np.ndarray, y: np.ndarray
) -> UpliftModel:
    """The :class:`InteractionEffects` learner: a LightGBM base risk without the arm
    (out-of-fold on the sends it is fitted on), then the shared logistic model on top."""
    from sklearn.linear_model import LogisticRegression

    names = model.feature_names
    position = {name: i for i, name in enumerate(names)}
    modifiers = [m for m in EFFECT_MODIFIERS if all(c in position for c in m.columns())]
    if not modifiers:
        raise UpliftDataError("none of the effect modifiers' feature columns is in the table")
    base = np.empty(len(y))
    folds = np.random.default_rng(0).integers(0, BASE_FOLDS, len(y))
    for fold in range(BASE_FOLDS):
        inside = folds != fold
        booster = _fit_classifier(X[inside], y[inside], names)
        base[~inside] = booster.predict(X[~inside], num_threads=PREDICTION_THREADS)
    model.boosters["base"] = _fit_classifier(X, y, names)
    raw = np.column_stack([m.values(X, position) for m in modifiers])
    mean, scale = raw.mean(axis=0), raw.std(axis=0) + 1e-9
    traits = np.column_stack([np.ones(len(raw)), (raw - mean) / scale])
    actions = sorted({a for a, _ in model.arms})
    channels = sorted({c for _, c in model.arms})
    action_of, channel_of = frame["action"].to_numpy(), frame["channel"].to_numpy()
    design = np.column_stack(
        [_logit(base), traits[:, 1:]]
        + [traits * (action_of == a)[:, None] for a in actions]
        + [traits * (channel_of == c)[:, None] for c in channels]
    )
    fitted = LogisticRegression(C=INTERACTION_C, max_iter=5000).fit(design, y)
    coef, width = fitted.coef_[0], traits.shape[1]
    terms = coef[width:].reshape(len(actions) + len(channels), width)
    model.interaction = InteractionEffects(
        modifiers=modifiers,
        mean=mean,
        scale=scale,
        intercept=float(fitted.intercept_[0]),
        base_weight=float(coef[0]),
        trait_weights=coef[1:width],
        action_terms={a: terms[i] for i, a in enumerate(actions)},
        channel_terms={c: terms[len(actions) + i] for i, c in enumerate(channels)},
    )
    return model


MIN_ARM_SENDS = 30


def _learnable(outcomes: np.ndarray) -> bool:
    """Enough rows, and both outcomes present, to fit one arm's classifier."""
    return len(outcomes) >= MIN_ARM_SENDS and 0 < int(outcomes.sum()) < len(outcomes)


def heldout_qini(
    model: UpliftModel, holdout: pd.DataFrame, effects: np.ndarray | None = None
) -> dict[str, float]:
    """Qini coefficient per arm on held-out sends (that arm's sends against the controls)."""
    effects = model.effects(holdout) if effects is None else effects
    is_control = (holdout["action"] == CONTROL_ARM[0]).to_numpy()
    scores: dict[str, float] = {}
    for column, (action, channel) in enumerate(model.arms):
        arm = ((holdout["action"] == action) & (holdout["channel"] == channel)).to_numpy()
        rows = arm | is_control
        scores[f"{action}|{channel}"] = qini_coefficient(
            holdout.loc[rows, OUTCOME].to_numpy(), arm[rows], -effects[rows, column]
        )
    return scores


NULL_DRAWS = 200
NULL_QUANTILE = 0.95


def random_targeting_qini(
    model: UpliftModel, holdout: pd.DataFrame, draws: int = NULL_DRAWS, seed: int = 0
) -> float:
    """The mean Qini that random targeting reaches by chance on this holdout: the
    ``NULL_QUANTILE`` quantile over ``draws`` shuffles of the model's scores between the held-out
    customers. A mean Qini below it is within the noise of the holdout (measured: a Qini just
    above 0 promoted a model worse than the catalogue priors, ``docs/models.md``)."""
    effects = model.effects(holdout)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        per_arm = heldout_qini(model, holdout, effects[rng.permutation(len(effects))])
        means.append(np.nanmean(list(per_arm.values())) if per_arm else np.nan)
    return float(np.nanquantile(means, NULL_QUANTILE)) if np.isfinite(means).any() else 0.0


@dataclass(frozen=True)
class CataloguePriors:
    """The implicit champion: the engine without an uplift model, which ranks a send by its
    arm's catalogue prior times the movable share (the retainable risk for a retention action,
    1 - P(repurchase) for a growth one), computed by the decision module's own functions.

    ``churn_probability`` and ``repurchase_probability`` score a frame of sends (the
    classifiers the engine would use; :func:`classifier_scorer`)."""

    actions: Sequence[Action]
    churn_probability: Callable[[pd.DataFrame], np.ndarray]
    repurchase_probability: Callable[[pd.DataFrame], np.ndarray]

    def reductions(self, sends: pd.DataFrame, arms: Sequence[Arm]) -> np.ndarray:
        """(n_sends, len(arms)) the priors' reduction of P(churn) (``-effect``); NaN for an arm
        the catalogue does not have (the engine never chooses it)."""
        from serving.decision import decision_table, uplift_matrix

        n = len(sends)
        if not arms:  # no campaign arm to score (e.g. sends of the controls only)
            return np.zeros((n, 0))
        table = decision_table(self.actions)
        matrix = uplift_matrix(
            np.zeros((n, 0)),
            [],
            table,
            np.asarray(self.churn_probability(sends), dtype=np.float64),
            np.asarray(self.repurchase_probability(sends), dtype=np.float64),
            features=sends,
        )
        column = {(c.action.name, c.channel): i for i, c in enumerate(table.columns)}
        return np.column_stack(
            [matrix[:, column[arm]] if arm in column else np.full(n, np.nan) for arm in arms]
        ).reshape(n, len(arms))


def classifier_scorer(model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """P(label) of a calibrated classifier (``feature_names``, ``predict_proba``) per row."""

    def score(frame: pd.DataFrame) -> np.ndarray:
        rows = frame[model.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        return model.predict_proba(rows)[:, 1]

    return score


def catalogue_priors_qini(
    model: UpliftModel,
    holdout: pd.DataFrame,
    priors: CataloguePriors,
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> dict[str, float]:
    """The priors' held-out mean Qini on the same sends and arms as ``model``
    (``catalogue_priors_qini``), the model's mean over the arms the catalogue has
    (``mean_qini_on_catalogue_arms``), and the lower ``1 - NULL_QUANTILE`` quantile of their
    difference over ``draws`` paired bootstrap resamples of the held-out sends
    (``qini_margin_over_priors_low``): the champion gate asks that it be above 0, so that a
    model within the holdout's noise of the priors does not replace them."""
    reductions = priors.reductions(holdout, model.arms)
    known = ~np.isnan(reductions).all(axis=0) if len(reductions) else np.zeros(0, dtype=bool)
    prior_effects, model_effects = -np.nan_to_num(reductions), model.effects(holdout)
    names = [f"{a}|{c}" for (a, c), has in zip(model.arms, known, strict=True) if has]

    def mean(scores: dict[str, float]) -> float:
        values = [scores[name] for name in names if np.isfinite(scores[name])]
        return float(np.mean(values)) if values else float("nan")

    def means(rows: np.ndarray) -> tuple[float, float]:
        sends = holdout.iloc[rows]
        return (
            mean(heldout_qini(model, sends, prior_effects[rows])),
            mean(heldout_qini(model, sends, model_effects[rows])),
        )

    prior_mean, model_mean = means(np.arange(len(holdout)))
    rng = np.random.default_rng(seed)
    differences = [
        model_qini - prior_qini
        for prior_qini, model_qini in (
            means(rng.integers(0, len(holdout), len(holdout))) for _ in range(draws)
        )
    ]
    finite = np.asarray(differences, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    low = float(np.quantile(finite, 1.0 - NULL_QUANTILE)) if len(finite) else float("nan")
    return {
        "catalogue_priors_qini": prior_mean,
        "mean_qini_on_catalogue_arms": model_mean,
        "qini_margin_over_priors_low": low,
    }


def champion_gate(scores: dict[str, float]) -> tuple[bool, str]:
    """Whether a learner's held-out scores (:func:`compare_learners`) make it the champion, and
    why: its mean Qini must beat what random targeting reaches by chance
    (:func:`random_targeting_qini`) and, when measured, the catalogue priors' Qini on the same
    sends (:func:`catalogue_priors_qini`): the engine uses the priors when no model is champion,
    so a model that ranks no better than them must not replace them."""
    qini = scores.get("mean_qini", float("nan"))
    chance = max(scores.get("random_targeting_qini", 0.0), 0.0)
    beats_chance = bool(np.isfinite(qini) and qini > chance)
    reason = (
        f"held-out mean Qini {qini:.5f} {'>' if beats_chance else '<='} {chance:.5f} (what "
        f"random targeting reaches by chance, {NULL_QUANTILE:.0%} quantile)"
    )
    priors = scores.get("catalogue_priors_qini", float("nan"))
    if not np.isfinite(priors):
        return beats_chance, f"{reason}; catalogue priors not measured"
    own = scores.get("mean_qini_on_catalogue_arms", qini)
    low = scores.get("qini_margin_over_priors_low", own - priors)
    beats_priors = bool(np.isfinite(own) and own > priors and np.isfinite(low) and low > 0)
    reason += (
        f"; on the catalogue's arms {own:.5f} {'>' if own > priors else '<='} {priors:.5f}, "
        "the Qini of the catalogue priors x movable share on the same sends, with a margin "
        f"whose {1 - NULL_QUANTILE:.0%} bootstrap quantile is {low:.5f} "
        f"({'above' if low > 0 else 'not above'} 0)"
    )
    if beats_chance and not beats_priors:
        reason += " (the engine keeps the priors)"
    return beats_chance and beats_priors, reason


def time_holdout(
    frame: pd.DataFrame, campaigns: int = HOLDOUT_CAMPAIGNS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sends of the last ``campaigns`` campaigns are held out; the earlier ones train."""
    last = sorted(frame["campaign_id"].unique())[-campaigns:]
    held = frame["campaign_id"].isin(last)
    if held.all() or not held.any():
        raise UpliftDataError(f"need more than {campaigns} campaigns with observed outcomes")
    return frame[~held], frame[held]


def compare_learners(
    frame: pd.DataFrame,
    feature_names: list[str],
    learners: tuple[str, ...] = LEARNERS,
    priors: CataloguePriors | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out Qini per arm (and the mean) of each learner fitted on the earlier campaigns,
    the chance level, and with ``priors`` the catalogue priors' Qini on the same sends."""
    train_part, holdout = time_holdout(frame)
    comparison: dict[str, dict[str, float]] = {}
    for learner in learners:
        try:
            fitted = fit_uplift(train_part, feature_names, learner)
        except UpliftDataError:  # e.g. no trait column for the interaction learner
            comparison[learner] = {"mean_qini": float("nan")}
            continue
        per_arm = heldout_qini(fitted, holdout)
        mean = float(np.nanmean(list(per_arm.values()))) if per_arm else float("nan")
        chance = random_targeting_qini(fitted, holdout)
        comparison[learner] = {"mean_qini": mean, "random_targeting_qini": chance, **per_arm}
        if priors is not None:
            comparison[learner].update(catalogue_priors_qini(fitted, holdout, priors))
    return comparison


def fit_evaluated(
    frame: pd.DataFrame,
    feature_names: list[str],
    learner: str = LEARNER,
    priors: CataloguePriors | None = None,
) -> tuple[UpliftModel, dict]:
    """Measure the learners on held-out campaigns, then refit ``learner`` on every campaign."""
    comparison = compare_learners(frame, feature_names, priors=priors)
    model = fit_uplift(frame, feature_names, learner)
    model.evaluation = {"heldout_qini": comparison, "learner": learner}
    return model, comparison


# ---- reading, training and registering (I/O edge) --------------------------------------------


def read_sends(settings: Settings) -> pd.DataFrame:
    """Every send of the warehouse's ``campaigns`` table with a resolved customer."""
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as connection:
        tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
        if "campaigns" not in tables:
            raise UpliftDataError("the warehouse has no campaigns table: ingest campaign_history")
        return connection.execute(
            "SELECT customer_id, occurred_at, campaign_id, action, channel, source_id "
            "FROM campaigns WHERE customer_id IS NOT NULL"
        ).df()


@dataclass
class TrainedUplift:
    model: UpliftModel
    sends: int
    heldout_qini: dict[str, dict[str, float]]


def train_uplift(
    settings: Settings,
    purchases: pd.DataFrame,
    data_end: pd.Timestamp,
    priors: CataloguePriors | None = None,
) -> TrainedUplift:
    """Sends with observed outcomes and features at the send -> the product's learner, measured
    on held-out campaigns against chance and (with ``priors``) against the catalogue priors."""
    from training.train import feature_columns, feature_table_path

    sends = send_outcomes(
        read_sends(settings), purchases, data_end, settings.labels.churn_window_days
    )
    features = pd.read_parquet(feature_table_path(settings))
    frame = features_at_sends(sends, features)
    if frame.empty or not (frame["action"] == CONTROL_ARM[0]).any():
        raise UpliftDataError(
            f"{len(frame)} send(s) with features and an observed outcome, none to the control "
            "group: uplift needs randomised controls"
        )
    model, comparison = fit_evaluated(frame, feature_columns(features), priors=priors)
    return TrainedUplift(model, len(frame), comparison)


@dataclass
class UpliftReport:
    registered_model: str
    version: str
    champion: bool
    reason: str
    learner: str
    sends: int
    heldout_qini: dict[str, dict[str, float]]

    def render(self) -> str:
        qini = ", ".join(f"{k} {v['mean_qini']:.5f}" for k, v in self.heldout_qini.items())
        state = "champion" if self.champion else "challenger"
        return (
            f"{self.registered_model} v{self.version} ({state}): {self.learner} from "
            f"{self.sends:,} sends; held-out mean Qini {qini}; {self.reason}"
        )


def log_and_register_uplift(settings: Settings, trained: TrainedUplift) -> UpliftReport:
    """Register the uplift model; ``champion`` moves only if :func:`champion_gate` says so: its
    held-out mean Qini beats what random targeting reaches by chance and the catalogue priors'
    Qini on the same sends. The reason is in the version's tags and the report."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    from training.registry import CHALLENGER_ALIAS, MODEL_NAMES, move_champion
    from training.train import _experiment_id, log_pickled_model

    name = MODEL_NAMES["uplift"]
    chosen = trained.model.learner
    promote, reason = champion_gate(trained.heldout_qini[chosen])
    client = MlflowClient()
    with mlflow.start_run(experiment_id=_experiment_id(settings, name), run_name="uplift") as run:
        mlflow.log_params(
            {
                "learner": chosen,
                "sends": trained.sends,
                "arms": len(trained.model.arms),
                "outcome_window_days": settings.labels.churn_window_days,
                "holdout_campaigns": HOLDOUT_CAMPAIGNS,
                **{f"lightgbm.{k}": v for k, v in UPLIFT_LIGHTGBM.items()},
            }
        )
        mlflow.log_metrics(
            {
                f"heldout_qini_{learner}_{arm.replace('|', '__')}": value
                for learner, values in trained.heldout_qini.items()
                for arm, value in values.items()
                if np.isfinite(value)
            }
        )
        info = log_pickled_model(trained.model)
        tags = {
            "promotion_decision": "promoted" if promote else "rejected",
            "promotion_reason": reason,
        }
        mlflow.set_tags(tags)
        version = mlflow.register_model(
            info.model_uri, name, tags={**tags, "run_id": run.info.run_id, "kind": "uplift"}
        )
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
        if promote:  # through move_champion: history for rollback, deferred by train()
            move_champion(client, name, version.version, reason)
    return UpliftReport(
        name, str(version.version), promote, reason, chosen, trained.sends, trained.heldout_qini
    )
