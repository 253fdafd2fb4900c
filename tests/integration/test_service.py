"""The real BentoML service on a tiny real state: Feast online store, MLflow champions.

The session fixture builds the state the way the pipeline does, only smaller: a warehouse with
purchases, a features parquet with every column of the feature list, ``features.store``'s apply and
materialize, and ``training.train`` (LightGBM, MLflow registry, champion alias). The service then
runs in-process through ``OmniRetain.to_asgi()`` with Starlette's ``TestClient``, which goes through
BentoML's own routing, validation, middlewares and lifespan (so ``__init__`` loads the champions
from the registry exactly as ``bentoml serve`` does).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from omniretain.settings import Settings, load_settings

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
def served_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
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
    env = {
        "OMNIRETAIN_STATE_DIR": str(state_dir),
        "OMNIRETAIN_SERVING__EXPLORATION_SHARE": "0",
        "OMNIRETAIN_CONTACT_POLICY__QUIET_HOURS_START": "0",
        "OMNIRETAIN_CONTACT_POLICY__QUIET_HOURS_END": "0",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield settings
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def client(served_state: Settings) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from serving.service import OmniRetain

    with TestClient(OmniRetain.to_asgi(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def serving_rows(served_state: Settings) -> pd.DataFrame:
    """The latest snapshot: what the online store should serve."""
    path = served_state.features_dir / "customer_features.parquet"
    frame = pd.read_parquet(path)
    return frame[frame["event_timestamp"] == frame["event_timestamp"].max()].set_index(
        "customer_id"
    )


def test_probes_answer(client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_recommend_scores_a_known_customer_with_the_champions(
    client: Any, served_state: Settings, serving_rows: pd.DataFrame
) -> None:
    from training.registry import champion_versions

    customer_id = serving_rows.index[0]
    response = client.post("/recommend", json={"customer_id": customer_id})
    assert response.status_code == 200, response.text
    body = response.json()

    assert body["customer_id"] == customer_id
    assert 0.0 <= body["churn_probability"] <= 1.0
    assert 0.0 <= body["repurchase_probability"] <= 1.0
    assert body["risk_band"] in {"low", "medium", "high"}
    catalogue = {action.name: action for action in served_state.actions}
    action = body["next_best_action"]
    assert action["action"] in catalogue
    assert action["channel"] in catalogue[action["action"]].channels
    assert action["reasons"] and all(isinstance(reason, str) for reason in action["reasons"])
    versions = {k: v for k, v in body["model_versions"].items() if v is not None}
    assert versions == champion_versions(served_state)
    assert len(body["decision_id"]) == 32 and body["control_group"] in (True, False)
    assert body["cold_start"] is False and 0 < body["propensity"] <= 1
    assert body["feature_service"] == served_state.features.feature_service
    assert len(body["alternatives"]) <= 3


def test_every_customer_gets_a_consented_channel_and_an_eligible_action(
    client: Any, served_state: Settings, serving_rows: pd.DataFrame
) -> None:
    """Through the whole stack, not just the decision function: consent is never violated."""
    from serving.decision import CHANNELS_WITHOUT_CONSENT, CONSENT_FEATURE_BY_CHANNEL

    actions_seen: set[str] = set()
    for customer_id, row in serving_rows.head(60).iterrows():
        response = client.post("/recommend", json={"customer_id": customer_id})
        assert response.status_code == 200, response.text
        decision = response.json()["next_best_action"]
        actions_seen.add(decision["action"])
        channel = decision["channel"]
        if decision["action"] == "no_action":
            assert channel == "none" and decision["expected_value"] == 0
            continue
        if not response.json()["explored"]:  # exploration may pick an option worth less
            assert decision["expected_value"] > 0
        if channel not in CHANNELS_WITHOUT_CONSENT:
            assert row[CONSENT_FEATURE_BY_CHANNEL[channel]] == 1.0, (customer_id, decision)
        if decision["action"] == "service_callback":
            assert row["open_cases"] > 0
        if decision["action"] == "cart_reminder":
            assert row["hours_since_last_abandoned_cart"] <= 72
    assert len(actions_seen) >= 2, f"one answer for everyone is suspicious: {actions_seen}"


def test_unknown_customer_gets_the_cold_start_decision(client: Any) -> None:
    response = client.post("/recommend", json={"customer_id": "NOBODY-42"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["customer_id"] == "NOBODY-42" and body["cold_start"] is True
    assert body["next_best_action"]["channel"] in {"none", "store", "web"}  # no consent known
    assert "Cold start" in body["next_best_action"]["reasons"][0]


def test_batch_scores_known_and_unknown_ids(client: Any, serving_rows: pd.DataFrame) -> None:
    ids = [*serving_rows.index[:20], "NOBODY-1"]
    response = client.post("/recommend/batch", json={"customer_ids": ids})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["count"], body["cold_start"]) == (21, 1)
    assert [r["customer_id"] for r in body["results"]] == ids
    assert len({r["decision_id"] for r in body["results"]}) == 21


def test_batch_over_the_limit_is_a_413_naming_the_field(client: Any) -> None:
    ids = [f"C{i}" for i in range(10_001)]
    response = client.post("/recommend/batch", json={"customer_ids": ids})
    assert response.status_code == 413
    assert "customer_ids" in response.json()["error"] and "10000" in response.json()["error"]


def test_the_request_context_changes_the_decision(client: Any, serving_rows: pd.DataFrame) -> None:
    """A low-risk customer with no cart gets nothing; with a cart in hand, a cart reminder."""
    policy = load_settings().contact_policy  # what the service reads: no quiet hours
    assert policy.quiet_hours_start == policy.quiet_hours_end
    changed, seen = 0, []
    for customer_id in serving_rows.index[:40]:
        plain = client.post("/recommend", json={"customer_id": customer_id}).json()
        cart = {"cart": [{"product_id": "P1", "quantity": 2, "unit_price": 80.0}]}
        with_cart = client.post(
            "/recommend", json={"customer_id": customer_id, "context": cart}
        ).json()
        assert not plain["explored"] and not with_cart["explored"]  # exploration is off here
        if plain["control_group"]:
            continue
        actions = plain["next_best_action"]["action"], with_cart["next_best_action"]["action"]
        changed += actions[0] != actions[1]
        seen.append(actions)
    assert changed > 0, seen


def test_feedback_is_stored_and_counted_by_the_contact_policy(
    client: Any, served_state: Settings, serving_rows: pd.DataFrame
) -> None:
    from serving.policy import ContactStore, contacts_path

    customer_id = serving_rows.index[1]
    feedback = {
        "decision_id": "d-test-1",
        "customer_id": customer_id,
        "action": "retention_discount",
        "channel": "email",
        "outcome": "sent",
    }
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 200, response.text
    assert response.json() == {"decision_id": "d-test-1", "stored": True}
    store = ContactStore(contacts_path(served_state))
    assert store.recent(customer_id)[0]["channel"] == "email"
    body = client.post("/recommend", json={"customer_id": customer_id}).json()
    assert body["next_best_action"]["channel"] != "email"  # 1 email a week: cap reached
    assert body["next_best_action"]["action"] != "retention_discount"  # its cooldown


@pytest.mark.parametrize(
    ("change", "field"),
    [({"outcome": "teleported"}, "outcome"), ({"channel": "pigeon"}, "channel")],
)
def test_bad_feedback_is_422_naming_the_field(client: Any, change: dict, field: str) -> None:
    feedback = {
        "decision_id": "d",
        "customer_id": "C0001",
        "action": "retention_discount",
        "channel": "email",
        "outcome": "sent",
        **change,
    }
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 422 and field in response.json()["error"]


def test_profile_merges_what_an_agent_needs(client: Any, serving_rows: pd.DataFrame) -> None:
    customer_id = serving_rows.index[2]
    response = client.get(f"/profile/{customer_id}")
    assert response.status_code == 200, response.text
    profile = response.json()
    assert profile["known"] and profile["warehouse_available"], profile
    assert profile["last_purchases"] and profile["channels_used"]
    assert 0 <= profile["scores"]["churn_probability"] <= 1
    assert client.get("/profile/NOBODY-9").status_code == 404


def test_a_cart_abandonment_event_returns_the_triggered_decision(
    client: Any, serving_rows: pd.DataFrame
) -> None:
    customer_id = serving_rows.index[3]
    event = {"customer_id": customer_id, "event_type": "cart_abandoned", "cart_value": 150.0}
    response = client.post("/events", json=event)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pushed"] is True and body["decision"]["customer_id"] == customer_id
    case = client.post("/events", json={"customer_id": customer_id, "event_type": "case_opened"})
    assert case.status_code == 200 and case.json()["decision"] is None


MALFORMED_BODIES: dict[str, tuple[bytes, str]] = {
    "missing field": (b"{}", "application/json"),
    "empty body": (b"", "application/json"),
    "wrong type": (b'{"customer_id": 42}', "application/json"),
    "null": (b'{"customer_id": null}', "application/json"),
    "empty string": (b'{"customer_id": ""}', "application/json"),
    "blank string": (b'{"customer_id": "   "}', "application/json"),
    "too long": (json.dumps({"customer_id": "C" * 129}).encode(), "application/json"),
    "extra field": (b'{"customer_id": "C0001", "channel": "email"}', "application/json"),
    "nested": (b'{"input": {"customer_id": "C0001"}}', "application/json"),
    "not json": (b"customer_id=C0001", "application/json"),
    "json array": (b'["C0001"]', "application/json"),
    "form encoded": (b"customer_id=C0001", "application/x-www-form-urlencoded"),
    "multipart": (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
    "plain text": (b"C0001", "text/plain"),
}

FIELD_CASES = {
    "missing field",
    "empty body",
    "wrong type",
    "null",
    "empty string",
    "blank string",
    "too long",
    "nested",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_BODIES))
def test_malformed_bodies_are_4xx_naming_customer_id_and_never_a_stack_trace(
    client: Any, case: str
) -> None:
    body, content_type = MALFORMED_BODIES[case]
    response = client.post("/recommend", content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    payload = response.json()
    assert "customer_id" in payload["error"], payload
    assert "Traceback" not in response.text and 'File "' not in response.text
    if case in FIELD_CASES:
        assert ["customer_id"] in [item["loc"] for item in payload["detail"]], payload
    if case == "extra field":
        assert "channel" in payload["error"]


def test_the_openapi_document_shows_the_flat_body(client: Any) -> None:
    spec = client.get("/docs.json").json()
    schema = json.dumps(spec["paths"]["/recommend"]["post"]["requestBody"])
    assert "customer_id" in schema


def test_feature_vector_follows_the_model_order_with_nan_for_missing() -> None:
    from serving.service import feature_vector

    vector = feature_vector({"b": 2.0, "a": 1.0, "c": None}, ["a", "b", "c", "d"])
    assert vector.shape == (1, 4) and vector.dtype == np.float64
    assert vector[0, :2].tolist() == [1.0, 2.0]
    assert np.isnan(vector[0, 2:]).all()


def test_state_dir_reaches_the_service_through_the_environment(served_state: Settings) -> None:
    assert load_settings().state_dir == Path(served_state.state_dir)


# ---- the real server over HTTP: `bentoml serve` with API keys ------------------------------
RECOMMEND_KEY, FEEDBACK_KEY = "test-recommend-key", "test-feedback-key"


@pytest.fixture(scope="module")
def http_server(served_state: Settings) -> Iterator[str]:
    """``bentoml serve`` on loopback with two API keys and a small batch limit (from the env)."""
    from serving.auth import hash_key
    from serving.server import running_server

    keys = [
        {"name": "crm", "sha256": hash_key(RECOMMEND_KEY), "scopes": ["recommend"]},
        {"name": "events", "sha256": hash_key(FEEDBACK_KEY), "scopes": ["feedback"]},
    ]
    env = {
        "OMNIRETAIN_SERVING__API_KEYS": json.dumps(keys),
        "OMNIRETAIN_SERVING__MAX_BATCH_IDS": "50",
        "OMNIRETAIN_SERVING__RELOAD_POLL_SECONDS": "1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with running_server(served_state, timeout_s=240) as base_url:
            yield base_url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_http_probes_are_open_and_the_api_needs_a_key(http_server: str) -> None:
    import httpx

    assert httpx.get(f"{http_server}/healthz").status_code == 200
    assert httpx.get(f"{http_server}/readyz").status_code == 200
    missing = httpx.post(f"{http_server}/recommend", json={"customer_id": "C0001"})
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    wrong = httpx.post(
        f"{http_server}/recommend", json={"customer_id": "C0001"}, headers={"X-API-Key": "x"}
    )
    assert wrong.status_code == 401
    scope = httpx.post(
        f"{http_server}/events",
        json={"customer_id": "C0001", "event_type": "case_opened"},
        headers={"Authorization": f"Bearer {RECOMMEND_KEY}"},
    )
    assert scope.status_code == 403 and "feedback" in scope.json()["error"]


def test_http_every_endpoint_with_its_key(http_server: str, serving_rows: pd.DataFrame) -> None:
    import httpx

    reader = {"Authorization": f"Bearer {RECOMMEND_KEY}"}
    writer = {"X-API-Key": FEEDBACK_KEY}
    customer_id = serving_rows.index[5]
    with httpx.Client(base_url=http_server, timeout=60) as http:
        one = http.post("/recommend", json={"customer_id": customer_id}, headers=reader)
        assert one.status_code == 200, one.text
        body = one.json()
        assert {"decision_id", "control_group", "model_versions", "cold_start"} <= set(body)

        batch = http.post(
            "/recommend/batch", json={"customer_ids": list(serving_rows.index[:10])}, headers=reader
        )
        assert batch.status_code == 200 and batch.json()["count"] == 10
        too_many = http.post(
            "/recommend/batch", json={"customer_ids": [f"C{i}" for i in range(51)]}, headers=reader
        )
        assert too_many.status_code == 413 and "customer_ids" in too_many.json()["error"]

        feedback = {
            "decision_id": body["decision_id"],
            "customer_id": customer_id,
            "action": "free_shipping",
            "channel": "app",
            "outcome": "opened",
        }
        assert http.post("/feedback", json=feedback, headers=writer).status_code == 200

        profile = http.get(f"/profile/{customer_id}", headers=reader)
        assert profile.status_code == 200, profile.text
        assert profile.json()["recent_contacts"][0]["channel"] == "app"
        assert http.get(f"/profile/{customer_id}").status_code == 401

        event = http.post(
            "/events",
            json={"customer_id": customer_id, "event_type": "cart_abandoned", "cart_value": 99.0},
            headers=writer,
        )
        assert event.status_code == 200, event.text
        assert event.json()["decision"]["customer_id"] == customer_id

        bad = http.post("/recommend", json={"customer_id": ""}, headers=reader)
        assert bad.status_code == 422 and "customer_id" in bad.json()["error"]


def test_http_hot_reload_when_the_champion_alias_moves(
    http_server: str, served_state: Settings, serving_rows: pd.DataFrame
) -> None:
    """A new churn champion is served without a restart; no request fails during the swap."""
    import time

    import httpx

    from training.registry import CHAMPION_ALIAS, MODEL_NAMES, _client

    client = _client(served_state)
    name = MODEL_NAMES["churn"]
    current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    # A second version of the same artifact: a real registry change, without a retraining.
    new = client.create_model_version(name, source=current.source, run_id=current.run_id)
    headers = {"Authorization": f"Bearer {RECOMMEND_KEY}"}
    ids = list(serving_rows.index[:20])
    statuses: list[int] = []
    served: set[str] = set()
    try:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, new.version)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=http_server, timeout=30, headers=headers) as http:
            while time.monotonic() < deadline and str(new.version) not in served:
                response = http.post("/recommend", json={"customer_id": ids[len(statuses) % 20]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    served.add(response.json()["model_versions"]["churn"])
    finally:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, current.version)
    assert str(new.version) in served, f"still serving {served} after 60 s"
    assert set(statuses) == {200}, statuses
