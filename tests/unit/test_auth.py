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


def test_every_configured_hash_is_compared_in_constant_time(monkeypatch) -> None:
    """``hmac.compare_digest`` for each configured key, whether or not an earlier one matched."""
    import hmac

    import serving.auth as auth

    calls: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert authorize("/recommend", {"x-api-key": CRM_KEY}, KEYS).name == "crm"
    assert [b for _, b in calls] == [key.sha256 for key in KEYS]  # no early exit
    assert all(a == CRM_HASH for a, _ in calls)  # the presented key is hashed first


def test_the_key_and_its_hash_never_appear_in_an_error_message() -> None:
    for headers in ({"x-api-key": "not-a-key-123"}, {"authorization": f"Bearer {CRM_KEY}"}):
        with pytest.raises(AuthError) as refused:
            authorize("/feedback", headers, KEYS)
        secret = next(iter(headers.values())).removeprefix("Bearer ")
        assert secret not in refused.value.message
        assert hash_key(secret) not in refused.value.message


def test_keys_file_outside_the_repo_is_read(tmp_path, monkeypatch) -> None:
    import json

    from omniretain.settings import load_settings

    keys_file = tmp_path / "keys.json"
    keys_file.write_text(
        json.dumps([{"name": "ops", "sha256": hash_key("k"), "scopes": ["admin"]}])
    )
    monkeypatch.setenv("OMNIRETAIN_SERVING__API_KEYS_FILE", str(keys_file))
    settings = load_settings(state_dir=tmp_path / "state")
    assert [key.name for key in settings.serving.api_keys] == ["ops"]


def test_keys_file_inside_the_repo_is_refused(tmp_path, monkeypatch) -> None:
    from pydantic import ValidationError

    from omniretain.settings import PROJECT_ROOT, load_settings

    monkeypatch.setenv("OMNIRETAIN_SERVING__API_KEYS_FILE", str(PROJECT_ROOT / "keys.json"))
    with pytest.raises(ValidationError, match="inside the project"):
        load_settings(state_dir=tmp_path / "state")
    monkeypatch.setenv("OMNIRETAIN_SERVING__API_KEYS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="cannot read"):
        load_settings(state_dir=tmp_path / "state")


def test_no_key_hash_or_clear_key_is_committed_in_the_configs() -> None:
    from omniretain.settings import PROJECT_ROOT

    for path in (PROJECT_ROOT / "configs").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "sha256:" not in text.replace(" ", "") or "api_keys: []" in text, path
