"""Batch scoring: scores and decisions for every customer of the latest snapshot, in one pass.

Why not call the HTTP service (or :func:`serving.decision.decide`) per customer: online reads of
many entities cost tens of milliseconds per hundred (see the dependency notes) and ``decide`` is
a Python loop per customer. Here the *offline* features (the parquet snapshot that Feast serves
from) are read once, both champions predict on the whole matrix, and the arbitration of
:mod:`serving.decision` runs as array operations over (customer x action-channel) matrices. The
rules are the same as ``decide``'s (eligibility, consent, expected value, ties to the cheaper
action then catalogue order); ``tests/unit/test_batch.py`` checks the two agree row by row.

Reasons (TreeSHAP, about 2 ms a row) are computed only where they are shown: for the
``reasons_for`` customers with the highest expected value.

What the batch does not apply: the per-customer contact policy of the online path (caps and
cooldowns from the contact history, exploration, the global control group). A campaign export
(:mod:`serving.campaign`) adds its own control group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from omniretain.settings import Action, Settings
from serving.decision import (
    CHANNELS_WITHOUT_CONSENT,
    CONSENT_FEATURE_BY_CHANNEL,
    DEFAULT_CONTEXT,
    NO_ACTION,
    NO_CHANNEL,
    DecisionContext,
)
from serving.reasons import top_churn_drivers

if TYPE_CHECKING:
    from training.model import CalibratedClassifier

ENTITY_KEY = "customer_id"
SNAPSHOT_COLUMN = "event_timestamp"
FEATURES_FILE = "customer_features.parquet"
SCORES_FILE = "scores.parquet"
BATCH_THREADS = 2  # the whole machine: a batch job owns it, unlike a server worker


class BatchScoringError(RuntimeError):
    """Batch scoring cannot run (no features, no champion, a feature the model needs is absent)."""


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


def _column(features: pd.DataFrame, name: str, default: float) -> np.ndarray:
    """A feature as float64; absent or NaN becomes ``default`` (as ``decision._value``)."""
    if name not in features.columns:
        return np.full(len(features), default, dtype=np.float64)
    values = features[name].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(values), default, values)


def channel_allowed_matrix(features: pd.DataFrame, columns: Sequence[ActionChannel]) -> np.ndarray:
    """(customers x columns) consent check, as :func:`serving.decision.channel_allowed`."""
    allowed = np.zeros((len(features), len(columns)), dtype=bool)
    by_channel: dict[str, np.ndarray] = {}
    for index, column in enumerate(columns):
        channel = column.channel
        if channel not in by_channel:
            if channel in CHANNELS_WITHOUT_CONSENT:
                by_channel[channel] = np.ones(len(features), dtype=bool)
            elif channel in CONSENT_FEATURE_BY_CHANNEL:
                consent = _column(features, CONSENT_FEATURE_BY_CHANNEL[channel], 0.0)
                by_channel[channel] = consent == 1.0
            else:
                by_channel[channel] = np.zeros(len(features), dtype=bool)  # fail closed
        allowed[:, index] = by_channel[channel]
    return allowed


def action_eligible_matrix(
    features: pd.DataFrame,
    churn_probability: np.ndarray,
    columns: Sequence[ActionChannel],
    context: DecisionContext = DEFAULT_CONTEXT,
) -> np.ndarray:
    """(customers x columns) business rules, as :func:`serving.decision.action_eligible`."""
    open_cases = _column(features, "open_cases", 0.0)
    cart_hours = _column(features, "hours_since_last_abandoned_cart", math.inf)
    at_risk = churn_probability >= context.at_risk_threshold
    eligible = np.ones((len(features), len(columns)), dtype=bool)
    for index, column in enumerate(columns):
        action = column.action
        if action.name == "service_callback":
            eligible[:, index] &= open_cases > 0
        if action.name == "cart_reminder":
            eligible[:, index] &= cart_hours <= context.cart_window_hours
        if action.goal == "retention":
            eligible[:, index] &= at_risk
        for rule in getattr(action, "eligibility", ()):  # catalogue rules: all must hold
            eligible[:, index] &= rule_holds(features, rule.feature, rule.op, rule.value)
    return eligible


_COMPARISONS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def rule_holds(features: pd.DataFrame, feature: str, op: str, value: float) -> np.ndarray:
    """``feature op value`` per row; a missing feature or NaN never passes (fail closed)."""
    values = _column(features, feature, math.nan)
    with np.errstate(invalid="ignore"):
        return _COMPARISONS[op](values, value) & ~np.isnan(values)


def catalogue_uplift_matrix(n_customers: int, columns: Sequence[ActionChannel]) -> np.ndarray:
    """The catalogue's prior ``base_uplift`` for every customer and column."""
    priors = np.array([column.action.base_uplift for column in columns], dtype=np.float64)
    return np.broadcast_to(priors, (n_customers, len(columns)))


def expected_value_matrix(
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    customer_value: np.ndarray,
    uplift: np.ndarray,
    columns: Sequence[ActionChannel],
) -> np.ndarray:
    """(customers x columns) value minus cost, as :func:`serving.decision.expected_value`."""
    is_retention = np.array([c.action.goal == "retention" for c in columns])
    cost = np.array([c.action.cost for c in columns], dtype=np.float64)
    movable = np.where(
        is_retention[None, :], churn_probability[:, None], 1.0 - repurchase_probability[:, None]
    )
    return movable * uplift * customer_value[:, None] - cost[None, :]


@dataclass
class BatchDecisions:
    """The chosen (action, channel) per customer; ``column`` is -1 for no action."""

    column: np.ndarray
    action: np.ndarray
    channel: np.ndarray
    expected_value: np.ndarray
    candidate_values: np.ndarray = field(repr=False)  # (customers x columns), -inf = not allowed


def decide_batch(
    features: pd.DataFrame,
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    actions: Sequence[Action],
    uplift: np.ndarray | None = None,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> BatchDecisions:
    """The decision of :func:`serving.decision.decide` for many customers at once.

    Args:
        features: one row per customer, feature columns by name.
        churn_probability / repurchase_probability: the champions' scores, one per row.
        actions: the action catalogue.
        uplift: (customers x :func:`action_channel_columns`) absolute uplift; the catalogue's
            prior when omitted (what ``decide`` uses with the default context).
        context: thresholds (at-risk, cart window).
    """
    columns = action_channel_columns(actions)
    n = len(features)
    churn_probability = np.asarray(churn_probability, dtype=np.float64)
    repurchase_probability = np.asarray(repurchase_probability, dtype=np.float64)
    if uplift is None:
        uplift = catalogue_uplift_matrix(n, columns)
    if uplift.shape != (n, len(columns)):
        raise ValueError(f"uplift must have shape {(n, len(columns))}, got {uplift.shape}")
    customer_value = np.maximum(_column(features, "spend_365d", 0.0), 0.0)
    values = expected_value_matrix(
        churn_probability, repurchase_probability, customer_value, uplift, columns
    )
    allowed = action_eligible_matrix(features, churn_probability, columns, context)
    allowed &= channel_allowed_matrix(features, columns)
    values = np.where(allowed, values, -np.inf)

    if columns:
        best_value = values.max(axis=1)
        # Ties: the cheaper action first, then catalogue and channel order (the column order).
        cost = np.array([c.action.cost for c in columns], dtype=np.float64)
        tie_cost = np.where(values == best_value[:, None], cost[None, :], np.inf)
        best_column = np.argmin(tie_cost, axis=1)
    else:
        best_value = np.full(n, -np.inf)
        best_column = np.zeros(n, dtype=np.int64)
    chosen = best_value > 0
    column = np.where(chosen, best_column, -1)
    action_names = np.array([c.action.name for c in columns] + [NO_ACTION], dtype=object)
    channel_names = np.array([c.channel for c in columns] + [NO_CHANNEL], dtype=object)
    return BatchDecisions(
        column=column,
        action=action_names[column],  # -1 picks the appended no_action
        channel=channel_names[column],
        expected_value=np.where(chosen, np.round(best_value, 2), 0.0),
        candidate_values=values,
    )


# ---- the I/O edge -------------------------------------------------------------------------


def features_path(settings: Settings) -> Path:
    return settings.features_dir / FEATURES_FILE


def read_latest_snapshot(path: Path) -> pd.DataFrame:
    """Every customer's row at the newest snapshot of the offline feature table.

    Raises:
        BatchScoringError: the file does not exist or holds no rows.
    """
    import duckdb

    if not path.exists():
        raise BatchScoringError(f"no feature table at {path}; run `omniretain build-features`")
    frame = (
        duckdb.connect()
        .execute(
            f"""SELECT * FROM read_parquet(?) WHERE {SNAPSHOT_COLUMN} =
                (SELECT max({SNAPSHOT_COLUMN}) FROM read_parquet(?))""",
            [str(path), str(path)],
        )
        .df()
    )
    if frame.empty:
        raise BatchScoringError(f"{path} holds no rows; rebuild the features")
    return frame


def feature_matrix(frame: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """The model's columns in its order, float64, NaN for missing values.

    Raises:
        BatchScoringError: a feature the model was trained on is not in the table.
    """
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise BatchScoringError(
            f"the feature table lacks {missing} that the champion needs; rebuild the features "
            "with the code the model was trained with"
        )
    return frame[list(feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)


def predict_probability(
    model: CalibratedClassifier, matrix: np.ndarray, threads: int = BATCH_THREADS
) -> np.ndarray:
    """Calibrated P(positive) for a whole matrix, with every core (the model's own
    ``predict_proba`` pins one thread, right for a server worker, slow for a million rows)."""
    raw = model.booster.predict(
        matrix, raw_score=True, num_iteration=model.best_iteration, num_threads=threads
    )
    return np.clip(model.calibrator.transform(raw), 0.0, 1.0)


def risk_bands(
    churn_probability: np.ndarray, context: DecisionContext = DEFAULT_CONTEXT
) -> np.ndarray:
    """Vectorised :func:`serving.decision.risk_band`."""
    return np.select(
        [
            churn_probability >= context.high_risk_threshold,
            churn_probability >= context.at_risk_threshold,
        ],
        ["high", "medium"],
        default="low",
    ).astype(object)


def drivers_for(
    model: CalibratedClassifier,
    frame: pd.DataFrame,
    matrix: np.ndarray,
    rows: np.ndarray,
    context: DecisionContext = DEFAULT_CONTEXT,
) -> list[str]:
    """The top churn drivers in words for ``rows`` only (TreeSHAP is the expensive part)."""
    if len(rows) == 0:
        return []
    contributions = model.booster.predict(
        matrix[rows],
        pred_contrib=True,
        num_iteration=model.best_iteration,
        num_threads=BATCH_THREADS,
    )[:, :-1]
    names = model.feature_names
    records = frame.iloc[rows].to_dict("records")
    texts = []
    for contribution, record in zip(contributions, records, strict=True):
        drivers = top_churn_drivers(
            dict(zip(names, contribution.tolist(), strict=True)),
            record,
            limit=context.max_drivers,
            wording=context.wording,
        )
        texts.append("; ".join(drivers))
    return texts


@dataclass
class ScoreReport:
    """What ``omniretain score`` did, for the terminal."""

    customers: int
    snapshot: str
    actions: dict[str, int]
    expected_value_total: float
    path: Path
    seconds: dict[str, float]
    model_versions: dict[str, str]

    def render(self) -> str:
        chosen = ", ".join(f"{n:,} x {name}" for name, n in self.actions.items())
        steps = ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds.items())
        return (
            f"{self.customers:,} customers scored at snapshot {self.snapshot}\n"
            f"decisions: {chosen}\n"
            f"expected value of the actions: {self.expected_value_total:,.2f}\n"
            f"models: {self.model_versions}\n"
            f"written to {self.path}\n"
            f"steps: {steps}"
        )


def score_frame(
    frame: pd.DataFrame,
    churn: CalibratedClassifier,
    repurchase: CalibratedClassifier,
    actions: Sequence[Action],
    reasons_for: int = 0,
    uplift: np.ndarray | None = None,
    context: DecisionContext = DEFAULT_CONTEXT,
    seconds: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Scores, risk band and decision per row of ``frame`` (pure: frames in, frame out).

    Args:
        reasons_for: compute the churn drivers in words for this many customers, those with
            the highest expected value (the ones a team will look at); the others get null.
    """
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    churn_matrix = feature_matrix(frame, churn.feature_names)
    churn_probability = predict_probability(churn, churn_matrix)
    repurchase_probability = predict_probability(
        repurchase, feature_matrix(frame, repurchase.feature_names)
    )
    seconds["predict"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    decisions = decide_batch(
        frame, churn_probability, repurchase_probability, actions, uplift, context
    )
    seconds["decide"] = round(time.perf_counter() - started, 3)

    scored = pd.DataFrame(
        {
            ENTITY_KEY: frame[ENTITY_KEY].to_numpy(),
            "snapshot": frame[SNAPSHOT_COLUMN].to_numpy(),
            "churn_probability": np.round(churn_probability, 4),
            "repurchase_probability": np.round(repurchase_probability, 4),
            "risk_band": risk_bands(churn_probability, context),
            "customer_value": np.maximum(_column(frame, "spend_365d", 0.0), 0.0),
            "action": decisions.action,
            "channel": decisions.channel,
            "expected_value": decisions.expected_value,
            "churn_drivers": pd.Series([None] * len(frame), dtype=object),
        }
    )
    if reasons_for > 0:
        started = time.perf_counter()
        actioned = np.flatnonzero(decisions.column >= 0)
        order = np.argsort(-decisions.expected_value[actioned], kind="stable")
        shown = actioned[order[:reasons_for]]
        scored.loc[shown, "churn_drivers"] = drivers_for(churn, frame, churn_matrix, shown, context)
        seconds["reasons"] = round(time.perf_counter() - started, 3)
    return scored


def score_latest(
    settings: Settings, out: Path | None = None, reasons_for: int = 1000
) -> ScoreReport:
    """Read the newest offline snapshot, score and decide for everyone, write parquet.

    Raises:
        BatchScoringError: no feature table. ``ModelNotFoundError``: no champion.
    """
    from features.build import write_features_atomically
    from training.registry import load_champion

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    churn = load_champion(settings, "churn")
    repurchase = load_champion(settings, "repurchase")
    seconds["load_models"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    frame = read_latest_snapshot(features_path(settings))
    seconds["read"] = round(time.perf_counter() - started, 3)

    scored = score_frame(
        frame,
        churn.model,
        repurchase.model,
        settings.actions,
        reasons_for=reasons_for,
        seconds=seconds,
    )
    scored["churn_model_version"] = churn.version
    scored["repurchase_model_version"] = repurchase.version

    started = time.perf_counter()
    path = out or settings.state_dir / "scores" / SCORES_FILE
    write_features_atomically(scored, path)
    seconds["write"] = round(time.perf_counter() - started, 3)

    counts = scored["action"].value_counts()
    return ScoreReport(
        customers=len(scored),
        snapshot=str(frame[SNAPSHOT_COLUMN].iloc[0]),
        actions={str(name): int(n) for name, n in counts.items()},
        expected_value_total=float(scored["expected_value"].sum()),
        path=path,
        seconds=seconds,
        model_versions={"churn": churn.version, "repurchase": repurchase.version},
    )
