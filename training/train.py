"""Train the churn and repurchase models on a time-based split, gate them, register them.

The split follows how the model is used: it is trained on the past and scores the future. Of the
cutoffs eligible for a target (its label window fully observed), the last
``training.holdout_snapshots`` are the holdout, used only to report metrics and to compare with
the current champion; the cutoff before them early-stops and calibrates the trees; the earlier
ones fit the trees. Known limitation, kept for data size: the label window of a fit cutoff may
overlap the later slices' windows (a 90-day churn window spans three 30-day snapshots), so
the holdout is not purged of that overlap.

Everything is computed first; MLflow and the reference file are written only when both models
trained, so a failure leaves the previous registry state untouched.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contract import ENTITY_KEY
from omniretain.settings import Settings
from training.labels import (
    LABEL_COLUMNS,
    label_frame,
    read_label_file,
    replace_churn_labels,
    to_utc_aware,
    to_utc_naive,
)
from training.model import (
    CalibratedClassifier,
    IsotonicCalibrator,
    classification_metrics,
    fit_calibrated_classifier,
)
from training.registry import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    MODEL_NAMES,
    champion_moves_at_the_end,
    move_champion,
    promotion_decision,  # noqa: F401  (re-exported: the gate moved to the registry module)
    promotion_gate,
)
from training.report import log_model_report

if TYPE_CHECKING:
    from rich.console import RenderableType

    from training.uplift import UpliftReport
    from training.value import ValueReport

FEATURES_FILE = "customer_features.parquet"
TIMESTAMP_COLUMN = "event_timestamp"
NON_FEATURE_COLUMNS = {ENTITY_KEY, TIMESTAMP_COLUMN, "created_timestamp", *LABEL_COLUMNS.values()}
RECENCY_FEATURE = "days_since_last_purchase"
FREQUENCY_FEATURE = "purchases_90d"
EVENT_TABLES = ("purchases", "web_events", "messages", "contacts", "social", "surveys")
REFERENCE_SCORE_COLUMN = "churn_probability"
REFERENCE_SEED = 0
INPUT_EXAMPLE_ROWS = 5
SPLITS = ("fit", "calibration", "holdout")

logger = logging.getLogger(__name__)


class TrainingDataError(RuntimeError):
    """The inputs needed to train are missing or too small; the message says what to run."""


# ---- reading the inputs (I/O edge) ---------------------------------------------------------


def feature_table_path(settings: Settings) -> Path:
    return settings.features_dir / FEATURES_FILE


def read_snapshot_cutoffs(settings: Settings) -> list[pd.Timestamp]:
    """The distinct cutoffs (tz-aware UTC) present in the feature snapshots."""
    path = feature_table_path(settings)
    if not path.exists():
        raise TrainingDataError(f"no feature snapshots at {path}: run `omniretain build-features`")
    timestamps = pd.read_parquet(path, columns=[TIMESTAMP_COLUMN])[TIMESTAMP_COLUMN]
    return sorted(to_utc_aware(timestamps.drop_duplicates()))


def read_purchases_and_data_end(settings: Settings) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Purchases (naive UTC) and the time of the last event of any kind in the warehouse.

    The data end is the last event of any customer-facing table, not only the last purchase:
    a quiet final week is still observed time in which nobody bought.
    """
    import duckdb

    path = settings.warehouse_path
    if not path.exists():
        raise TrainingDataError(f"no warehouse at {path}: run `omniretain ingest`")
    with duckdb.connect(str(path), read_only=True) as connection:
        tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
        if "purchases" not in tables:
            raise TrainingDataError(f"{path} has no purchases table: run `omniretain ingest`")
        purchases = connection.execute(
            "SELECT customer_id, occurred_at, amount, coalesce(is_return, false) AS is_return "
            "FROM purchases WHERE customer_id IS NOT NULL"
        ).df()
        ends = [
            connection.execute(f"SELECT max(occurred_at) FROM {table}").fetchone()[0]
            for table in EVENT_TABLES
            if table in tables
        ]
    ends = [end for end in ends if end is not None]
    if purchases.empty or not ends:
        raise TrainingDataError(f"{path} holds no purchases: nothing to learn from")
    return purchases, pd.Timestamp(max(ends))


def build_training_frame(settings: Settings, labels_file: Path | None = None) -> pd.DataFrame:
    """Labels at the eligible cutoffs joined with point-in-time features from Feast.

    With ``labels_file`` (customer_id, cutoff, label), the retailer's labels replace the
    computed churn label (see :func:`training.labels.replace_churn_labels`); their cutoffs may be
    any time up to the data end, and features are read as of each cutoff all the same.

    Returns:
        One row per customer and eligible cutoff: ``customer_id``, ``event_timestamp``,
        ``churned`` and ``repurchased`` (float, NaN where that target's window is not fully
        observed at the cutoff) and the feature columns of the feature service (NaN where the
        customer has no snapshot row).
    """
    from features.store import historical_features

    purchases, data_end = read_purchases_and_data_end(settings)
    cutoffs = read_snapshot_cutoffs(settings)
    labels = label_frame(
        purchases,
        cutoffs,
        data_end,
        settings.labels.churn_window_days,
        settings.labels.repurchase_window_days,
    )
    if labels.empty:
        raise TrainingDataError(
            f"no cutoff among {len(cutoffs)} snapshots (last {cutoffs[-1] if cutoffs else None}) "
            f"has a full label window before the data end {data_end}: simulate or ingest more "
            "months, or build snapshots earlier"
        )
    if labels_file is not None:
        file_labels = read_label_file(labels_file)
        late = file_labels["event_timestamp"] > to_utc_aware([data_end])[0]
        if late.any():
            raise TrainingDataError(
                f"{labels_file}: {int(late.sum())} label(s) have a cutoff after the data end "
                f"{data_end} (first: {file_labels.loc[late, 'event_timestamp'].iloc[0]}); "
                "features do not exist there yet"
            )
        labels = replace_churn_labels(labels, file_labels)
    entity_df = labels.astype({column: "float64" for column in LABEL_COLUMNS.values()})
    frame = historical_features(settings, entity_df)
    if len(frame) != len(entity_df):
        logger.warning(
            "historical_features returned %d rows for %d entity rows", len(frame), len(entity_df)
        )
    frame = frame.reset_index(drop=True)
    frame.attrs["data_end"] = data_end.isoformat()
    return frame


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns that are features (not keys, timestamps or labels), in frame order."""
    numeric = frame.select_dtypes(include=["number", "bool"]).columns
    return [column for column in numeric if column not in NON_FEATURE_COLUMNS]


# ---- the time split and the models (pure) --------------------------------------------------


@dataclass
class TimeSplit:
    """The rows of one target, split by cutoff into fit, calibration and holdout."""

    fit: pd.DataFrame
    calibration: pd.DataFrame
    holdout: pd.DataFrame

    def slices(self) -> dict[str, pd.DataFrame]:
        return {"fit": self.fit, "calibration": self.calibration, "holdout": self.holdout}

    def cutoffs(self) -> dict[str, list[str]]:
        return {
            name: sorted({ts.isoformat() for ts in part[TIMESTAMP_COLUMN]})
            for name, part in self.slices().items()
        }


def time_split(frame: pd.DataFrame, label: str, holdout_snapshots: int) -> TimeSplit:
    """Split the rows that have ``label`` by cutoff: ... fit | calibration | holdout (last N)."""
    labelled = frame[frame[label].notna()]
    cutoffs = sorted(labelled[TIMESTAMP_COLUMN].unique())
    needed = holdout_snapshots + 2
    if len(cutoffs) < needed:
        raise TrainingDataError(
            f"{label}: {len(cutoffs)} eligible cutoff(s), need at least {needed} "
            f"(fit, calibration and {holdout_snapshots} holdout): add months of history, take "
            "snapshots more often (labels.snapshot_every_days) or lower training.holdout_snapshots"
        )
    holdout_cutoffs = cutoffs[-holdout_snapshots:]
    calibration_cutoff = cutoffs[-holdout_snapshots - 1]
    at = labelled[TIMESTAMP_COLUMN]
    return TimeSplit(
        fit=labelled[at < calibration_cutoff],
        calibration=labelled[at == calibration_cutoff],
        holdout=labelled[at.isin(holdout_cutoffs)],
    )


def matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)


def labels_of(frame: pd.DataFrame, label: str) -> np.ndarray:
    return frame[label].to_numpy(dtype=np.float64).astype(np.int64)


def rfm_rule_scores(frame: pd.DataFrame, kind: str) -> np.ndarray:
    """The rule a CRM team uses without a model: rank by recency, then by frequency.

    Churn score = days since last purchase, ties broken by fewer purchases in 90 days (the
    tie-break adds less than 0.001 day, so it never reorders different recencies). The
    repurchase score is its opposite. A customer without a feature row ranks as the most lapsed.
    """
    if RECENCY_FEATURE not in frame.columns:
        raise TrainingDataError(f"the RFM baseline needs the feature {RECENCY_FEATURE!r}")
    recency = frame[RECENCY_FEATURE].to_numpy(dtype=np.float64, na_value=np.nan)
    recency = np.where(np.isnan(recency), 1e9, recency)
    if FREQUENCY_FEATURE in frame.columns:
        frequency = frame[FREQUENCY_FEATURE].to_numpy(dtype=np.float64, na_value=np.nan)
        frequency = np.nan_to_num(np.clip(frequency, 0.0, None), nan=0.0)
    else:
        frequency = np.zeros(len(frame))
    churn_score = recency + 1e-3 / (1.0 + frequency)
    return churn_score if kind == "churn" else -churn_score


def rfm_baseline_metrics(split: TimeSplit, label: str, kind: str) -> dict[str, float]:
    """Holdout metrics of the RFM rule; its probabilities come from an isotonic map fitted on
    the calibration slice, so that Brier and log loss compare fairly with the model."""
    calibrator = IsotonicCalibrator().fit(
        rfm_rule_scores(split.calibration, kind), labels_of(split.calibration, label)
    )
    holdout_scores = rfm_rule_scores(split.holdout, kind)
    return classification_metrics(
        labels_of(split.holdout, label),
        calibrator.transform(holdout_scores),
        ranking_scores=holdout_scores,
    )


def bgnbd_baseline_metrics(
    split: TimeSplit, label: str, kind: str, purchases: pd.DataFrame, window_days: int
) -> dict[str, float]:
    """Holdout metrics of BG/NBD (only the transaction log): fitted on the purchases before the
    calibration cutoff, it scores each holdout row by P(a purchase in the label window) from
    the purchases before that row's cutoff (churn = 1 minus it)."""
    from training.bgnbd import fit_bgnbd, frequency_recency_summary, probability_any_purchase

    def summary_at(cutoff: pd.Timestamp) -> pd.DataFrame:
        naive = to_utc_naive([cutoff])[0]
        times = to_utc_naive(purchases["occurred_at"])
        bought = purchases.loc[(times < naive) & ~purchases["is_return"].astype(bool).to_numpy()]
        return frequency_recency_summary(bought, naive)

    fit_summary = summary_at(split.calibration[TIMESTAMP_COLUMN].iloc[0])
    params = fit_bgnbd(fit_summary["x"], fit_summary["t_x"], fit_summary["T"])
    scores = np.full(len(split.holdout), np.nan)
    for cutoff in split.holdout[TIMESTAMP_COLUMN].unique():
        rows = (split.holdout[TIMESTAMP_COLUMN] == cutoff).to_numpy()
        summary = summary_at(cutoff).reindex(split.holdout.loc[rows, ENTITY_KEY].to_numpy())
        scores[rows] = probability_any_purchase(
            params, window_days / 7.0, summary["x"], summary["t_x"], summary["T"]
        )
    scores = np.nan_to_num(scores, nan=0.0)  # no purchase before the cutoff: no evidence
    probabilities = 1.0 - scores if kind == "churn" else scores
    return classification_metrics(labels_of(split.holdout, label), probabilities)


def logistic_baseline_metrics(split: TimeSplit, label: str, columns: list[str]) -> dict[str, float]:
    """Holdout metrics of a logistic regression on standardised, median-imputed features."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=2000),
    )
    pipeline.fit(matrix(split.fit, columns), labels_of(split.fit, label))
    probabilities = pipeline.predict_proba(matrix(split.holdout, columns))[:, 1]
    return classification_metrics(labels_of(split.holdout, label), probabilities)


def model_holdout_metrics(
    model: CalibratedClassifier, holdout: pd.DataFrame, label: str
) -> dict[str, float]:
    """Metrics of any fitted model on a holdout frame, using the model's own feature list."""
    missing = [name for name in model.feature_names if name not in holdout.columns]
    if missing:
        raise TrainingDataError(f"the model needs feature(s) absent from the data: {missing}")
    probabilities = model.predict_proba(matrix(holdout, model.feature_names))[:, 1]
    return classification_metrics(labels_of(holdout, label), probabilities)


@dataclass
class TrainedTarget:
    """One target's fitted model, its split and its holdout metrics (model and baselines)."""

    kind: str
    label: str
    model: CalibratedClassifier
    split: TimeSplit
    metrics: dict[str, dict[str, float]]


def train_target(
    settings: Settings,
    frame: pd.DataFrame,
    kind: str,
    holdout_snapshots: int | None = None,
    purchases: pd.DataFrame | None = None,
) -> TrainedTarget:
    """Fit, calibrate and evaluate one target, with its baselines, on the time split.

    ``holdout_snapshots`` defaults to ``training.holdout_snapshots`` (the backtest passes 1).
    With ``purchases`` (the warehouse's, with ``is_return``) BG/NBD joins the baselines.
    """
    label = LABEL_COLUMNS[kind]
    holdout = (
        settings.training.holdout_snapshots if holdout_snapshots is None else holdout_snapshots
    )
    split = time_split(frame, label, holdout)
    columns = feature_columns(frame)
    if not columns:
        raise TrainingDataError("the training frame has no numeric feature column")
    model = fit_calibrated_classifier(
        matrix(split.fit, columns),
        labels_of(split.fit, label),
        matrix(split.calibration, columns),
        labels_of(split.calibration, label),
        columns,
        settings.training.lightgbm,
        settings.training.early_stopping_rounds,
        settings.training.calibration,
    )
    metrics = {
        "model": model_holdout_metrics(model, split.holdout, label),
        "rfm": rfm_baseline_metrics(split, label, kind),
        "logistic": logistic_baseline_metrics(split, label, columns),
    }
    if purchases is not None:
        from training.bgnbd import BGNBDFitError

        window = (
            settings.labels.churn_window_days
            if kind == "churn"
            else settings.labels.repurchase_window_days
        )
        try:
            metrics["bgnbd"] = bgnbd_baseline_metrics(split, label, kind, purchases, window)
        except BGNBDFitError as error:  # e.g. nobody bought twice yet: report without it
            logger.warning("BG/NBD baseline skipped for %s: %s", kind, error)
    return TrainedTarget(kind, label, model, split, metrics)


def reference_features(
    trained: TrainedTarget, sample_rows: int, seed: int = REFERENCE_SEED
) -> pd.DataFrame:
    """The features the churn model learned from (fit and calibration cutoffs), with its scores.

    Drift monitoring compares live features with these rows; sampled to ``sample_rows``
    because Evidently holds everything in memory.
    """
    rows = pd.concat([trained.split.fit, trained.split.calibration], ignore_index=True)
    if len(rows) > sample_rows:
        rows = rows.sample(n=sample_rows, random_state=seed).sort_index()
    columns = trained.model.feature_names
    reference = rows[[ENTITY_KEY, TIMESTAMP_COLUMN, *columns]].reset_index(drop=True)
    reference[REFERENCE_SCORE_COLUMN] = trained.model.predict_proba(matrix(reference, columns))[
        :, 1
    ]
    return reference


# ---- the report ------------------------------------------------------------------------------


@dataclass
class SplitSize:
    rows: int
    positives: int


@dataclass
class ModelReport:
    """What one training run produced and decided for one target."""

    kind: str
    registered_model: str
    run_id: str
    version: str
    champion: bool
    reason: str
    best_iteration: int
    metrics: dict[str, dict[str, float]]
    splits: dict[str, SplitSize]
    cutoffs: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TrainReport:
    models: dict[str, ModelReport]
    reference_path: Path
    tracking_uri: str
    feature_service: str
    n_features: int
    value: ValueReport | None = None
    value_skipped: str | None = None
    uplift: UpliftReport | None = None
    uplift_skipped: str | None = None

    def render(self) -> RenderableType:
        """A rich table for the CLI: holdout metrics of each model beside its baselines."""
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = []
        for report in self.models.values():
            table = Table(
                title=(
                    f"{report.registered_model} v{report.version} "
                    f"({'champion' if report.champion else 'challenger'}): {report.reason}"
                ),
                title_justify="left",
            )
            table.add_column("holdout")
            metric_names = ["roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile"]
            for name in metric_names:
                table.add_column(name, justify="right")
            for scorer, values in report.metrics.items():
                table.add_row(
                    scorer, *(f"{values.get(name, float('nan')):.4f}" for name in metric_names)
                )
            sizes = ", ".join(
                f"{name} {size.rows} rows / {size.positives} positive"
                for name, size in report.splits.items()
            )
            parts += [table, f"  {sizes}; {report.best_iteration} trees; run {report.run_id}"]
        if self.value is not None:
            parts.append(self.value.render())
        elif self.value_skipped:
            parts.append(f"value model skipped: {self.value_skipped}")
        if self.uplift is not None:
            parts.append(self.uplift.render())
        elif self.uplift_skipped:
            parts.append(f"uplift model skipped: {self.uplift_skipped}")
        parts.append(
            f"{self.n_features} features from {self.feature_service}; reference for drift: "
            f"{self.reference_path}; MLflow: {self.tracking_uri}"
        )
        return Group(*parts)


# ---- MLflow (I/O edge) -------------------------------------------------------------------------


# Warnings MLflow prints on every log_model that say nothing actionable here: the pickle format
# warns about loading untrusted files (this registry is the project's own, and the service
# needs the fast pickle path); the environment module cannot find pip in a uv-made venv.
NOISY_LOGGERS = ("mlflow.sklearn", "mlflow.utils.environment")


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _experiment_id(settings: Settings, name: str) -> str:
    """The experiment ``name``, created with its artifacts under the project's MLflow folder."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = (Path(settings.mlflow_artifact_root) / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def log_pickled_model(model: Any, **options: Any) -> Any:
    """Log ``model`` as the active run's ``model`` artifact (sklearn flavour, pickled, with our
    pinned requirements so logging takes no resolver time); ``options`` go to ``log_model``."""
    import mlflow.sklearn

    with _quiet_loggers(*NOISY_LOGGERS):
        return mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
            pip_requirements=_pip_requirements(),
            **options,
        )


def _pip_requirements() -> list[str]:
    """Pinned requirements of the pickled model, given so MLflow does not spend ~10 s on them."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("lightgbm", "scikit-learn", "numpy")]


@dataclass
class ChampionScore:
    """The current champion re-scored on the challenger's holdout, or why it could not be."""

    version: str
    metrics: dict[str, float] | None
    problem: str | None = None


def _score_champion(name: str, holdout: pd.DataFrame, label: str) -> ChampionScore | None:
    """Re-score the current champion on this holdout (``None`` when there is no champion)."""
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        champion = MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None
    version = str(champion.version)
    try:
        model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
        return ChampionScore(version, model_holdout_metrics(model, holdout, label))
    except Exception as error:  # any failure means the champion could not serve either
        # A champion that cannot be loaded (an older class layout, a lost artifact) or that
        # needs features the store no longer serves could not answer requests either.
        logger.warning("champion %s v%s cannot be scored: %s", name, version, error)
        return ChampionScore(version, None, f"{type(error).__name__}: {error}")


def _flat_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    prefix = {
        "model": "holdout",
        "rfm": "baseline_rfm",
        "logistic": "baseline_logistic",
        "bgnbd": "baseline_bgnbd",
    }
    return {
        f"{prefix[scorer]}_{name}": value
        for scorer, values in metrics.items()
        for name, value in values.items()
        if not math.isnan(value)
    }


def log_and_register(
    settings: Settings, trained: TrainedTarget, data_end: str | None = None
) -> ModelReport:
    """Log one trained target to MLflow, register it, tag it, and apply the promotion gate."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    name = MODEL_NAMES[trained.kind]
    training = settings.training
    sizes = {
        split_name: SplitSize(len(part), int(labels_of(part, trained.label).sum()))
        for split_name, part in trained.split.slices().items()
    }
    cutoffs = trained.split.cutoffs()
    champion = _score_champion(name, trained.split.holdout, trained.label)
    if champion is not None and champion.metrics is None:
        promote = True
        reason = f"champion v{champion.version} cannot be scored here ({champion.problem})"
    else:
        promote, reason, _ = promotion_gate(
            trained.metrics, champion.metrics if champion else None, training
        )
    example = trained.split.holdout[trained.model.feature_names].head(INPUT_EXAMPLE_ROWS)
    example = example.astype("float64")
    signature = infer_signature(example, trained.model.predict_proba(example.to_numpy()))
    client = MlflowClient()
    experiment_id = _experiment_id(settings, name)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{trained.kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}",
    ) as run:
        mlflow.log_params(
            {
                **{f"lightgbm.{key}": value for key, value in training.lightgbm.items()},
                "best_iteration": trained.model.best_iteration,
                "early_stopping_rounds": training.early_stopping_rounds,
                "calibration": training.calibration,
                "label": trained.label,
                "label_window_days": (
                    settings.labels.churn_window_days
                    if trained.kind == "churn"
                    else settings.labels.repurchase_window_days
                ),
                "feature_service": settings.features.feature_service,
                "n_features": len(trained.model.feature_names),
                "data_end": data_end,
                "fit_cutoffs_first": cutoffs["fit"][0],
                "fit_cutoffs_last": cutoffs["fit"][-1],
                "calibration_cutoff": cutoffs["calibration"][0],
                "holdout_cutoffs": ",".join(cutoffs["holdout"]),
                "promotion_metric": training.promotion_metric,
                "promotion_margin": training.promotion_margin,
            }
        )
        mlflow.log_metrics(_flat_metrics(trained.metrics))
        mlflow.log_metrics(
            {
                f"{split_name}_{what}": float(getattr(size, what))
                for split_name, size in sizes.items()
                for what in ("rows", "positives")
            }
        )
        mlflow.log_dict(
            {
                "cutoffs": cutoffs,
                "feature_names": trained.model.feature_names,
                "holdout_metrics": trained.metrics,
                "champion_metrics": champion.metrics if champion else None,
            },
            "training_summary.json",
        )
        champion_metrics = champion.metrics if champion else None
        log_model_report(settings, trained, champion_metrics, reason, data_end)
        model_info = log_pickled_model(
            trained.model,
            signature=signature,
            input_example=example,
            pyfunc_predict_fn="predict_proba",
        )
        decision_tags = {
            "promotion_decision": "promoted" if promote else "rejected",
            "promotion_reason": reason,
            "compared_with_champion_version": champion.version if champion else "none",
        }
        mlflow.set_tags(decision_tags)
        version = mlflow.register_model(
            model_info.model_uri,
            name,
            tags={**decision_tags, "run_id": run.info.run_id, "kind": trained.kind},
        )
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
        if promote:
            move_champion(client, name, version.version, reason)
    return ModelReport(
        kind=trained.kind,
        registered_model=name,
        run_id=run.info.run_id,
        version=str(version.version),
        champion=promote,
        reason=reason,
        best_iteration=trained.model.best_iteration,
        metrics=trained.metrics,
        splits=sizes,
        cutoffs=cutoffs,
    )


def write_reference(settings: Settings, reference: pd.DataFrame) -> Path:
    """Write the drift reference atomically: the monitor never reads half a file."""
    path = settings.state_dir / "training" / "reference_features.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(handle)
    try:
        reference.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def train(
    settings: Settings, progress: bool = True, labels_file: Path | None = None
) -> TrainReport:
    """Train both targets, then log, register and gate them, and write the drift reference.

    Args:
        labels_file: optional retailer label file that replaces the computed churn label.
    """
    import mlflow
    from tqdm import tqdm

    from training.uplift import (
        CataloguePriors,
        UpliftDataError,
        classifier_scorer,
        log_and_register_uplift,
        train_uplift,
    )
    from training.value import ValueDataError, log_and_register_value, train_value, value_frame

    steps = tqdm(total=6, desc="train", disable=not progress, leave=False)
    steps.set_postfix_str("training frame")
    frame = build_training_frame(settings, labels_file)
    purchases_end = frame.attrs.get("data_end")
    steps.update()
    purchases, data_end = read_purchases_and_data_end(settings)
    trained: dict[str, TrainedTarget] = {}
    for kind in LABEL_COLUMNS:  # the classifiers; value and uplift are trained below
        steps.set_postfix_str(f"fit {kind}")
        trained[kind] = train_target(settings, frame, kind, purchases=purchases)
        steps.update()
    steps.set_postfix_str("fit value")
    try:
        trained_value = train_value(settings, value_frame(settings, frame, purchases, data_end))
        value_skipped = None
    except ValueDataError as error:  # a short history still trains churn; the reason is shown
        trained_value, value_skipped = None, str(error)
    steps.set_postfix_str("fit uplift")
    try:
        priors = CataloguePriors(  # the implicit champion the uplift model must beat
            settings.actions,
            classifier_scorer(trained["churn"].model),
            classifier_scorer(trained["repurchase"].model),
        )
        trained_uplift = train_uplift(settings, purchases, data_end, priors)
        uplift_skipped = None
    except UpliftDataError as error:  # no campaign history yet: decisions use the priors
        trained_uplift, uplift_skipped = None, str(error)
    steps.update()
    steps.set_postfix_str("register")
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with champion_moves_at_the_end():  # a run killed here leaves every champion alias as it was
        reports = {
            kind: log_and_register(settings, target, purchases_end)
            for kind, target in trained.items()
        }
        value_report = (
            log_and_register_value(settings, trained_value) if trained_value is not None else None
        )
        uplift_report = (
            log_and_register_uplift(settings, trained_uplift)
            if trained_uplift is not None
            else None
        )
        reference_path = write_reference(
            settings, reference_features(trained["churn"], settings.monitoring.sample_rows)
        )
    steps.update()
    steps.close()
    return TrainReport(
        models=reports,
        reference_path=reference_path,
        tracking_uri=settings.mlflow_tracking_uri,
        feature_service=settings.features.feature_service,
        n_features=len(trained["churn"].model.feature_names),
        value=value_report,
        value_skipped=value_skipped,
        uplift=uplift_report,
        uplift_skipped=uplift_skipped,
    )
