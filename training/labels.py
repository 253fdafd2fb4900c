"""Churn and repurchase labels at snapshot cutoffs (pure functions: frames in, frames out).

Definitions, for a cutoff ``c`` (the feature snapshot time; features only use events ``< c``):

* **population at c**: customers with at least one non-return purchase strictly before ``c``.
  A customer who never bought cannot churn, and a score for them would only measure
  acquisition, which is a different problem.
* **churned** = 1 when the customer makes *no* non-return purchase in ``(c, c + N days]``
  (N = ``labels.churn_window_days``); a purchase exactly at ``c`` is in the future of the
  snapshot (features use ``< c``) and so it counts for the label.
* **repurchased** = 1 when the customer makes a non-return purchase in ``[c, c + M days]``
  (M = ``labels.repurchase_window_days``), the same window edges as churn.
* **eligible cutoffs**: ``c + window <= data_end``, so that every label window is fully
  observed; a cutoff whose window runs past the data would label late buyers as churners.

Labels never read anything after ``c + window``: changing later purchases changes no label.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

CHURN_LABEL = "churned"
REPURCHASE_LABEL = "repurchased"
LABEL_COLUMNS: dict[str, str] = {"churn": CHURN_LABEL, "repurchase": REPURCHASE_LABEL}


class LabelInputError(ValueError):
    """The purchases frame does not have the columns the labels need."""


def to_utc_naive(values: pd.Series | pd.DatetimeIndex | Iterable) -> pd.DatetimeIndex:
    """Timestamps as naive UTC, the warehouse's convention (tz-aware values are converted)."""
    index = pd.DatetimeIndex(pd.to_datetime(values))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.astype("datetime64[ns]")


def to_utc_aware(values: pd.Series | pd.DatetimeIndex | Iterable) -> pd.DatetimeIndex:
    """Timestamps as tz-aware UTC, Feast's convention for ``event_timestamp``."""
    return to_utc_naive(values).tz_localize("UTC")


def eligible_cutoffs(
    cutoffs: Iterable, data_end: pd.Timestamp, window_days: int
) -> list[pd.Timestamp]:
    """The cutoffs whose whole label window ``(c, c + window]`` lies inside the observed data.

    Returned sorted, tz-aware UTC, without duplicates.
    """
    naive = to_utc_naive(list(cutoffs)).unique().sort_values()
    end = to_utc_naive([data_end])[0]
    window = pd.Timedelta(days=window_days)
    return [c.tz_localize("UTC") for c in naive if c + window <= end]


def _customer_purchases(purchases: pd.DataFrame) -> pd.DataFrame:
    """Non-return purchases with naive-UTC times: returns are not a sign of engagement."""
    missing = {"customer_id", "occurred_at"} - set(purchases.columns)
    if missing:
        raise LabelInputError(f"purchases frame lacks column(s) {sorted(missing)}")
    frame = purchases[["customer_id", "occurred_at"]].copy()
    if "is_return" in purchases.columns:
        is_return = purchases["is_return"].fillna(False).astype(bool).to_numpy()
        frame = frame.loc[~is_return]
    frame = frame.dropna(subset=["customer_id", "occurred_at"])
    frame["occurred_at"] = to_utc_naive(frame["occurred_at"])
    return frame


def purchase_window_labels(
    purchases: pd.DataFrame, cutoffs: Iterable, window_days: int
) -> pd.DataFrame:
    """For each cutoff, every customer of the population and whether they bought in the window.

    Args:
        purchases: rows with ``customer_id``, ``occurred_at`` (naive UTC or tz-aware) and,
            optionally, ``is_return`` (returns are ignored).
        cutoffs: snapshot cutoffs; pass only eligible ones (see :func:`eligible_cutoffs`).
        window_days: the label window length in days.

    Returns:
        ``customer_id``, ``event_timestamp`` (tz-aware UTC cutoff) and ``bought_in_window``
        (bool), one row per customer in the population at each cutoff, sorted.
    """
    bought = _customer_purchases(purchases)
    window = pd.Timedelta(days=window_days)
    first_purchase = bought.groupby("customer_id")["occurred_at"].min()
    frames = []
    for cutoff in to_utc_naive(list(cutoffs)).unique().sort_values():
        population = first_purchase.index[first_purchase.to_numpy() < cutoff.to_datetime64()]
        in_window = bought[
            (bought["occurred_at"] >= cutoff) & (bought["occurred_at"] <= cutoff + window)
        ]
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": population.astype(str),
                    "event_timestamp": cutoff.tz_localize("UTC"),
                    "bought_in_window": np.isin(
                        population.to_numpy(), in_window["customer_id"].unique()
                    ),
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                "customer_id": pd.Series(dtype=str),
                "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                "bought_in_window": pd.Series(dtype=bool),
            }
        )
    labels = pd.concat(frames, ignore_index=True)
    labels["event_timestamp"] = labels["event_timestamp"].astype("datetime64[ns, UTC]")
    return labels.sort_values(["event_timestamp", "customer_id"], ignore_index=True)


def churn_labels(purchases: pd.DataFrame, cutoffs: Iterable, window_days: int) -> pd.DataFrame:
    """``customer_id``, ``event_timestamp``, ``churned`` (1 = no non-return purchase in window)."""
    labels = purchase_window_labels(purchases, cutoffs, window_days)
    labels[CHURN_LABEL] = (~labels.pop("bought_in_window")).astype(np.int8)
    return labels


def repurchase_labels(purchases: pd.DataFrame, cutoffs: Iterable, window_days: int) -> pd.DataFrame:
    """``customer_id``, ``event_timestamp``, ``repurchased`` (1 = a purchase in the window)."""
    labels = purchase_window_labels(purchases, cutoffs, window_days)
    labels[REPURCHASE_LABEL] = labels.pop("bought_in_window").astype(np.int8)
    return labels


def label_frame(
    purchases: pd.DataFrame,
    cutoffs: Iterable,
    data_end: pd.Timestamp,
    churn_window_days: int,
    repurchase_window_days: int,
) -> pd.DataFrame:
    """Both labels at every cutoff eligible for at least one of them.

    A label is missing (``<NA>``) at a cutoff that is not eligible for its own window: the
    short repurchase window becomes observable at more recent cutoffs than churn does.

    Returns:
        ``customer_id``, ``event_timestamp``, ``churned`` and ``repurchased`` (nullable Int8),
        sorted by cutoff then customer.
    """
    cutoffs = list(cutoffs)
    churn_cutoffs = eligible_cutoffs(cutoffs, data_end, churn_window_days)
    repurchase_cutoffs = eligible_cutoffs(cutoffs, data_end, repurchase_window_days)
    keys = ["customer_id", "event_timestamp"]
    churn = churn_labels(purchases, churn_cutoffs, churn_window_days)
    repurchase = repurchase_labels(purchases, repurchase_cutoffs, repurchase_window_days)
    labels = repurchase.merge(churn, on=keys, how="outer")
    for column in (CHURN_LABEL, REPURCHASE_LABEL):
        labels[column] = labels[column].astype("Int8")
    return labels[[*keys, CHURN_LABEL, REPURCHASE_LABEL]].sort_values(keys, ignore_index=True)
