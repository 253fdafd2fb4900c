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
from pathlib import Path

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


# ---- labels a retailer defines itself ----------------------------------------------------------

LABEL_FILE_COLUMNS = ("customer_id", "cutoff", "label")


class LabelFileError(ValueError):
    """A label file is malformed; the message names the file, the column and the bad rows."""


def read_label_file(path: str | Path) -> pd.DataFrame:
    """Read a retailer's label file (CSV or Parquet: ``customer_id``, ``cutoff``, ``label``)."""
    path = Path(path)
    if not path.exists():
        raise LabelFileError(f"label file {path} does not exist")
    if path.suffix.lower() in {".parquet", ".pq"}:
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype={"customer_id": str})
    return parse_label_file(raw, source=str(path))


def parse_label_file(raw: pd.DataFrame, source: str = "label file") -> pd.DataFrame:
    """Validate a label file's rows and return them as training labels.

    Each row says: at ``cutoff`` (a date or timestamp, UTC), customer ``customer_id`` went on to
    have the outcome ``label`` (1 = the event the retailer wants to prevent, e.g. "contract
    cancelled"; 0 = not). Features are taken as of the cutoff (events strictly before it), so the
    file decides what the model learns, never what it sees.

    Returns:
        ``customer_id`` (str), ``event_timestamp`` (tz-aware UTC), ``churned`` (Int8), sorted.

    Raises:
        LabelFileError: a column is missing, a cutoff does not parse, a label is not 0/1, or a
            (customer, cutoff) pair appears twice with different labels.
    """
    missing = [column for column in LABEL_FILE_COLUMNS if column not in raw.columns]
    if missing:
        raise LabelFileError(
            f"{source}: missing column(s) {missing}; expected {list(LABEL_FILE_COLUMNS)}"
        )
    frame = raw[list(LABEL_FILE_COLUMNS)].copy()
    empty_ids = frame["customer_id"].isna() | (frame["customer_id"].astype(str).str.strip() == "")
    if empty_ids.any():
        raise LabelFileError(f"{source}: empty customer_id on row(s) {_rows(empty_ids)}")
    cutoffs = pd.to_datetime(frame["cutoff"], errors="coerce", utc=True, format="mixed")
    if cutoffs.isna().any():
        raise LabelFileError(f"{source}: unparsable cutoff on row(s) {_rows(cutoffs.isna())}")
    labels = pd.to_numeric(frame["label"].replace({True: 1, False: 0}), errors="coerce")
    bad_labels = ~labels.isin([0, 1])
    if bad_labels.any():
        raise LabelFileError(f"{source}: label must be 0 or 1 on row(s) {_rows(bad_labels)}")
    parsed = pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype(str).str.strip().to_numpy(),
            "event_timestamp": cutoffs.astype("datetime64[ns, UTC]").to_numpy(),
            CHURN_LABEL: labels.astype("int64").to_numpy(),
        }
    )
    parsed["event_timestamp"] = to_utc_aware(parsed["event_timestamp"])
    keys = ["customer_id", "event_timestamp"]
    conflicting = parsed.groupby(keys)[CHURN_LABEL].nunique() > 1
    if conflicting.any():
        first = conflicting[conflicting].index[0]
        raise LabelFileError(
            f"{source}: customer {first[0]} has different labels at cutoff {first[1]}"
        )
    parsed = parsed.drop_duplicates(keys)
    parsed[CHURN_LABEL] = parsed[CHURN_LABEL].astype("Int8")
    return parsed.sort_values(keys, ignore_index=True)


def _rows(mask: pd.Series, limit: int = 5) -> list[int]:
    """1-based data row numbers of the first ``limit`` offending rows (header is row 0)."""
    return [int(index) + 1 for index in np.flatnonzero(mask.to_numpy())[:limit]]


def replace_churn_labels(computed: pd.DataFrame, file_labels: pd.DataFrame) -> pd.DataFrame:
    """The computed label frame with its churn label replaced by the retailer's labels.

    The repurchase label stays as computed; rows only in the file are added (repurchase
    missing), computed rows absent from the file lose their churn label (missing, not 0).
    """
    keys = ["customer_id", "event_timestamp"]
    kept = computed.drop(columns=[CHURN_LABEL])
    merged = kept.merge(file_labels[[*keys, CHURN_LABEL]], on=keys, how="outer")
    for column in (CHURN_LABEL, REPURCHASE_LABEL):
        merged[column] = merged[column].astype("Int8")
    return merged[[*keys, CHURN_LABEL, REPURCHASE_LABEL]].sort_values(keys, ignore_index=True)
