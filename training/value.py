"""Customer value: expected spend over the next 12 months, the value at stake in a decision.

A LightGBM regressor with a Tweedie loss: most customers spend nothing in a window and a few
spend a lot, a compound Poisson-gamma shape that squared error fits badly. The target is the net
spend (sales minus returns, floored at 0) in ``(c, c + window]`` after each cutoff ``c``, read
from the warehouse's purchases; features are the same point-in-time snapshots as churn.

The window is ``training.value_window_days`` when the data is long enough for it; on a shorter
history the longest window with enough fully observed cutoffs is used (at least
``MIN_WINDOW_DAYS``) and predictions are scaled to the 12-month horizon as a constant spend rate.
The model records the window it learned on, and MLflow logs it.

Evaluated on the time holdout against "last year's spend" (``spend_365d`` at the cutoff scaled to
the window): mean absolute error, Spearman rank correlation, and the share of the holdout's total
spend captured by the top decile of predicted value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.labels import to_utc_naive

if TYPE_CHECKING:
    import lightgbm as lgb

    from omniretain.settings import Settings

VALUE_LABEL = "future_spend"
HORIZON_DAYS = 365
MIN_WINDOW_DAYS = 90
MIN_CUTOFFS = 3  # fit, early stopping, holdout
LAST_YEAR_SPEND_FEATURE = "spend_365d"
TWEEDIE_VARIANCE_POWER = 1.3
PREDICTION_THREADS = 1
# A larger value is better for every metric but the error.
VALUE_HIGHER_IS_BETTER = {"spearman": True, "top_decile_capture": True, "mae": False}
VALUE_PROMOTION_METRIC = "spearman"

logger = logging.getLogger(__name__)


class ValueDataError(RuntimeError):
    """Too little history to learn a value model; the message says how much is missing."""


@dataclass
class CustomerValueModel:
    """Booster plus the scale from its training window to the 12-month horizon.

    ``predict(X)`` returns expected net spend in currency over ``horizon_days``; numpy in,
    numpy out, one LightGBM thread (the serving path).
    """

    feature_names: list[str]
    booster: lgb.Booster
    best_iteration: int
    window_days: int
    horizon_days: int = HORIZON_DAYS

    @property
    def scale(self) -> float:
        return self.horizon_days / self.window_days

    def _as_matrix(self, X: Any) -> np.ndarray:
        if hasattr(X, "columns"):
            X = X[self.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected {len(self.feature_names)} feature columns in model.feature_names "
                f"order, got shape {matrix.shape}"
            )
        return matrix

    def predict_window(self, X: Any) -> np.ndarray:
        """Expected spend over the training window (what the booster learned)."""
        return self.booster.predict(
            self._as_matrix(X), num_iteration=self.best_iteration, num_threads=PREDICTION_THREADS
        )

    def predict(self, X: Any) -> np.ndarray:
        """Expected net spend over the next ``horizon_days`` (currency), one value per row."""
        return self.predict_window(X) * self.scale


# ---- labels (pure) -----------------------------------------------------------------------------


def choose_window_days(
    cutoffs: list[pd.Timestamp], data_end: pd.Timestamp, target_days: int, min_days: int
) -> int:
    """The target window if ``MIN_CUTOFFS`` cutoffs observe it fully, else the longest that does.

    Raises:
        ValueDataError: not even ``min_days`` is observable at ``MIN_CUTOFFS`` cutoffs.
    """
    naive = sorted(to_utc_naive(list(cutoffs)).unique())
    end = to_utc_naive([data_end])[0]
    if len(naive) < MIN_CUTOFFS:
        raise ValueDataError(
            f"value model needs {MIN_CUTOFFS} cutoffs, the snapshots have {len(naive)}"
        )
    longest = int((end - naive[-MIN_CUTOFFS]) / pd.Timedelta(days=1))
    window = min(target_days, longest)
    if window < min_days:
        raise ValueDataError(
            f"value model: only {longest} days are observed after the third-last cutoff, need "
            f"{min_days}: ingest more months"
        )
    return window


def future_spend_labels(
    purchases: pd.DataFrame, cutoffs: list[pd.Timestamp], data_end: pd.Timestamp, window_days: int
) -> pd.DataFrame:
    """Net spend in ``[c, c + window]`` per customer bought before ``c``, at each eligible cutoff.

    Returns ``customer_id``, ``event_timestamp`` (UTC), ``future_spend`` (>= 0).
    """
    purchases = purchases.reset_index(drop=True)
    sign = np.ones(len(purchases))
    if "is_return" in purchases.columns:  # a return is money given back: it lowers the spend
        sign[purchases["is_return"].fillna(False).astype(bool).to_numpy()] = -1.0
    frame = purchases[["customer_id", "occurred_at"]].assign(
        net=np.abs(purchases["amount"].fillna(0.0).to_numpy(dtype=np.float64)) * sign
    )
    frame = frame.dropna(subset=["customer_id", "occurred_at"])
    frame = frame.assign(occurred_at=to_utc_naive(frame["occurred_at"]))
    first = frame[frame["net"] > 0].groupby("customer_id")["occurred_at"].min()
    window = pd.Timedelta(days=window_days)
    end = to_utc_naive([data_end])[0]
    rows = []
    for cutoff in sorted(to_utc_naive(list(cutoffs)).unique()):
        if cutoff + window > end:
            continue
        population = first.index[first.to_numpy() < cutoff.to_datetime64()]
        inside = frame[(frame["occurred_at"] >= cutoff) & (frame["occurred_at"] <= cutoff + window)]
        spend = inside.groupby("customer_id")["net"].sum().reindex(population, fill_value=0.0)
        rows.append(
            pd.DataFrame(
                {
                    "customer_id": population.astype(str),
                    "event_timestamp": cutoff.tz_localize("UTC"),
                    VALUE_LABEL: np.clip(spend.to_numpy(), 0.0, None),
                }
            )
        )
    if not rows:
        raise ValueDataError(
            f"no cutoff has a full {window_days}-day value window before {data_end}"
        )
    labels = pd.concat(rows, ignore_index=True)
    labels["event_timestamp"] = labels["event_timestamp"].astype("datetime64[ns, UTC]")
    return labels


# ---- fitting and evaluation (pure) --------------------------------------------------------------


def fit_value_model(
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_stop: np.ndarray,
    y_stop: np.ndarray,
    feature_names: list[str],
    lightgbm_params: dict[str, Any],
    window_days: int,
    early_stopping_rounds: int = 30,
) -> CustomerValueModel:
    """Tweedie trees on the earlier cutoffs, early-stopped on a later one."""
    import lightgbm as lgb

    from training.model import lightgbm_parameters

    params = lightgbm_parameters(
        {
            **lightgbm_params,
            "objective": "tweedie",
            "tweedie_variance_power": TWEEDIE_VARIANCE_POWER,
        }
    )
    regressor = lgb.LGBMRegressor(**params)
    regressor.fit(
        np.asarray(X_fit, dtype=np.float64),
        np.asarray(y_fit, dtype=np.float64),
        eval_set=[(np.asarray(X_stop, dtype=np.float64), np.asarray(y_stop, dtype=np.float64))],
        eval_metric="tweedie",
        feature_name=list(feature_names),
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    booster = regressor.booster_
    best = regressor.best_iteration_ or booster.current_iteration()
    return CustomerValueModel(list(feature_names), booster, int(best), int(window_days))


def top_decile_capture(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Share of total actual spend made by the 10% of customers with the highest prediction."""
    actual = np.asarray(actual, dtype=np.float64)
    total = actual.sum()
    if total <= 0:
        return float("nan")
    top = np.argsort(-np.asarray(predicted, dtype=np.float64), kind="stable")
    return float(actual[top[: max(1, int(np.ceil(0.1 * len(actual))))]].sum() / total)


def value_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, Spearman rank correlation and top-decile capture of a spend prediction."""
    from scipy.stats import spearmanr

    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    spearman = spearmanr(actual, predicted).statistic if np.ptp(predicted) > 0 else np.nan
    return {
        "mae": float(np.mean(np.abs(actual - predicted))),
        "spearman": float(spearman),
        "top_decile_capture": top_decile_capture(actual, predicted),
        "mean_actual": float(actual.mean()),
        "mean_predicted": float(predicted.mean()),
    }


def last_year_spend_baseline(frame: pd.DataFrame, window_days: int) -> np.ndarray:
    """Spend over the last 365 days, scaled to the window: the CRM's "same as last year"."""
    if LAST_YEAR_SPEND_FEATURE not in frame.columns:
        raise ValueDataError(f"the value baseline needs the feature {LAST_YEAR_SPEND_FEATURE!r}")
    past = frame[LAST_YEAR_SPEND_FEATURE].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.nan_to_num(past, nan=0.0) * window_days / 365.0


@dataclass
class TrainedValue:
    model: CustomerValueModel
    metrics: dict[str, dict[str, float]]
    cutoffs: dict[str, list[str]]
    sizes: dict[str, int]
    holdout: pd.DataFrame


def train_value(settings: Settings, frame: pd.DataFrame) -> TrainedValue:
    """Fit and evaluate the value model on a frame of features plus ``future_spend``.

    The split is by cutoff, as for churn: fit | early stopping (one cutoff) | holdout (last).
    """
    from training.train import feature_columns, matrix

    labelled = frame[frame[VALUE_LABEL].notna()]
    cutoffs = sorted(labelled["event_timestamp"].unique())
    if len(cutoffs) < MIN_CUTOFFS:
        raise ValueDataError(f"value model: {len(cutoffs)} labelled cutoff(s), need {MIN_CUTOFFS}")
    at = labelled["event_timestamp"]
    parts = {
        "fit": labelled[at < cutoffs[-2]],
        "calibration": labelled[at == cutoffs[-2]],
        "holdout": labelled[at == cutoffs[-1]],
    }
    columns = [c for c in feature_columns(frame) if c != VALUE_LABEL]
    window = int(frame.attrs.get("value_window_days", HORIZON_DAYS))
    model = fit_value_model(
        matrix(parts["fit"], columns),
        parts["fit"][VALUE_LABEL].to_numpy(),
        matrix(parts["calibration"], columns),
        parts["calibration"][VALUE_LABEL].to_numpy(),
        columns,
        settings.training.lightgbm,
        window,
        settings.training.early_stopping_rounds,
    )
    holdout = parts["holdout"]
    actual = holdout[VALUE_LABEL].to_numpy()
    metrics = {
        "model": value_metrics(actual, model.predict_window(matrix(holdout, columns))),
        "last_year_spend": value_metrics(actual, last_year_spend_baseline(holdout, window)),
    }
    return TrainedValue(
        model=model,
        metrics=metrics,
        cutoffs={
            name: sorted({ts.isoformat() for ts in part["event_timestamp"]})
            for name, part in parts.items()
        },
        sizes={name: len(part) for name, part in parts.items()},
        holdout=holdout,
    )


# ---- registry (I/O edge) -------------------------------------------------------------------


@dataclass
class ValueReport:
    registered_model: str
    run_id: str
    version: str
    champion: bool
    reason: str
    window_days: int
    metrics: dict[str, dict[str, float]]
    sizes: dict[str, int]

    def render(self) -> Any:
        from rich.table import Table

        state = "champion" if self.champion else "challenger"
        table = Table(
            title=f"{self.registered_model} v{self.version} ({state}): {self.reason}",
            title_justify="left",
            caption=(
                f"spend over {self.window_days} days after the cutoff (predict() scales to "
                f"{HORIZON_DAYS}); rows: "
                + ", ".join(f"{name} {rows}" for name, rows in self.sizes.items())
            ),
            caption_justify="left",
        )
        names = ["mae", "spearman", "top_decile_capture", "mean_actual", "mean_predicted"]
        table.add_column("holdout")
        for name in names:
            table.add_column(name, justify="right")
        for scorer, values in self.metrics.items():
            table.add_row(scorer, *(f"{values[name]:.4f}" for name in names))
        return table


def value_frame(
    settings: Settings, frame: pd.DataFrame, purchases: pd.DataFrame, data_end: pd.Timestamp
) -> pd.DataFrame:
    """The training frame's feature rows joined with future spend at value-eligible cutoffs.

    Every value-eligible cutoff is also eligible for the (shorter) classifier windows, so the
    features are already in ``frame``: no second feature-store query.
    """
    cutoffs = sorted(frame["event_timestamp"].unique())
    window = choose_window_days(
        cutoffs, data_end, settings.serving.expected_value_horizon_days, MIN_WINDOW_DAYS
    )
    labels = future_spend_labels(purchases, cutoffs, data_end, window)
    joined = frame.merge(labels, on=["customer_id", "event_timestamp"], how="inner")
    joined.attrs["value_window_days"] = window
    return joined


def _champion_value_metrics(name: str, holdout: pd.DataFrame) -> tuple[str, dict | None] | None:
    """The current value champion's metrics on this holdout (scale-free ones compare fairly)."""
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from training.registry import CHAMPION_ALIAS

    try:
        champion = MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None
    try:
        model = mlflow.sklearn.load_model(f"models:/{name}/{champion.version}")
        return str(champion.version), value_metrics(
            holdout[VALUE_LABEL].to_numpy(), model.predict_window(holdout)
        )
    except Exception as error:  # a champion that cannot score cannot serve either
        logger.warning("value champion v%s cannot be scored: %s", champion.version, error)
        return str(champion.version), None


def log_and_register_value(settings: Settings, trained: TrainedValue) -> ValueReport:
    """Log the value model to MLflow, register it, and move ``champion`` if it ranks better."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from training.registry import CHALLENGER_ALIAS, MODEL_NAMES, move_champion
    from training.train import INPUT_EXAMPLE_ROWS, _experiment_id, log_pickled_model

    name = MODEL_NAMES["value"]
    champion = _champion_value_metrics(name, trained.holdout)
    new = trained.metrics["model"][VALUE_PROMOTION_METRIC]
    margin = settings.training.promotion_margin
    if champion is None:
        promote, reason = True, f"no champion yet; challenger spearman={new:.4f}"
    elif champion[1] is None:
        promote, reason = True, f"champion v{champion[0]} cannot be scored here"
    else:
        old = champion[1][VALUE_PROMOTION_METRIC]
        # An undefined champion score (a constant prediction) loses to any defined one.
        promote = bool(np.isfinite(new) and (not np.isfinite(old) or new - old > margin))
        verdict = "promoted" if promote else "champion kept"
        reason = f"{verdict}: challenger spearman={new:.4f} vs champion {old:.4f}, margin {margin}"
    example = (
        trained.holdout[trained.model.feature_names].head(INPUT_EXAMPLE_ROWS).astype("float64")
    )
    signature = infer_signature(example, trained.model.predict(example.to_numpy()))
    client = MlflowClient()
    with mlflow.start_run(experiment_id=_experiment_id(settings, name), run_name="value") as run:
        mlflow.log_params(
            {
                "objective": "tweedie",
                "tweedie_variance_power": TWEEDIE_VARIANCE_POWER,
                "window_days": trained.model.window_days,
                "horizon_days": trained.model.horizon_days,
                "best_iteration": trained.model.best_iteration,
                "feature_service": settings.features.feature_service,
                "holdout_cutoff": trained.cutoffs["holdout"][0],
                **{f"lightgbm.{k}": v for k, v in settings.training.lightgbm.items()},
            }
        )
        mlflow.log_metrics(
            {
                f"{'holdout' if scorer == 'model' else 'baseline_' + scorer}_{metric}": value
                for scorer, values in trained.metrics.items()
                for metric, value in values.items()
                if np.isfinite(value)
            }
        )
        info = log_pickled_model(trained.model, signature=signature, input_example=example)
        tags = {
            "promotion_decision": "promoted" if promote else "rejected",
            "promotion_reason": reason,
        }
        mlflow.set_tags(tags)
        version = mlflow.register_model(
            info.model_uri, name, tags={**tags, "run_id": run.info.run_id, "kind": "value"}
        )
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
        if promote:  # through move_champion: history for rollback, deferred by train()
            move_champion(client, name, version.version, reason)
    return ValueReport(
        registered_model=name,
        run_id=run.info.run_id,
        version=str(version.version),
        champion=promote,
        reason=reason,
        window_days=trained.model.window_days,
        metrics=trained.metrics,
        sizes=trained.sizes,
    )
