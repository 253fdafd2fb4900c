"""API keys: hashed, scoped, 401 without a valid key, 403 without the scope, probes open."""

from __future__ import annotations

import pytest

from omniretain.settings import ApiKey
from serving.auth import AuthError, authorize, hash_key, new_key, presented_key, required_scope

CRM_KEY, CRM_HASH = new_key()
ADMIN_KEY = "admin-secret"
KEYS = [
    ApiKey(name="crm", sha256=CRM_HASH, scopes=["recommend"]),
    ApiKey(name="ops", sha256=hash_key(ADMIN_KEY), scopes=["admin"]),
]


def test_keys_are_stored_as_sha256_never_in_clear() -> None:
    assert CRM_HASH == hash_key(CRM_KEY) and CRM_KEY not in CRM_HASH and len(CRM_HASH) == 64


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/livez", "/metrics"])
def test_probes_stay_open_even_with_keys(path: str) -> None:
    assert authorize(path, {}, KEYS) is None


def test_no_key_is_401_and_a_wrong_key_is_401() -> None:
    with pytest.raises(AuthError) as missing:
        authorize("/recommend", {}, KEYS)
    assert missing.value.status_code == 401
    with pytest.raises(AuthError) as wrong:
        authorize("/recommend", {"x-api-key": "nope"}, KEYS)
    assert wrong.value.status_code == 401


def test_a_key_without_the_scope_is_403() -> None:
    with pytest.raises(AuthError) as refused:
        authorize("/feedback", {"authorization": f"Bearer {CRM_KEY}"}, KEYS)
    assert refused.value.status_code == 403 and "feedback" in refused.value.message


def test_scopes_and_admin() -> None:
    assert authorize("/recommend", {"authorization": f"Bearer {CRM_KEY}"}, KEYS).name == "crm"
    assert authorize("/profile/C1", {"x-api-key": CRM_KEY}, KEYS).name == "crm"
    assert authorize("/events", {"x-api-key": ADMIN_KEY}, KEYS).name == "ops"
    assert required_scope("/something/else") == "admin"


def test_no_configured_key_means_an_open_api() -> None:
    assert authorize("/recommend", {}, []) is None


def test_presented_key_reads_both_headers() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"x-api-key": " xyz "}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None
