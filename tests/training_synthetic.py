"""Small synthetic retail histories for the training tests: churn here is learnable, not noise.

Each customer buys as a Poisson process from a first-purchase day until a hidden lapse day,
then never again; frequent buyers who stop show a growing recency, which is what the models
and the RFM rule must pick up. Used by ``tests/unit/test_train.py`` and
``tests/integration/test_training.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
from unified_tables import create_unified_tables

START = datetime(2025, 1, 1)


def simulate_purchases(customers: int = 400, days: int = 330, seed: int = 3) -> pd.DataFrame:
    """Purchases (naive UTC) of ``customers`` people over ``days`` days from 2025-01-01."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(customers):
        first_day = rng.uniform(0, 120)
        purchases_per_30_days = rng.lognormal(mean=0.3, sigma=0.6)
        lapse_day = first_day + rng.exponential(150)
        day = first_day
        while day < min(lapse_day, days):
            rows.append(
                {
                    "customer_id": f"c{index:05d}",
                    "occurred_at": START + timedelta(days=float(day)),
                    "channel": rng.choice(["store", "web", "app"]),
                    "amount": float(np.round(rng.lognormal(3.5, 0.5), 2)),
                    "items": int(rng.integers(1, 4)),
                    "is_return": bool(rng.random() < 0.05) and day > first_day,
                    "source_feed": "pos_sales",
                    "source_id": f"t{len(rows)}",
                }
            )
            day += rng.exponential(30 / purchases_per_30_days)
    return pd.DataFrame(rows)


def customers_of(purchases: pd.DataFrame) -> pd.DataFrame:
    first_seen = purchases.groupby("customer_id")["occurred_at"].min().rename("first_seen_at")
    customers = first_seen.reset_index()
    customers["n_source_ids"] = 1
    return customers


def write_warehouse(path, purchases: pd.DataFrame) -> None:
    """A DuckDB warehouse with the contract's unified tables: customers and purchases filled."""
    with duckdb.connect(str(path)) as connection:
        create_unified_tables(
            connection, {"customers": customers_of(purchases), "purchases": purchases}
        )


def point_in_time_features(purchases: pd.DataFrame, cutoffs: list[pd.Timestamp]) -> pd.DataFrame:
    """A few recency/frequency/monetary features from purchases strictly before each cutoff."""
    bought = purchases[~purchases["is_return"]]
    frames = []
    for cutoff in cutoffs:
        naive = cutoff.tz_convert("UTC").tz_localize(None)
        past = bought[bought["occurred_at"] < naive]
        days_ago = (naive - past["occurred_at"]).dt.total_seconds() / 86400
        grouped = past.assign(days_ago=days_ago).groupby("customer_id")
        frame = pd.DataFrame(
            {
                "days_since_last_purchase": grouped["days_ago"].min(),
                "purchases_90d": grouped["days_ago"].apply(lambda d: float((d <= 90).sum())),
                "spend_365d": grouped.apply(
                    lambda g: float(g.loc[g["days_ago"] <= 365, "amount"].sum()),
                    include_groups=False,
                ),
                "tenure_days": grouped["days_ago"].max(),
            }
        ).reset_index()
        frame["event_timestamp"] = cutoff
        frames.append(frame)
    features = pd.concat(frames, ignore_index=True)
    features["created_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC")
    return features[
        [
            "customer_id",
            "event_timestamp",
            "created_timestamp",
            "days_since_last_purchase",
            "purchases_90d",
            "spend_365d",
            "tenure_days",
        ]
    ]
