"""Batch scoring: scores and decisions for every customer of the latest snapshot, in one pass.

Why not call the HTTP service per customer: online reads of many entities cost tens of
milliseconds per hundred (see the dependency notes). Here the *offline* features (the parquet
snapshot that Feast serves from) are read once, the champions (churn, repurchase, and value and
uplift when they have one) predict on the whole matrix, and the one decision function of
:mod:`serving.decision` (:func:`~serving.decision.decide_arrays`, which ``/recommend`` calls with
one customer) runs as array operations over (customer x action-channel) matrices, with the same
global control group and the same contact policy as ``/recommend`` at the time of the run (quiet
hours, and caps and cooldowns from the contact history). ``tests/unit/test_batch.py`` checks the
batch and ``decide`` agree row by row.

Reasons are computed as ``/recommend`` computes them (:func:`serving.reasons.contributions`
with the ``serving.reasons`` setting: path attribution by default, TreeSHAP by setting), and only
where they are shown: for the ``reasons_for`` customers with the highest expected value.
:mod:`serving.campaign` values its audience with the same :func:`score_and_decide`.

What the batch does not do: exploration (its rows are not served decisions, nothing logs their
propensity). A campaign export (:mod:`serving.campaign`) adds its own random control group.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from omniretain.settings import Action, Settings
from serving.compiled import CompileReport, compile_boosters, compiled_dir
from serving.compiled import predict as predict_trees
from serving.decision import (
    CHANNELS_WITHOUT_CONSENT,
    CONSENT_FEATURE_BY_CHANNEL,
    DEFAULT_CONTEXT,
    MODEL_UPLIFT_CONTEXT,
    ActionChannel,
    DecisionContext,
    action_channel_columns,  # noqa: F401 - re-exported: campaigns and tests use it here
    decide_arrays,
    decision_table,
    feature_column,
    uplift_matrix,
)
from serving.reasons import ReasonMethod, contributions, top_churn_drivers

if TYPE_CHECKING:
    from training.model import CalibratedClassifier
    from training.uplift import UpliftModel
    from training.value import CustomerValueModel

ENTITY_KEY = "customer_id"
SNAPSHOT_COLUMN = "event_timestamp"
FEATURES_FILE = "customer_features.parquet"
SCORES_FILE = "scores.parquet"
BATCH_THREADS = 2  # the whole machine: a batch job owns it, unlike a server worker


class BatchScoringError(RuntimeError):
    """Batch scoring cannot run (no features, no champion, a feature the model needs is absent)."""


def _column(features: pd.DataFrame, name: str, default: float) -> np.ndarray:
    """A feature as float64; absent or NaN becomes ``default`` (as ``decision._value``)."""
    return feature_column(features, name, default, len(features))


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


@dataclass
class BatchDecisions:
    """The chosen (action, channel) per customer; ``column`` is -1 for no action."""

    column: np.ndarray
    action: np.ndarray
    channel: np.ndarray
    expected_value: np.ndarray
    candidate_values: np.ndarray = field(repr=False)  # (customers x columns), -inf = not allowed
    customer_value: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    control_group: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))


def decide_batch(
    features: pd.DataFrame,
    churn_probability: np.ndarray,
    repurchase_probability: np.ndarray,
    actions: Sequence[Action],
    uplift: np.ndarray | None = None,
    context: DecisionContext = DEFAULT_CONTEXT,
    *,
    customer_value: np.ndarray | None = None,
    blocked: np.ndarray | None = None,
    control: np.ndarray | None = None,
) -> BatchDecisions:
    """The decision of :func:`serving.decision.decide` for many customers at once.

    A frame-shaped face of :func:`serving.decision.decide_arrays` (the one decision function).

    Args:
        features: one row per customer, feature columns by name.
        churn_probability / repurchase_probability: the champions' scores, one per row.
        actions: the action catalogue.
        uplift: (customers x :func:`action_channel_columns`) absolute uplift; the catalogue's
            prior when omitted (what ``decide`` uses with the default context).
        context: thresholds.
        customer_value: a value model's prediction per row; ``spend_365d`` when omitted.
        blocked: (customers x columns) held back by the contact policy.
        control: True for the control group (no action).
    """
    result = decide_arrays(
        features,
        churn_probability,
        repurchase_probability,
        actions,
        context,
        customer_value=customer_value,
        uplift=uplift,
        blocked=blocked,
        control=control,
    )
    return BatchDecisions(
        column=result.column,
        action=result.action,  # -1 picks the appended no_action
        channel=result.channel,
        expected_value=np.round(result.expected_value, 2),
        candidate_values=result.values,
        customer_value=result.customer_value,
        control_group=result.control,
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
    raw = predict_trees(
        model.booster, matrix, raw_score=True, num_iteration=model.best_iteration, threads=threads
    )
    return np.clip(model.calibrator.transform(raw), 0.0, 1.0)


def predict_value(
    model: CustomerValueModel, matrix: np.ndarray, threads: int = BATCH_THREADS
) -> np.ndarray:
    """:meth:`CustomerValueModel.predict` with every core (its own pins one thread)."""
    window = predict_trees(
        model.booster, matrix, num_iteration=model.best_iteration, threads=threads
    )
    return window * model.scale


def predict_uplift_trees(booster: Any, matrix: np.ndarray) -> np.ndarray:
    """An uplift booster's ``predict`` with every core (compiled when it was compiled)."""
    return predict_trees(booster, matrix, threads=BATCH_THREADS)


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
    method: ReasonMethod = "path",
) -> list[str]:
    """The top churn drivers in words for ``rows`` only, ``"; "``-joined.

    The contributions come from :func:`serving.reasons.contributions` with ``method`` (the
    ``serving.reasons`` setting): the same numbers, hence the same words, as ``/recommend``
    shows for the same customer and model.
    """
    if len(rows) == 0:
        return []
    values = contributions(model, matrix[rows], method)[:, :-1]  # last column: bias
    names = model.feature_names
    records = frame.iloc[rows].to_dict("records")
    texts = []
    for contribution, record in zip(values, records, strict=True):
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
    trees: str = ""  # how the trees were evaluated (compiled now, from the cache, LightGBM)

    def render(self) -> str:
        chosen = ", ".join(f"{n:,} x {name}" for name, n in self.actions.items())
        steps = ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds.items())
        return (
            f"{self.customers:,} customers scored at snapshot {self.snapshot}\n"
            f"decisions: {chosen}\n"
            f"expected value of the actions: {self.expected_value_total:,.2f}\n"
            f"models: {self.model_versions}{f' ({self.trees})' if self.trees else ''}\n"
            f"written to {self.path}\n"
            f"steps: {steps}"
        )


@dataclass
class ScoredBatch:
    """The champions' outputs and the decision matrices for every row of a feature frame."""

    churn_probability: np.ndarray
    repurchase_probability: np.ndarray
    decisions: BatchDecisions
    churn_matrix: np.ndarray = field(repr=False)  # what the reason codes explain
    context: DecisionContext = DEFAULT_CONTEXT  # the thresholds the decision used


def score_and_decide(
    frame: pd.DataFrame,
    churn: CalibratedClassifier,
    repurchase: CalibratedClassifier,
    actions: Sequence[Action],
    context: DecisionContext = DEFAULT_CONTEXT,
    *,
    value_model: CustomerValueModel | None = None,
    uplift_model: UpliftModel | None = None,
    uplift: np.ndarray | None = None,
    blocked: np.ndarray | None = None,
    control: np.ndarray | None = None,
    seconds: dict[str, float] | None = None,
) -> ScoredBatch:
    """A feature frame and the champions -> scores and (customer x action-channel) decision
    matrices: the one scoring path of batch scoring and campaigns (pure: frames in, arrays out).

    Every champion predicts on the whole matrix with every core (compiled trees when they were
    compiled); the value and uplift champions are used as ``/recommend`` uses them.

    Args:
        uplift: (customers x columns) uplift; else the uplift model's, else the catalogue's.
        value_model / uplift_model: the optional champions.
        blocked: (customers x columns) held back by the contact policy.
        control: True for the control group.
        seconds: filled with the ``predict`` and ``decide`` step times.
    """
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    matrices: dict[tuple[str, ...], np.ndarray] = {}  # the models mostly share one feature list

    def matrix_of(feature_names: Sequence[str]) -> np.ndarray:
        key = tuple(feature_names)
        if key not in matrices:
            matrices[key] = feature_matrix(frame, feature_names)
        return matrices[key]

    churn_matrix = matrix_of(churn.feature_names)
    churn_probability = predict_probability(churn, churn_matrix)
    repurchase_probability = predict_probability(repurchase, matrix_of(repurchase.feature_names))
    customer_value = None
    if value_model is not None:
        customer_value = predict_value(value_model, matrix_of(value_model.feature_names))
    decision_context = context
    if uplift is None and uplift_model is not None:
        effects = uplift_model.effects(
            matrix_of(uplift_model.feature_names), predict=predict_uplift_trees
        )
        table = decision_table(actions)
        uplift = uplift_matrix(
            effects,
            uplift_model.arms,
            table,
            churn_probability,
            repurchase_probability,
            features=frame,
        )
        if context is DEFAULT_CONTEXT:
            decision_context = MODEL_UPLIFT_CONTEXT
    seconds["predict"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    decisions = decide_batch(
        frame,
        churn_probability,
        repurchase_probability,
        actions,
        uplift,
        decision_context,
        customer_value=customer_value,
        blocked=blocked,
        control=control,
    )
    seconds["decide"] = round(time.perf_counter() - started, 3)
    return ScoredBatch(
        churn_probability=churn_probability,
        repurchase_probability=repurchase_probability,
        decisions=decisions,
        churn_matrix=churn_matrix,
        context=decision_context,
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
    *,
    value_model: CustomerValueModel | None = None,
    uplift_model: UpliftModel | None = None,
    blocked: np.ndarray | None = None,
    control: np.ndarray | None = None,
    reasons: ReasonMethod = "path",
) -> pd.DataFrame:
    """Scores, risk band and decision per row of ``frame`` (pure: frames in, frame out).

    Args:
        reasons_for: compute the churn drivers in words for this many customers, those with
            the highest expected value (the ones a team will look at); the others get null.
        reasons: how the drivers are computed (the ``serving.reasons`` setting, as
            ``/recommend``).

    The other arguments are those of :func:`score_and_decide`.
    """
    seconds = {} if seconds is None else seconds
    scored_batch = score_and_decide(
        frame,
        churn,
        repurchase,
        actions,
        context,
        value_model=value_model,
        uplift_model=uplift_model,
        uplift=uplift,
        blocked=blocked,
        control=control,
        seconds=seconds,
    )
    decisions = scored_batch.decisions
    churn_probability = scored_batch.churn_probability
    scored = pd.DataFrame(
        {
            ENTITY_KEY: frame[ENTITY_KEY].to_numpy(),
            "snapshot": frame[SNAPSHOT_COLUMN].to_numpy(),
            "churn_probability": np.round(churn_probability, 4),
            "repurchase_probability": np.round(scored_batch.repurchase_probability, 4),
            "risk_band": risk_bands(churn_probability, context),
            "customer_value": np.round(decisions.customer_value, 2),
            "action": decisions.action,
            "channel": decisions.channel,
            "expected_value": decisions.expected_value,
            "control_group": decisions.control_group,
            "churn_drivers": pd.Series([None] * len(frame), dtype=object),
        }
    )
    if reasons_for > 0:
        started = time.perf_counter()
        actioned = np.flatnonzero(decisions.column >= 0)
        order = np.argsort(-decisions.expected_value[actioned], kind="stable")
        shown = actioned[order[:reasons_for]]
        scored.loc[shown, "churn_drivers"] = drivers_for(
            churn, frame, scored_batch.churn_matrix, shown, scored_batch.context, reasons
        )
        seconds["reasons"] = round(time.perf_counter() - started, 3)
    return scored


def control_group_mask(customer_ids: Sequence[str], settings: Settings) -> np.ndarray:
    """The stable hash-based control group of ``/recommend``, per customer.

    :func:`serving.decision.in_control_group` for every id at once: the same SHA-256 of
    ``salt:customer_id``, its first 8 bytes as an unsigned number over 2**64, computed by
    DuckDB on all cores (a Python loop takes seconds per million ids).
    """
    import duckdb
    import pyarrow as pa

    share, salt = settings.serving.control_share, settings.serving.control_salt
    if share <= 0 or len(customer_ids) == 0:
        return np.zeros(len(customer_ids), dtype=bool)
    ids = pa.table({"customer_id": pa.array([str(i) for i in customer_ids], pa.string())})
    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        con.register("ids", ids)
        prefix = con.execute(
            """SELECT ('0x' || substr(sha256(? || ':' || customer_id), 1, 16))::UBIGINT AS h
               FROM ids""",
            [salt],
        ).fetchnumpy()["h"]
    return np.asarray(prefix, dtype=np.uint64).astype(np.float64) / 2.0**64 < share


def contact_policy_blocks(
    customer_ids: pd.Series, settings: Settings, now: datetime, actions: Sequence[Action]
) -> np.ndarray:
    """(customers x columns) what the contact policy of ``/recommend`` holds back at ``now``:
    quiet hours for everyone, caps and cooldowns for the customers with a contact history."""
    from serving.policy import (
        ContactStore,
        contacts_path,
        evaluate_contact_policy,
        history_horizon,
        in_quiet_hours,
    )

    table = decision_table(actions)
    policy = settings.contact_policy
    blocked = np.zeros((len(customer_ids), table.width), dtype=bool)
    if in_quiet_hours(now, policy):
        quiet = set(policy.quiet_channels)
        blocked[:, [c.channel in quiet for c in table.columns]] = True
    path = contacts_path(settings)
    if not path.exists():
        return blocked
    histories = ContactStore(path).histories(now - history_horizon(policy, actions))
    if not histories:
        return blocked
    rows = pd.Index(customer_ids.astype(str)).get_indexer(list(histories))
    for row, history in zip(rows, histories.values(), strict=True):
        if row < 0:
            continue
        verdict = evaluate_contact_policy(history, now, policy, actions)
        blocked[row] |= [
            c.channel in verdict.blocked_channels or c.action.name in verdict.blocked_actions
            for c in table.columns
        ]
    return blocked


def compile_champions(models: Any, settings: Settings, rows: int | None = None) -> CompileReport:
    """Compile every champion's trees for this batch (or load them from the cache: a compile
    happens once per model, on its first large batch), as :func:`score_frame` predicts them.

    A batch of fewer than ``serving.batch_compile_min_rows`` rows only loads libraries already
    compiled: a compile costs more than LightGBM spends on such a batch.
    """
    from serving.model_cache import cache_dir

    boosters: list[tuple[Any, int | None, bool]] = [
        (models.churn.model.booster, models.churn.model.best_iteration, True),
        (models.repurchase.model.booster, models.repurchase.model.best_iteration, True),
    ]
    if models.value is not None:
        boosters.append((models.value.model.booster, models.value.model.best_iteration, False))
    if models.uplift is not None and models.uplift.model.learner != "interaction":
        boosters += [(booster, None, False) for booster in models.uplift.model.boosters.values()]
    elif models.uplift is not None:
        boosters.append((models.uplift.model.boosters["base"], None, False))
    build = rows is None or rows >= settings.serving.batch_compile_min_rows
    return compile_boosters(
        boosters, compiled_dir(cache_dir(settings)), threads=BATCH_THREADS, build=build
    )


def score_latest(
    settings: Settings, out: Path | None = None, reasons_for: int = 1000
) -> ScoreReport:
    """Read the newest offline snapshot, score and decide for everyone, write parquet.

    Raises:
        BatchScoringError: no feature table. ``ModelNotFoundError``: no champion.
    """
    from features.build import write_features_atomically
    from monitoring.logs import log_decision_frame
    from serving.models import load_model_set

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    models = load_model_set(settings)
    seconds["load_models"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    frame = read_latest_snapshot(features_path(settings))
    seconds["read"] = round(time.perf_counter() - started, 3)

    compiling = compile_champions(models, settings, rows=len(frame))
    seconds["compile"] = compiling.seconds

    started = time.perf_counter()
    control = control_group_mask(frame[ENTITY_KEY].astype(str).tolist(), settings)
    decided_at = datetime.now(UTC)
    blocked = contact_policy_blocks(frame[ENTITY_KEY], settings, decided_at, settings.actions)
    seconds["policy"] = round(time.perf_counter() - started, 3)

    scored = score_frame(
        frame,
        models.churn.model,
        models.repurchase.model,
        settings.actions,
        reasons_for=reasons_for,
        seconds=seconds,
        value_model=models.value.model if models.value else None,
        uplift_model=models.uplift.model if models.uplift else None,
        blocked=blocked,
        control=control,
        reasons=settings.serving.reasons,
    )
    versions = {kind: v for kind, v in models.versions.items() if v is not None}
    for kind, version in versions.items():
        scored[f"{kind}_model_version"] = version

    started = time.perf_counter()
    path = out or settings.state_dir / "scores" / SCORES_FILE
    write_features_atomically(scored, path)
    seconds["write"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()  # every decision served is logged, batch ones too
    names = list(models.churn.model.feature_names)
    log_decision_frame(settings, scored, frame[names], "batch", decided_at, versions)
    seconds["log"] = round(time.perf_counter() - started, 3)

    counts = scored["action"].value_counts()
    return ScoreReport(
        customers=len(scored),
        snapshot=str(frame[SNAPSHOT_COLUMN].iloc[0]),
        actions={str(name): int(n) for name, n in counts.items()},
        expected_value_total=float(scored["expected_value"].sum()),
        path=path,
        seconds=seconds,
        model_versions=versions,
        trees=(
            f"trees: {compiling.compiled} model(s) compiled now, {compiling.cached} compiled "
            f"before, {compiling.failed + compiling.skipped} by LightGBM"
        ),
    )
