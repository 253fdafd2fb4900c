"""The online-store breaker and the readiness report (serving/fallback.py), without a server."""

from __future__ import annotations

import sqlite3
import time

import pytest

from serving.fallback import (
    OnlineStoreBreaker,
    OnlineStoreUnavailableError,
    ServiceHealth,
    degraded_decision,
)


def failing() -> None:
    raise sqlite3.OperationalError("database is locked")


def test_a_failure_opens_the_breaker_and_a_success_after_the_interval_closes_it() -> None:
    breaker = OnlineStoreBreaker(retry_seconds=0.2)
    assert breaker.call(lambda: 1) == 1 and not breaker.degraded
    with pytest.raises(OnlineStoreUnavailableError, match="database is locked"):
        breaker.call(failing)
    assert breaker.degraded and breaker.failures == 1
    calls: list[int] = []
    with pytest.raises(OnlineStoreUnavailableError):  # open: the store is not even tried
        breaker.call(lambda: calls.append(1))
    assert calls == []
    time.sleep(0.25)
    assert breaker.call(lambda: 2) == 2 and not breaker.degraded  # recovered by itself


def test_a_programming_error_is_not_a_store_fault() -> None:
    breaker = OnlineStoreBreaker(retry_seconds=1.0)
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["missing"])
    assert not breaker.degraded


def test_readiness_503_without_models_200_degraded_with_the_store_down() -> None:
    health = ServiceHealth()
    status, body = health.readiness()
    assert status == 503 and body["status"] == "not_ready" and body["reason"]

    health.models_error = None
    health.versions = {"churn": "3"}
    health.breaker = OnlineStoreBreaker(retry_seconds=60)
    health.probe = failing
    status, body = health.readiness()
    assert status == 200 and body["status"] == "degraded"
    assert body["online_store"] == "unavailable" and "database is locked" in body["reason"]

    health.probe = lambda: None  # probed even though the breaker is open: recovery shows here
    status, body = health.readiness()
    assert (status, body["status"], body["online_store"]) == (200, "ready", "ok")
    assert not health.breaker.degraded

    health.models_note = "serving the cached champions"
    assert health.readiness()[1]["status"] == "degraded"


def test_the_degraded_decision_contacts_nobody_and_says_why() -> None:
    decision = degraded_decision("ConnectionError: refused", 1.0)
    assert (decision["action"], decision["channel"], decision["expected_value"]) == (
        "no_action",
        "none",
        0.0,
    )
    assert "ConnectionError" in decision["reasons"][0]
