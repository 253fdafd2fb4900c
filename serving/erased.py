"""Erased customers: the service refuses them and records nothing about them.

``omniretain erase`` removes a customer from every store and puts their identifiers on the
warehouse's suppression list, so ingest keeps them out. A CRM that still holds the id could
bring them back through the API: ``/recommend`` would answer cold start and log the decision,
``/events`` and ``/feedback`` would store new rows under the id. So erase also adds the erased
customer ids to ``erased_customers.json`` in the state folder, as salted SHA-256 hashes (the
salt is random, kept in the file; the ids are internal surrogates with nothing left attached, the
hash only keeps the file from listing them in clear), and the service answers **410** for them on
every route that names a customer, before anything is read or written.

The service re-reads the file when its modification time changes, looked at most once a second:
an erasure binds within a second without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ERASED_FILE = "erased_customers.json"
CHECK_EVERY_S = 1.0


def _digest(salt: str, customer_id: str) -> str:
    return hashlib.sha256(f"{salt}:{customer_id}".encode()).hexdigest()


def add_erased(state_dir: Path, customer_ids: Iterable[str]) -> int:
    """Add the ids to the state's erased list (atomically); return how many were new."""
    path = Path(state_dir) / ERASED_FILE
    salt, hashes = _read(path)
    salt = salt or secrets.token_hex(16)
    new = {_digest(salt, customer_id) for customer_id in customer_ids} - hashes
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps({"salt": salt, "hashes": sorted(hashes | new)}))
        os.replace(partial, path)
    return len(new)


def _read(path: Path) -> tuple[str | None, set[str]]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return None, set()
    return str(content["salt"]), set(content["hashes"])


class ErasedCustomers:
    """``customer_id in erased``: True for an erased customer; follows the file as it changes."""

    def __init__(self, state_dir: Path, check_every_s: float = CHECK_EVERY_S) -> None:
        self.path = Path(state_dir) / ERASED_FILE
        self.check_every_s = check_every_s
        self._salt: str | None = None
        self._hashes: set[str] = set()
        self._mtime: float | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.check_every_s:
            return
        with self._lock:
            self._checked_at = now
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                self._salt, self._hashes, self._mtime = None, set(), None
                return
            if mtime != self._mtime:
                try:
                    self._salt, self._hashes = _read(self.path)
                except (OSError, ValueError, KeyError):
                    return  # a file being replaced: keep the last list, look again next time
                self._mtime = mtime

    def __contains__(self, customer_id: object) -> bool:
        self._refresh()
        salt = self._salt
        return salt is not None and _digest(salt, str(customer_id)) in self._hashes

    def refusal(self, customer_ids: Sequence[str], field: str = "customer_id") -> Any:
        """The 410 answer when any of ``customer_ids`` was erased (naming the field), else None.

        A batch (``field`` = ``customer_ids``) is refused whole, naming its first erased index:
        a CRM must drop them, not get decisions for the others only.
        """
        erased = [index for index, customer_id in enumerate(customer_ids) if customer_id in self]
        if not erased:
            return None
        from starlette.responses import JSONResponse

        customer_id = customer_ids[erased[0]]
        name = f"{field}[{erased[0]}]" if field == "customer_ids" else field
        body: dict[str, Any] = {
            "error": f"{name}: customer {customer_id!r} was erased (right to be forgotten); "
            "nothing is recorded or answered for them",
            "customer_id": customer_id,
        }
        if field == "customer_ids":
            body["erased_indices"] = erased
        return JSONResponse(body, status_code=410)
