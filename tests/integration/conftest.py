"""Integration fixtures: a real ``redis-server`` for the Redis online store tests,
``served_state``: a tiny trained and materialized state that the serving tests share, and the
ways to serve it: ``serve_in_process`` (the ASGI app under Starlette's ``TestClient``) and
``serve_http`` (``bentoml serve`` on loopback), each in an ``environment`` of its own.

``served_state`` builds the state the way the pipeline does, only smaller: a warehouse with
purchases, a features parquet with every column of the feature list, ``features.store``'s apply and
materialize, and ``training.train`` (LightGBM, MLflow registry, champion alias).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.local_redis import local_redis_server, redis_server_path
from omniretain.settings import Settings, load_settings

Environment = Callable[..., AbstractContextManager[None]]


@pytest.fixture(scope="session")
def environment() -> Environment:
    """``with environment(NAME="value", OTHER=None):`` sets (``None``: removes) environment
    variables, and restores them all on leaving: the service reads its settings there."""

    @contextmanager
    def apply(**values: str | None) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in values.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            yield

    return apply


@pytest.fixture(scope="session")
def redis_server_executable() -> str:
    """The ``redis-server`` program. Without it the Redis tests skip locally and fail in CI
    (``CI`` set), where ``.ci/run`` installs it."""
    executable = redis_server_path()
    if executable is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    return executable


@pytest.fixture(scope="session")
def redis_connection_string(redis_server_executable: str) -> Iterator[str]:
    """``host:port`` of a redis-server started for this session (no persistence)."""
    with local_redis_server() as connection_string:
        yield connection_string


CUSTOMERS = 150
DAYS = 300
START = datetime(2025, 1, 1, tzinfo=UTC)
CUTOFF_DAYS = range(60, DAYS + 1, 30)  # the last cutoff (day 300) is the serving snapshot


def simulate_purchases(rng: np.random.Generator) -> pd.DataFrame:
    """Customers who buy at their own rate, a third of them stopping at a random day."""
    rows: list[dict[str, Any]] = []
    for index in range(CUSTOMERS):
        customer_id = f"C{index:04d}"
        purchases_per_day = rng.uniform(0.01, 0.12)
        stop_day = rng.uniform(60, DAYS) if rng.random() < 0.35 else DAYS
        day = rng.exponential(1 / purchases_per_day)
        while day < stop_day:
            rows.append(
                {
                    "customer_id": customer_id,
                    "occurred_at": (START + timedelta(days=float(day))).replace(tzinfo=None),
                    "channel": str(rng.choice(["store", "web", "app"])),
                    "amount": float(round(rng.gamma(2.0, 30.0), 2)),
                    "items": int(rng.integers(1, 5)),
                    "discount_amount": 0.0,
                    "is_return": bool(rng.random() < 0.05),
                    "product_id": f"P{rng.integers(0, 50):03d}",
                    "unit_price": 10.0,
                    "promo_code": None,
                    "source_feed": "pos_sales",
                    "source_id": f"T{len(rows):06d}",
                }
            )
            day += rng.exponential(1 / purchases_per_day)
    return pd.DataFrame(rows)


def write_warehouse(settings: Settings, purchases: pd.DataFrame) -> None:
    import duckdb

    customers = (
        purchases.groupby("customer_id", as_index=False)["occurred_at"]
        .min()
        .rename(columns={"occurred_at": "first_seen_at"})
        .assign(n_source_ids=1)
    )
    with duckdb.connect(str(settings.warehouse_path)) as connection:
        connection.register("purchases_frame", purchases)
        connection.register("customers_frame", customers)
        connection.execute("CREATE TABLE purchases AS SELECT * FROM purchases_frame")
        connection.execute("CREATE TABLE customers AS SELECT * FROM customers_frame")


def build_feature_rows(purchases: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Every column of the feature list; recency/frequency/spend computed, the rest plausible."""
    from features.build import NULLABLE_FEATURES, feature_specs

    specs = feature_specs()
    rows: list[dict[str, Any]] = []
    customer_ids = sorted(purchases["customer_id"].unique())
    for cutoff_day in CUTOFF_DAYS:
        cutoff = START + timedelta(days=cutoff_day)
        naive_cutoff = cutoff.replace(tzinfo=None)
        before = purchases[purchases["occurred_at"] < naive_cutoff]
        for customer_id in customer_ids:
            own = before[before["customer_id"] == customer_id]
            age_days = (naive_cutoff - own["occurred_at"]).dt.total_seconds() / 86400
            row: dict[str, Any] = {}
            for spec in specs:
                if spec.dtype == "int64":
                    row[spec.name] = int(rng.integers(0, 3))
                elif spec.name in NULLABLE_FEATURES and rng.random() < 0.5:
                    row[spec.name] = math.nan
                else:
                    row[spec.name] = float(rng.uniform(0, 10))
            row["days_since_last_purchase"] = (
                float(age_days.min()) if len(own) else float(cutoff_day)
            )
            for days in (30, 90, 365):
                recent = own[age_days <= days]
                row[f"purchases_{days}d"] = int((~recent["is_return"]).sum())
                row[f"spend_{days}d"] = float(recent["amount"].sum())
            row["open_cases"] = int(rng.random() < 0.2)
            row["hours_since_last_abandoned_cart"] = (
                float(rng.uniform(1, 200)) if rng.random() < 0.3 else 99999.0
            )
            for channel in ("email", "sms", "app", "call_center"):
                row[f"consent_{channel}"] = float(rng.random() < 0.6)
            row.update(
                customer_id=customer_id,
                event_timestamp=pd.Timestamp(cutoff),
                created_timestamp=pd.Timestamp(cutoff),
            )
            rows.append(row)
    frame = pd.DataFrame(rows)
    for spec in specs:
        frame[spec.name] = frame[spec.name].astype(spec.dtype)
    return frame[["customer_id", "event_timestamp", "created_timestamp", *[s.name for s in specs]]]


@pytest.fixture(scope="session")
def served_state(
    tmp_path_factory: pytest.TempPathFactory, environment: Environment
) -> Iterator[Settings]:
    """A tiny trained and materialized state; OMNIRETAIN_STATE_DIR points the service at it."""
    from features.build import FEATURES_FILE_NAME
    from features.store import apply_repo, materialize
    from training.train import train

    state_dir = tmp_path_factory.mktemp("serving_state")
    settings = load_settings(
        state_dir=state_dir,
        labels={"churn_window_days": 30, "repurchase_window_days": 14, "snapshot_every_days": 30},
        training={
            "lightgbm": {"n_estimators": 25, "num_leaves": 7, "min_child_samples": 10},
            "early_stopping_rounds": 10,
        },
        monitoring={"sample_rows": 500},
    )
    settings.ensure_dirs()
    rng = np.random.default_rng(5)
    purchases = simulate_purchases(rng)
    write_warehouse(settings, purchases)
    features = build_feature_rows(purchases, rng)
    features.to_parquet(settings.features_dir / FEATURES_FILE_NAME, index=False)
    apply_repo(settings)
    materialize(settings)
    train(settings, progress=False)

    # The service reads its settings from the environment. Two of them would make answers
    # depend on luck and on the wall clock: exploration (a random 5% of decisions) and quiet
    # hours (SMS and app closed from 21:00 to 08:00 London time). Both are switched off here so
    # that every run sees the same decisions; the unit tests cover both rules.
    with environment(
        OMNIRETAIN_STATE_DIR=str(state_dir),
        OMNIRETAIN_SERVING__EXPLORATION_SHARE="0",
        OMNIRETAIN_CONTACT_POLICY__QUIET_HOURS_START="0",
        OMNIRETAIN_CONTACT_POLICY__QUIET_HOURS_END="0",
    ):
        yield settings


@pytest.fixture(scope="session")
def serving_rows(served_state: Settings) -> pd.DataFrame:
    """The latest snapshot: what the online store should serve."""
    path = served_state.features_dir / "customer_features.parquet"
    frame = pd.read_parquet(path)
    return frame[frame["event_timestamp"] == frame["event_timestamp"].max()].set_index(
        "customer_id"
    )


@pytest.fixture(scope="session")
def service_app() -> Any:
    """The service's ASGI app, built once per session.

    BentoML registers its Prometheus metrics when an app first starts, and a second app in the
    same process fails on duplicated metrics. Each ``TestClient`` over this app runs its lifespan,
    hence a new service instance that reads the environment of that moment.
    """
    from serving.service import OmniRetain

    return OmniRetain.to_asgi()


@pytest.fixture(scope="session")
def serve_in_process(service_app: Any, environment: Environment) -> Callable[..., Any]:
    """``with serve_in_process(**env) as client:`` a new service instance, started in that
    environment by the app's lifespan, behind a Starlette ``TestClient``; stopped on leaving.

    One instance at a time: the app holds a single instance, and a lifespan left open past its
    module would be shut down again by the next one.
    """
    from starlette.testclient import TestClient

    @contextmanager
    def start(**env: str | None) -> Iterator[Any]:
        with environment(**env), TestClient(service_app, raise_server_exceptions=False) as client:
            yield client

    return start


@pytest.fixture(scope="session")
def serve_http(served_state: Settings, environment: Environment) -> Callable[..., Any]:
    """``with serve_http(**env) as base_url:`` ``bentoml serve`` on loopback over the session's
    state, in that environment (API keys, limits...); always stopped on leaving."""
    from serving.server import running_server

    @contextmanager
    def start(**env: str | None) -> Iterator[str]:
        with environment(**env), running_server(served_state, timeout_s=300) as base_url:
            yield base_url

    return start
