"""Bad input, keys and logs, against the real ``bentoml serve`` over HTTP (issue 8).

- Schemathesis generates requests from the service's own OpenAPI document (``/docs.json``), valid
  and invalid ones, for every endpoint; each goes once with a valid key and once without. No
  answer may be a 5xx, and every error is a JSON body whose ``error`` names the field.
- Keys come from a file outside the repository; after requests that carry contact addresses and
  keys, no log of the server (its stdout/stderr, the decision and feedback logs) holds any of them.
- Consent withdrawn through ``/events`` takes effect on the very next ``/recommend``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from omniretain.settings import Settings

ADMIN_KEY = "hardening-admin-key-7f3a9c"
RECOMMEND_KEY = "hardening-recommend-key-42be"
FEEDBACK_KEY = "hardening-feedback-key-c0de"
FUZZ_CASES = 1_100  # generated requests, over every operation; each is sent twice


@pytest.fixture(scope="module")
def hardened_server(serve_http: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bentoml serve`` with keys read from a file outside the repo, default batch limit, and
    BentoML's access log switched on."""
    from serving.auth import hash_key

    keys_file = tmp_path_factory.mktemp("secrets") / "api_keys.json"
    keys = [
        {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
        {"name": "crm", "sha256": hash_key(RECOMMEND_KEY), "scopes": ["recommend"]},
        {"name": "events", "sha256": hash_key(FEEDBACK_KEY), "scopes": ["feedback"]},
    ]
    keys_file.write_text(json.dumps(keys))
    # BentoML's access log is off by default (serving/service.py); an operator may switch it on,
    # and then its lines must be redacted too: switch it on here
    with serve_http(
        OMNIRETAIN_SERVING__ACCESS_LOG="true",
        OMNIRETAIN_SERVING__API_KEYS_FILE=str(keys_file),
        OMNIRETAIN_SERVING__API_KEYS="[]",
        OMNIRETAIN_SERVING__MAX_BATCH_IDS="10000",
    ) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api_schema(hardened_server: str) -> Any:
    return schemathesis.openapi.from_url(f"{hardened_server}/docs.json")


def assert_json_error_naming_the_field(response: Any, label: str) -> None:
    """A 4xx has a JSON body whose ``error`` is a message; a 422 names each field it refuses."""
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # schemathesis keeps every value of a header
        content_type = content_type[0] if content_type else ""
    assert content_type.startswith("application/json"), (label, content_type, response.text)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        label,
        body,
    )
    assert "Traceback" not in response.text, label
    for item in body.get("detail") or []:
        fields = [str(part) for part in item.get("loc", []) if not isinstance(part, int)]
        if fields:
            assert fields[0] in body["error"], (label, body)


def fuzz_api(schema: Any, base_url: str, cases: int) -> Counter[str]:
    """Send ``cases`` generated requests (valid and invalid), each with a key and without."""
    from schemathesis import GenerationMode

    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    sent: Counter[str] = Counter()
    probes = {"/healthz", "/livez", "/readyz", "/metrics"}

    @settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def send(case: Any) -> None:
        label = f"{case.method} {case.path}"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with_key = case.call(base_url=base_url, headers=admin, timeout=60)
        assert_json_error_naming_the_field(with_key, f"{label} with a key")
        without_key = case.call(base_url=base_url, timeout=60)
        assert_json_error_naming_the_field(without_key, f"{label} without a key")
        if case.path not in probes:
            assert without_key.status_code == 401, (label, without_key.text)
        sent[label] += 1

    send()
    return sent


def test_fuzzed_requests_never_get_a_5xx_and_errors_name_the_field(
    api_schema: Any, hardened_server: str
) -> None:
    sent = fuzz_api(api_schema, hardened_server, FUZZ_CASES)
    assert sum(sent.values()) >= 1_000, sent
    assert len(sent) >= 8, sent  # every operation was reached


OVERSIZED: dict[str, tuple[str, bytes, set[int]]] = {
    "batch over 10,000 ids": (
        "/recommend/batch",
        json.dumps({"customer_ids": [f"C{i:09d}" for i in range(10_001)]}).encode(),
        {413},
    ),
    "a 5 MB customer id": ("/recommend", b'{"customer_id": "' + b"C" * 5_000_000 + b'"}', {422}),
    "a cart of 100,000 items": (
        "/recommend",
        json.dumps(
            {
                "customer_id": "C000000001",
                "context": {"cart": [{"product_id": "P", "unit_price": 1.0}] * 100_000},
            }
        ).encode(),
        {422},
    ),
    "a body nested 100,000 deep": ("/recommend", b"[" * 100_000 + b"]" * 100_000, {400, 422}),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_oversized_bodies_are_413_or_422_not_a_crash(hardened_server: str, case: str) -> None:
    path, body, statuses = OVERSIZED[case]
    response = httpx.post(
        f"{hardened_server}{path}",
        content=body,
        headers={"Content-Type": "application/json", "X-API-Key": ADMIN_KEY},
        timeout=120,
    )
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert_json_error_naming_the_field(response, case)
    assert httpx.get(f"{hardened_server}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("GET", "/nowhere", "no such route"),
        ("DELETE", "/recommend", "not allowed"),
        ("POST", "/profile/C0001", "not allowed"),
        ("GET", "/profile/", "no such route"),
        ("GET", "/profile/C0001/extra", "no such route"),
        ("GET", "/profile/jane.doe@example.com", "customer_id"),
        ("GET", "/profile/NOBODY-1", "customer_id"),
    ],
)
def test_routes_outside_bentoml_answer_json_errors(
    hardened_server: str, method: str, path: str, words: str
) -> None:
    response = httpx.request(
        method, f"{hardened_server}{path}", headers={"X-API-Key": ADMIN_KEY}, timeout=30
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json()["error"], response.json()


def test_scopes_are_enforced_over_http(hardened_server: str) -> None:
    recommend = {"customer_id": "C0001"}
    event = {"customer_id": "C0001", "event_type": "case_opened"}
    with httpx.Client(base_url=hardened_server, timeout=60) as http:
        reader, writer = {"X-API-Key": RECOMMEND_KEY}, {"X-API-Key": FEEDBACK_KEY}
        assert http.post("/recommend", json=recommend, headers=reader).status_code == 200
        assert http.post("/recommend", json=recommend, headers=writer).status_code == 403
        assert http.post("/events", json=event, headers=reader).status_code == 403
        assert http.post("/events", json=event, headers=writer).status_code == 200
        assert http.get("/profile/C0001", headers=writer).status_code == 403
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert http.post("/events", json=event, headers=admin).status_code == 200
        assert http.post("/recommend", json=recommend, headers=admin).status_code == 200


def test_consent_withdrawal_takes_effect_on_the_next_decision(
    hardened_server: str, serving_rows: pd.DataFrame
) -> None:
    """A customer who consents to email is offered email; after withdrawing, never again."""
    from serving.decision import CONSENT_FEATURE_BY_CHANNEL

    admin = {"X-API-Key": ADMIN_KEY}
    consenting = serving_rows[serving_rows["consent_email"] == 1.0].index
    with httpx.Client(base_url=hardened_server, timeout=60, headers=admin) as http:
        emailed = None
        for customer_id in consenting:
            body = http.post("/recommend", json={"customer_id": customer_id}).json()
            if body["next_best_action"]["channel"] == "email":
                emailed = customer_id
                break
        assert emailed is not None, "no consenting customer was offered email: nothing to test"
        withdrawal = {
            "customer_id": emailed,
            "event_type": "consent_withdrawn",
            "channel": "email",
        }
        response = http.post("/events", json=withdrawal)
        assert response.status_code == 200, response.text
        for _ in range(30):  # exploration picks random options: none of them may use email
            body = http.post("/recommend", json={"customer_id": emailed}).json()
            assert body["next_best_action"]["channel"] != "email", body
            assert all(option["channel"] != "email" for option in body["alternatives"]), body
        profile = http.get(f"/profile/{emailed}").json()
        assert profile["consents"]["email"] is False, profile
    assert "email" in CONSENT_FEATURE_BY_CHANNEL


def test_no_key_or_contact_address_reaches_any_log(
    hardened_server: str, served_state: Settings
) -> None:
    """Requests carry emails, phone numbers and keys; then every log file is searched."""
    email, phone, url_phone = "jane.doe@example.com", "+44 7911 123456", "+447911123456"
    secrets = [ADMIN_KEY, RECOMMEND_KEY, FEEDBACK_KEY, email, phone, url_phone, "jane.doe"]
    with httpx.Client(base_url=hardened_server, timeout=60) as http:
        for key in (ADMIN_KEY, RECOMMEND_KEY, FEEDBACK_KEY, "wrong-" + ADMIN_KEY):
            headers = {"Authorization": f"Bearer {key}"}
            for contact in (email, phone, url_phone):
                http.post("/recommend", json={"customer_id": contact}, headers=headers)
                http.post("/recommend/batch", json={"customer_ids": [contact]}, headers=headers)
                http.get(f"/profile/{contact}", headers=headers)
                http.post(
                    "/feedback",
                    json={
                        "decision_id": contact,
                        "customer_id": "C0001",
                        "action": contact,
                        "channel": "email",
                        "outcome": "sent",
                    },
                    headers=headers,
                )
                http.post(
                    "/events",
                    json={"customer_id": contact, "event_type": "case_opened"},
                    headers={"X-API-Key": key},
                )
                http.get(f"/nowhere/{contact}", params={"email": contact}, headers=headers)
        assert http.post("/recommend", json={"customer_id": "C0001"}).status_code == 401
    from monitoring.logs import DecisionLogger

    DecisionLogger(served_state).close()  # nothing else to flush here; the server writes its own
    searched = 0
    for path in Path(served_state.state_dir).rglob("*"):
        if not path.is_file() or path.suffix in {".db", ".duckdb"}:
            continue  # the stores hold what the product keeps; logs are what this test is about
        content = path.read_bytes()
        searched += 1
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} found in {path}"
    assert searched > 0
    log = (Path(served_state.state_dir) / "serve.log").read_text(errors="replace")
    assert "/profile/" in log, "the access log is there, only redacted"
