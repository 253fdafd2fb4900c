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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from omniretain.settings import Settings, load_settings


@pytest.fixture(scope="module")
def client(served_state: Settings, serve_in_process: Any) -> Iterator[Any]:
    with serve_in_process() as test_client:
        yield test_client


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


def test_recommend_is_one_sized_json_body_and_a_failure_a_logged_500(
    client: Any, serving_rows: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate answers /recommend itself: the Recommendation schema, a Content-Length (not
    BentoML's chunked answer), and an unexpected error is BentoML's JSON 500, not a trace."""
    import bentoml

    from serving.schemas import Recommendation

    customer_id = serving_rows.index[1]
    response = client.post("/recommend", json={"customer_id": customer_id})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert Recommendation.model_validate_json(response.content).customer_id == customer_id

    def fail(*_: Any) -> None:
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(bentoml.get_current_service(), "recommend_one", fail)
    failed = client.post("/recommend", json={"customer_id": customer_id})
    assert failed.status_code == 500
    assert "unexpected error" in failed.json()["error"] and "scoring broke" not in failed.text


def test_an_erased_customer_is_refused_on_every_route_and_nothing_is_recorded(
    client: Any, served_state: Settings
) -> None:
    """After `omniretain erase`, a CRM that still holds the id cannot bring the customer back."""
    from monitoring.logs import read_decisions
    from serving.erased import CHECK_EVERY_S, add_erased
    from serving.policy import ContactStore, contacts_path

    customer_id = "ERASED-7"
    add_erased(served_state.state_dir, [customer_id])
    time.sleep(CHECK_EVERY_S + 0.2)  # the service looks at the list at most once a second
    feedback = {"decision_id": "d-x", "action": "retention_discount", "channel": "email"}
    responses = {
        "/recommend": client.post("/recommend", json={"customer_id": customer_id}),
        "/recommend/batch": client.post(
            "/recommend/batch", json={"customer_ids": ["NOBODY-3", customer_id]}
        ),
        "/feedback": client.post(
            "/feedback", json={**feedback, "customer_id": customer_id, "outcome": "sent"}
        ),
        "/events": client.post(
            "/events",
            json={"customer_id": customer_id, "event_type": "consent_granted", "channel": "sms"},
        ),
        "/profile": client.get(f"/profile/{customer_id}"),
    }
    for route, response in responses.items():
        assert response.status_code == 410, (route, response.text)
        assert "erased" in response.json()["error"], route
    assert responses["/recommend/batch"].json()["error"].startswith("customer_ids[1]:")
    assert responses["/recommend/batch"].json()["erased_indices"] == [1]
    assert client.post("/recommend", json={"customer_id": "NOBODY-3"}).status_code == 200
    time.sleep(served_state.monitoring.decision_log.flush_seconds + 0.5)  # the writer's interval
    assert customer_id not in set(read_decisions(served_state)["customer_id"])
    assert ContactStore(contacts_path(served_state)).recent(customer_id) == []


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
def http_server(serve_http: Any) -> Iterator[str]:
    """``bentoml serve`` on loopback with two API keys and a small batch limit (from the env)."""
    from serving.auth import hash_key

    keys = [
        {"name": "crm", "sha256": hash_key(RECOMMEND_KEY), "scopes": ["recommend"]},
        {"name": "events", "sha256": hash_key(FEEDBACK_KEY), "scopes": ["feedback"]},
    ]
    with serve_http(
        OMNIRETAIN_SERVING__API_KEYS=json.dumps(keys),
        OMNIRETAIN_SERVING__MAX_BATCH_IDS="50",
        OMNIRETAIN_SERVING__RELOAD_POLL_SECONDS="1",
    ) as base_url:
        yield base_url


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


def test_batch_scoring_logs_every_decision(served_state: Settings, tmp_path: Path) -> None:
    """`omniretain score` decisions are served decisions: each one lands in the decision log."""
    from monitoring.logs import read_decisions
    from serving.batch import score_latest

    # the in-process app and the HTTP server of this module log off the request path: let their
    # writers flush what earlier tests asked (batch requests are logged with source "batch" too)
    time.sleep(served_state.monitoring.decision_log.flush_seconds + 1.5)
    before = read_decisions(served_state)
    report = score_latest(served_state, tmp_path / "scores.parquet", reasons_for=5)
    logged = read_decisions(served_state)
    new = logged[~logged["decision_id"].isin(before["decision_id"])]
    batch = new[new["source"] == "batch"]  # the shared app's writer may add earlier requests'
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert len(batch) == report.customers == len(scores)
    assert set(batch["customer_id"]) == set(scores["customer_id"])
    merged = batch.merge(scores, on="customer_id", suffixes=("", "_scored"))
    assert (merged["action"] == merged["action_scored"]).all()
    assert (merged["is_control"] == merged["control_group"]).all()
    assert (batch["churn_model_version"] == report.model_versions["churn"]).all()
