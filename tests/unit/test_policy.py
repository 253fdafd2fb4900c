"""Contact policy: caps never exceeded, cooldowns and quiet hours, the SQLite contact store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniretain.settings import ContactPolicySettings, load_settings
from serving.decision import channel_allowed, decide
from serving.policy import (
    Contact,
    ContactStore,
    InvalidFeedbackError,
    evaluate_contact_policy,
    in_quiet_hours,
)

CATALOGUE = load_settings().actions
POLICY = ContactPolicySettings(
    window_days=7,
    max_per_channel={"email": 1, "sms": 1},
    max_total=3,
    cooldown_hours=24,
    quiet_hours_start=21,
    quiet_hours_end=8,
    timezone="UTC",
)
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
AT_RISK = {
    "spend_365d": 800.0,
    "open_cases": 0.0,
    "hours_since_last_abandoned_cart": 99999.0,
    "consent_email": 1.0,
    "consent_sms": 1.0,
    "consent_app": 1.0,
    "consent_call_center": 1.0,
}


def test_one_email_a_week_blocks_email_but_not_sms() -> None:
    history = [Contact("email", "retention_discount", NOON - timedelta(days=3))]
    verdict = evaluate_contact_policy(history, NOON, POLICY, CATALOGUE)
    assert "email" in verdict.blocked_channels and "sms" not in verdict.blocked_channels
    assert "cap 1" in verdict.blocked_channels["email"]
    later = evaluate_contact_policy(history, NOON + timedelta(days=5), POLICY, CATALOGUE)
    assert "email" not in later.blocked_channels


def test_cooldown_after_any_contact_blocks_outbound_but_not_store_or_current_channel() -> None:
    history = [Contact("sms", "cart_reminder", NOON - timedelta(hours=2))]
    verdict = evaluate_contact_policy(history, NOON, POLICY, CATALOGUE, current_channel="app")
    assert {"email", "call_center"} <= set(verdict.blocked_channels)
    assert "app" not in verdict.blocked_channels
    assert "store" not in verdict.blocked_channels and "web" not in verdict.blocked_channels


def test_quiet_hours_wrap_past_midnight() -> None:
    assert in_quiet_hours(NOON.replace(hour=22), POLICY)
    assert in_quiet_hours(NOON.replace(hour=3), POLICY)
    assert not in_quiet_hours(NOON.replace(hour=8), POLICY)
    verdict = evaluate_contact_policy([], NOON.replace(hour=23), POLICY, CATALOGUE)
    assert {"sms", "app", "call_center"} == set(verdict.blocked_channels)


def test_action_cooldown_from_the_catalogue() -> None:
    history = [Contact("email", "retention_discount", NOON - timedelta(days=20))]
    verdict = evaluate_contact_policy(history, NOON, POLICY, CATALOGUE)
    assert "retention_discount" in verdict.blocked_actions  # 30-day cooldown
    decision = decide(
        "c",
        AT_RISK,
        0.8,
        0.2,
        {},
        CATALOGUE,
        blocked_channels=verdict.blocked_channels,
        blocked_actions=verdict.blocked_actions,
    )
    assert decision.action != "retention_discount"
    assert any("Contact policy held back" in reason for reason in decision.reasons)


contacts = st.lists(
    st.builds(
        Contact,
        st.sampled_from(["email", "sms", "app", "call_center", "store"]),
        st.sampled_from([a.name for a in CATALOGUE]),
        st.integers(0, 14 * 24).map(lambda hours: NOON - timedelta(hours=hours)),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(contacts, st.floats(0, 1), st.integers(0, 23))
def test_caps_are_never_exceeded_and_consent_never_violated(
    history: list[Contact], churn: float, hour: int
) -> None:
    """Whatever the history: after the chosen contact, no cap is over its limit."""
    now = NOON.replace(hour=hour)
    verdict = evaluate_contact_policy(history, now, POLICY, CATALOGUE)
    features = dict(AT_RISK, consent_sms=0.0, open_cases=1.0)
    decision = decide(
        "c",
        features,
        churn,
        0.2,
        {},
        CATALOGUE,
        blocked_channels=verdict.blocked_channels,
        blocked_actions=verdict.blocked_actions,
    )
    if decision.action == "no_action":
        return
    assert channel_allowed(decision.channel, features)
    if decision.channel not in POLICY.outbound_channels:
        return
    window = [
        c
        for c in history
        if now - timedelta(days=7) < c.contacted_at <= now and c.channel in POLICY.outbound_channels
    ]
    # The new contact fits under every cap (even a history already over a cap adds nothing).
    assert len(window) + 1 <= POLICY.max_total
    cap = POLICY.max_per_channel.get(decision.channel)
    if cap is not None:
        assert sum(c.channel == decision.channel for c in window) + 1 <= cap
    assert not in_quiet_hours(now, POLICY) or decision.channel not in POLICY.quiet_channels


def test_contact_store_counts_feedback_once_per_decision_and_is_thread_safe(tmp_path) -> None:
    store = ContactStore(tmp_path / "contacts.sqlite")

    def report(index: int) -> None:
        for outcome in ("sent", "opened", "clicked"):
            store.record_feedback(f"d{index}", "C1", "cart_reminder", "email", outcome, NOON)

    threads = [threading.Thread(target=report, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = store.history("C1", NOON - timedelta(days=1))
    assert len(history) == 8
    assert {c.channel for c in history} == {"email"}
    assert store.recent("C1", limit=3)[0]["outcome"] == "clicked"
    assert store.history("C2", NOON - timedelta(days=1)) == []
    reopened = ContactStore(tmp_path / "contacts.sqlite")
    assert len(reopened.history("C1", NOON - timedelta(days=1))) == 8


def test_unknown_outcome_is_refused(tmp_path) -> None:
    store = ContactStore(tmp_path / "contacts.sqlite")
    with pytest.raises(InvalidFeedbackError, match="outcome"):
        store.record_feedback("d", "C1", "cart_reminder", "email", "teleported", NOON)
