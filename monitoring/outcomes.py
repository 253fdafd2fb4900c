"""Outcome tracking: did the scores come true, and did the actions pay?

- **Realised vs predicted**: once a decision's churn window has passed (no purchase within
  ``labels.churn_window_days`` after it = churned), the served ``churn_probability`` is scored
  against what happened: ROC AUC, Brier score, expected calibration error and a calibration table,
  per churn model version. Decisions whose window is still open are left out, never guessed.
- **Campaign results**: from the randomised campaign history (treated sends and the hold-out
  control of the same campaigns), retention (a purchase within ``monitoring.outcome_window_days``)
  and revenue per customer, treated minus control, with a 95 % normal-approximation confidence
  interval, per action and channel; incremental revenue = difference x treated customers.
- **Policy value (IPS)**: the inverse-propensity estimate of the revenue per customer of "send
  action a on channel c to everyone", from the randomised sends and their logged propensities
  (self-normalised too, which has less variance), beside the control's.

Pure functions take frames and return frames; :func:`outcome_report` reads the warehouse and the
decision log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from omniretain.settings import Settings

Z_95 = 1.959963984540054
CONTROL_ACTION = "no_action"


# ---- pure: realised vs predicted ------------------------------------------------------------
def realised_churn(
    decisions: pd.DataFrame, purchases: pd.DataFrame, window_days: int, data_end: pd.Timestamp
) -> pd.DataFrame:
    """Decisions whose window has passed, with ``churned`` (no purchase in the window after).

    Args:
        decisions: ``decision_id``, ``customer_id``, ``decided_at`` (UTC) and the scores.
        purchases: ``customer_id``, ``occurred_at`` (UTC) of sales (returns excluded).
        window_days: the churn label window.
        data_end: the newest purchase data seen; a window ending after it is still open.
    """
    window = pd.Timedelta(days=window_days)
    closed = decisions.loc[pd.to_datetime(decisions["decided_at"], utc=True) + window <= data_end]
    if closed.empty:
        return closed.assign(churned=pd.Series(dtype="float64"))
    left = closed[["decision_id", "customer_id", "decided_at"]].copy()
    left["decided_at"] = pd.to_datetime(left["decided_at"], utc=True)
    right = purchases[["customer_id", "occurred_at"]].copy()
    right["occurred_at"] = pd.to_datetime(right["occurred_at"], utc=True)
    joined = left.merge(right, on="customer_id", how="left")
    in_window = (joined["occurred_at"] > joined["decided_at"]) & (
        joined["occurred_at"] <= joined["decided_at"] + window
    )
    bought = joined.loc[in_window, "decision_id"].unique()
    out = closed.copy()
    out["churned"] = (~out["decision_id"].isin(bought)).astype("float64")
    return out.reset_index(drop=True)


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size."""
    table = calibration_table(labels, scores, bins)
    if table.empty:
        return math.nan
    weights = table["n"] / table["n"].sum()
    return float((weights * (table["observed"] - table["predicted"]).abs()).sum())


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-width score bin: rows, mean predicted score and observed rate (empty bins out)."""
    frame = pd.DataFrame({"y": np.asarray(labels, float), "p": np.asarray(scores, float)})
    frame["bin"] = np.minimum((frame["p"] * bins).astype(int), bins - 1)
    grouped = frame.groupby("bin").agg(
        n=("y", "size"), predicted=("p", "mean"), observed=("y", "mean")
    )
    return grouped.reset_index()


def score_quality(
    realised: pd.DataFrame, version_column: str = "churn_model_version"
) -> pd.DataFrame:
    """ROC AUC, Brier, ECE, mean score and churn rate of served scores per model version.

    ROC AUC is NaN for a version whose closed decisions are all one class (undefined there).
    """
    from sklearn.metrics import roc_auc_score

    rows = []
    for version, group in realised.groupby(version_column):
        labels = group["churned"].to_numpy(float)
        scores = group["churn_probability"].to_numpy(float)
        both = 0 < labels.sum() < len(labels)
        rows.append(
            {
                "model_version": str(version),
                "decisions": len(group),
                "churned": int(labels.sum()),
                "roc_auc": float(roc_auc_score(labels, scores)) if both else math.nan,
                "brier": float(np.mean((scores - labels) ** 2)),
                "ece": expected_calibration_error(labels, scores),
                "mean_score": float(scores.mean()),
                "churn_rate": float(labels.mean()),
            }
        )
    columns = ["model_version", "decisions", "churned", "roc_auc", "brier", "ece"]
    return pd.DataFrame(rows, columns=[*columns, "mean_score", "churn_rate"])


# ---- pure: campaign results ------------------------------------------------------------------
def difference_interval(
    treated: np.ndarray, control: np.ndarray, z: float = Z_95
) -> tuple[float, float, float]:
    """Mean(treated) - mean(control) and its normal-approximation interval (Welch's s.e.)."""
    treated, control = np.asarray(treated, float), np.asarray(control, float)
    if len(treated) == 0 or len(control) == 0:
        return math.nan, math.nan, math.nan
    difference = float(treated.mean() - control.mean())
    variance = 0.0
    for sample in (treated, control):
        variance += float(sample.var(ddof=1)) / len(sample) if len(sample) > 1 else 0.0
    half = z * math.sqrt(variance)
    return difference, difference - half, difference + half


def campaign_results(sends: pd.DataFrame) -> pd.DataFrame:
    """Treated vs control per (action, channel): retention and revenue uplift with 95 % CIs.

    ``sends`` has one row per (customer, send) with ``campaign_id``, ``action``, ``channel``,
    ``is_control``, ``retained`` (0/1) and ``revenue``; each treated group is compared with the
    control customers of the same campaigns.
    """
    control = sends.loc[sends["is_control"]]
    treated = sends.loc[~sends["is_control"]]
    rows = []
    for (action, channel), group in treated.groupby(["action", "channel"]):
        peers = control.loc[control["campaign_id"].isin(group["campaign_id"].unique())]
        retention = difference_interval(group["retained"], peers["retained"])
        revenue = difference_interval(group["revenue"], peers["revenue"])
        rows.append(
            {
                "action": action,
                "channel": channel,
                "treated": len(group),
                "control": len(peers),
                "retention_treated": float(group["retained"].mean()),
                "retention_control": float(peers["retained"].mean()) if len(peers) else math.nan,
                "retention_uplift": retention[0],
                "retention_uplift_low": retention[1],
                "retention_uplift_high": retention[2],
                "revenue_uplift": revenue[0],
                "revenue_uplift_low": revenue[1],
                "revenue_uplift_high": revenue[2],
                "incremental_revenue": revenue[0] * len(group),
            }
        )
    return pd.DataFrame(rows)


def ips_policy_values(sends: pd.DataFrame, reward: str = "revenue") -> pd.DataFrame:
    """IPS and self-normalised IPS value of "always (action, channel)" from randomised sends.

    Each randomised row logged the probability ``propensity`` with which its (action, channel),
    control included, was drawn. For the deterministic policy that always picks (a, c):
    ``IPS = sum(1[logged = (a, c)] * r / p) / N`` and ``SNIPS`` divides by the sum of weights
    instead of N; the standard error is that of the IPS mean.
    """
    randomised = sends.loc[sends["randomised"] & (sends["propensity"] > 0)]
    total = len(randomised)
    rows = []
    if total == 0:
        return pd.DataFrame(columns=["action", "channel", "ips", "ips_se", "snips", "matched"])
    for (action, channel), group in randomised.groupby(["action", "channel"]):
        weighted = np.zeros(total)
        weights = 1.0 / group["propensity"].to_numpy(float)
        weighted[: len(group)] = group[reward].to_numpy(float) * weights
        rows.append(
            {
                "action": action,
                "channel": channel,
                "ips": float(weighted.sum() / total),
                "ips_se": float(weighted.std(ddof=1) / math.sqrt(total)) if total > 1 else math.nan,
                "snips": float(weighted.sum() / weights.sum()),
                "matched": len(group),
            }
        )
    return pd.DataFrame(rows).sort_values("ips", ascending=False).reset_index(drop=True)


def send_outcomes(
    campaigns: pd.DataFrame, purchases: pd.DataFrame, window_days: int, data_end: pd.Timestamp
) -> pd.DataFrame:
    """Each send whose window has closed, with ``retained`` and ``revenue`` within the window."""
    window = pd.Timedelta(days=window_days)
    sends = campaigns.copy()
    sends["occurred_at"] = pd.to_datetime(sends["occurred_at"], utc=True)
    sends = sends.loc[sends["occurred_at"] + window <= data_end].reset_index(drop=True)
    sends["is_control"] = sends["is_control"].fillna(False).astype(bool) | (
        sends["action"] == CONTROL_ACTION
    )
    sends["send_row"] = np.arange(len(sends))
    buys = purchases[["customer_id", "occurred_at", "amount"]].copy()
    buys["occurred_at"] = pd.to_datetime(buys["occurred_at"], utc=True)
    joined = sends[["send_row", "customer_id", "occurred_at"]].merge(
        buys, on="customer_id", suffixes=("", "_buy")
    )
    joined = joined.loc[
        (joined["occurred_at_buy"] > joined["occurred_at"])
        & (joined["occurred_at_buy"] <= joined["occurred_at"] + window)
    ]
    revenue = joined.groupby("send_row")["amount"].sum()
    sends["revenue"] = sends["send_row"].map(revenue).fillna(0.0)
    sends["retained"] = sends["send_row"].isin(revenue.index).astype(float)
    return sends.drop(columns="send_row")


# ---- I/O edge --------------------------------------------------------------------------------
@dataclass
class OutcomeReport:
    """Everything outcome tracking knows today; frames may be empty when data is missing."""

    score_quality: pd.DataFrame
    campaigns: pd.DataFrame
    policy_values: pd.DataFrame
    data_end: pd.Timestamp | None
    decisions_closed: int
    decisions_open: int
    feedback_outcomes: dict[str, int]

    def render(self) -> object:
        from rich.console import Group
        from rich.table import Table

        def table(title: str, frame: pd.DataFrame) -> Table:
            shown = Table(title=title, title_justify="left")
            for column in frame.columns:
                shown.add_column(str(column), justify="right")
            for row in frame.itertuples(index=False):
                shown.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
            return shown

        campaign_columns = [
            "action", "channel", "treated", "control", "retention_uplift",
            "retention_uplift_low", "retention_uplift_high", "incremental_revenue",
        ]  # fmt: skip
        parts: list[object] = [
            f"data end {self.data_end}; decisions with a closed churn window: "
            f"{self.decisions_closed} (still open: {self.decisions_open}); "
            f"feedback: {self.feedback_outcomes or 'none yet'}",
            table("served scores vs what happened, per churn model version", self.score_quality),
        ]
        if not self.campaigns.empty:
            parts.append(
                table(
                    "campaigns: treated minus control (95 % CI)", self.campaigns[campaign_columns]
                )
            )
        if not self.policy_values.empty:
            parts.append(table("policy value per customer (IPS, revenue)", self.policy_values))
        return Group(*parts)


def read_warehouse_outcomes(
    settings: Settings,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]:
    """Sales (returns out), the campaign history, and the newest purchase time."""
    import duckdb

    if not settings.warehouse_path.exists():
        empty = pd.DataFrame(columns=["customer_id", "occurred_at", "amount"])
        return empty, pd.DataFrame(), None
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        purchases = (
            con.execute(
                "SELECT customer_id, occurred_at, amount FROM purchases "
                "WHERE customer_id IS NOT NULL AND NOT coalesce(is_return, false)"
            ).df()
            if "purchases" in tables
            else pd.DataFrame(columns=["customer_id", "occurred_at", "amount"])
        )
        campaigns = (
            con.execute(
                "SELECT customer_id, occurred_at, campaign_id, action, channel, randomised, "
                "propensity, is_control FROM campaigns WHERE customer_id IS NOT NULL"
            ).df()
            if "campaigns" in tables
            else pd.DataFrame()
        )
    for frame in (purchases, campaigns):
        if "occurred_at" in frame.columns:
            frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    data_end = purchases["occurred_at"].max() if not purchases.empty else None
    return purchases, campaigns, data_end


def outcome_report(settings: Settings) -> OutcomeReport:
    """Score quality of served decisions, campaign uplift and policy values, from the state."""
    from monitoring.logs import read_decisions, read_feedback

    purchases, campaigns, data_end = read_warehouse_outcomes(settings)
    decisions = read_decisions(settings)
    quality = score_quality(
        pd.DataFrame(columns=["churn_model_version", "churned", "churn_probability"])
    )
    closed = 0
    if data_end is not None and not decisions.empty:
        realised = realised_churn(decisions, purchases, settings.labels.churn_window_days, data_end)
        closed = len(realised)
        if closed:
            quality = score_quality(realised)
    window = settings.monitoring.outcome_window_days
    if data_end is not None and not campaigns.empty:
        sends = send_outcomes(campaigns, purchases, window, data_end)
        results, values = campaign_results(sends), ips_policy_values(sends)
    else:
        results, values = pd.DataFrame(), pd.DataFrame()
    feedback = read_feedback(settings)
    return OutcomeReport(
        score_quality=quality,
        campaigns=results,
        policy_values=values,
        data_end=data_end,
        decisions_closed=closed,
        decisions_open=len(decisions) - closed,
        feedback_outcomes=feedback["outcome"].value_counts().to_dict()
        if not feedback.empty
        else {},
    )


__all__ = [
    "OutcomeReport",
    "calibration_table",
    "campaign_results",
    "difference_interval",
    "expected_calibration_error",
    "ips_policy_values",
    "outcome_report",
    "realised_churn",
    "score_quality",
    "send_outcomes",
]
