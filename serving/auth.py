"""API keys: hashed at rest, compared in constant time, each with scopes.

Keys live in ``serving.api_keys`` (``configs/omniretain.yaml`` or the environment, e.g.
``OMNIRETAIN_SERVING__API_KEYS='[{"name": "crm", "sha256": "...", "scopes": ["recommend"]}]'``) as
the SHA-256 hex of the key, never the key itself: a leaked config does not leak a key. A client
sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Scopes: ``recommend`` (``/recommend``, ``/recommend/batch``, ``/profile``), ``feedback``
(``/feedback``, ``/events``), ``admin`` (everything). Probes (``/healthz``, ``/livez``,
``/readyz``), ``/metrics`` and the API docs stay open. With no key configured the API is open
(a local demo); production configures keys.

Secrets come only from the environment or from a file outside the repository:
``OMNIRETAIN_SERVING__API_KEYS_FILE=/etc/omniretain/keys.json`` (a JSON list shaped like
``api_keys``; a file inside the project is refused, so no key file is ever committed).

:func:`redact_logs` keeps keys and contact addresses out of every log line of the server: the
access log prints paths, and a client may put an email address in one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omniretain.settings import ApiKey

OPEN_PATHS: frozenset[str] = frozenset(
    {"/healthz", "/livez", "/readyz", "/metrics", "/", "/docs.json"}
)
ROUTE_SCOPES: dict[str, str] = {
    "/recommend": "recommend",
    "/recommend/batch": "recommend",
    "/profile": "recommend",
    "/feedback": "feedback",
    "/events": "feedback",
}
ADMIN_SCOPE = "admin"


class AuthError(Exception):
    """A request the API refuses: 401 (no or unknown key) or 403 (key without the scope)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who made the request (the key's name), for logs."""

    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    """SHA-256 hex of a key: what the config stores."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its hash: give the key to the client, store the hash."""
    key = secrets.token_urlsafe(32)
    return key, hash_key(key)


def required_scope(path: str) -> str | None:
    """The scope a path needs; None for an open path. Unknown paths need ``admin``."""
    if path in OPEN_PATHS or path.startswith("/static"):
        return None
    if path in ROUTE_SCOPES:
        return ROUTE_SCOPES[path]
    if path.startswith("/profile/"):
        return ROUTE_SCOPES["/profile"]
    return ADMIN_SCOPE


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key``; None when absent."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def authenticate(key: str | None, keys: Sequence[ApiKey]) -> Caller:
    """The caller owning ``key``; every configured hash is compared, in constant time.

    Raises:
        AuthError: 401 when the key is missing or matches none.
    """
    if not key:
        raise AuthError(
            401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    presented = hash_key(key)
    found: ApiKey | None = None
    for candidate in keys:  # no early exit: the time does not depend on which key matched
        if hmac.compare_digest(presented, candidate.sha256):
            found = candidate
    if found is None:
        raise AuthError(401, "invalid API key")
    return Caller(name=found.name, scopes=frozenset(found.scopes))


def authorize(path: str, headers: Mapping[str, str], keys: Sequence[ApiKey]) -> Caller | None:
    """Check a request: None for an open path or an API without keys, else its caller.

    Raises:
        AuthError: 401 without a valid key, 403 when the key lacks the path's scope.
    """
    scope = required_scope(path)
    if scope is None or not keys:
        return None
    caller = authenticate(presented_key(headers), keys)
    if scope not in caller.scopes and ADMIN_SCOPE not in caller.scopes:
        raise AuthError(403, f"API key {caller.name!r} lacks the {scope!r} scope needed for {path}")
    return caller


# What never reaches a log: a presented key, an email address, a phone number (``+44 ...``).
PRESENTED_KEY = re.compile(r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=,]\s*[\"']?)[^\s\"',;)]+")
CONTACT_ADDRESSES = re.compile(
    r"[^\s@/\"(),;=]*[^\s@\"(),;](?:@|%40)[^\s@/\"'(),;]+\.[A-Za-z]{2,}"  # email (or %40)
    r"|(?:\+|%2B)\d(?:[\d ().-]|%20){7,}\d"  # international phone number
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with presented keys, email addresses and international phone numbers replaced."""
    text = PRESENTED_KEY.sub(r"\1" + REDACTED, text)
    return CONTACT_ADDRESSES.sub(REDACTED, text)


def redact_logs() -> None:
    """Redact every log record of this process as it is made (all loggers, all handlers).

    A record factory rather than a handler filter: BentoML configures its handlers after our
    import, and a factory applies to all of them. Idempotent.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
