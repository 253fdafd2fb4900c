"""What the service does when a dependency fails: the online store or the model registry.

- **Online store down or slow** (Redis refusing, hanging, a locked SQLite file): a read waits at
  most ``serving.online_read_timeout_seconds``. A failed read trips :class:`OnlineStoreBreaker`:
  for ``serving.online_retry_seconds`` requests do not wait on the store at all, then one tries
  again; the first read that succeeds closes it, so the service recovers by itself. Meanwhile
  ``/recommend`` answers :func:`degraded_decision`: **no contact**, flagged ``degraded: true``
  with the reason. Without the customer's features we know neither their consents nor their
  history; not contacting is the one decision that can never break consent or contact caps.
- **Registry unreachable at start-up**: champions come from the local cache
  (:mod:`serving.model_cache`); with no cache the service answers 503 everywhere but the probes,
  with the reason, and keeps polling the registry.

``/readyz`` (answered by ``serving.service.ApiGate`` from :data:`HEALTH`) follows what a load
balancer expects: **503** with a JSON reason only when the instance cannot answer at all (no
models); **200** otherwise, with ``"status": "degraded"`` and the reason while it answers with
fallbacks. Pulling every instance out of rotation because a shared store is down would turn a
flagged answer into no answer. ``docs/api.md`` documents both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEGRADED_REASON = (
    "Degraded: the online feature store did not answer ({error}); without the customer's "
    "features and consents no contact is made. The store is tried again within {retry:.1f} s."
)


def online_store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the online store failed", not "the code is wrong"."""
    import redis

    return (redis.RedisError, sqlite3.Error, OSError)


class OnlineStoreUnavailableError(RuntimeError):
    """The online store failed or is being skipped after a recent failure."""


@dataclass
class OnlineStoreBreaker:
    """Skip the store for ``retry_seconds`` after a failure; any success closes it again."""

    retry_seconds: float
    failed_at: float | None = None
    error: str | None = None
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def degraded(self) -> bool:
        return self.failed_at is not None

    def should_try(self) -> bool:
        with self._lock:
            return self.failed_at is None or time.monotonic() - self.failed_at >= self.retry_seconds

    def record_success(self) -> None:
        with self._lock:
            self.failed_at, self.error = None, None

    def record_failure(self, error: BaseException) -> None:
        with self._lock:
            self.failed_at = time.monotonic()
            self.error = f"{type(error).__name__}: {error}"[:300]
            self.failures += 1

    def call(self, read: Callable[[], Any]) -> Any:
        """``read()`` unless the breaker is open; a store error opens it.

        Raises:
            OnlineStoreUnavailableError: the store failed now or recently.
        """
        if not self.should_try():
            raise OnlineStoreUnavailableError(self.error or "online store unavailable")
        try:
            result = read()
        except online_store_errors() as error:
            self.record_failure(error)
            raise OnlineStoreUnavailableError(self.error or str(error)) from error
        self.record_success()
        return result


def degraded_decision(error: str, retry_seconds: float) -> dict[str, Any]:
    """The safe decision while the store is down: no contact, with the reason."""
    return {
        "action": "no_action",
        "channel": "none",
        "expected_value": 0.0,
        "reasons": [DEGRADED_REASON.format(error=error, retry=retry_seconds)],
    }


@dataclass
class ServiceHealth:
    """What ``/readyz`` reports for the service of this process (one service per worker)."""

    models_error: str | None = "starting: loading the champion models"
    models_note: str | None = None  # e.g. served from the local cache
    versions: dict[str, str | None] = field(default_factory=dict)
    breaker: OnlineStoreBreaker | None = None
    probe: Callable[[], Any] | None = None
    owner: object | None = None  # the service instance reporting here (the newest one)

    def claim(self, owner: object) -> None:
        """A new service instance reports here from now on (tests start several per process)."""
        self.owner = owner
        self.models_error = "starting: loading the champion models"
        self.models_note, self.versions, self.breaker, self.probe = None, {}, None, None

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``(status code, JSON body)``; probes the online store (bounded by its timeout)."""
        if self.models_error is not None:
            return 503, {"status": "not_ready", "reason": self.models_error}
        reasons: list[str] = []
        store = "ok"
        if self.breaker is not None and self.probe is not None:
            try:  # probed even while the breaker is open: readiness is how recovery shows
                self.probe()
                self.breaker.record_success()
            except online_store_errors() as error:
                self.breaker.record_failure(error)
                store = "unavailable"
                reasons.append(
                    f"online store unavailable ({self.breaker.error}): /recommend answers the "
                    "flagged no-contact fallback"
                )
        if self.models_note:
            reasons.append(self.models_note)
        body: dict[str, Any] = {
            "status": "degraded" if reasons else "ready",
            "online_store": store,
            "models": self.versions,
        }
        if reasons:
            body["reason"] = "; ".join(reasons)
        return 200, body


HEALTH = ServiceHealth()
