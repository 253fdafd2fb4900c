"""Contact policy: how often, when and how soon again a customer may be contacted.

Consent is the decision engine's job (:func:`serving.decision.channel_allowed`) and is never
overridden here; this module adds the *pressure* limits a CRM team sets on top of it:

- **caps**: at most ``max_per_channel[channel]`` outbound contacts per channel and ``max_total``
  over all outbound channels in a rolling ``window_days`` window (e.g. 1 email and 1 SMS a week);
- **cooldown after a contact**: no outbound contact within ``cooldown_hours`` of the previous one;
- **action cooldown**: the same action not again within the action's ``cooldown_days``;
- **quiet hours**: no SMS, push or call between ``quiet_hours_start`` and ``quiet_hours_end``
  local time (email waits in the inbox, so it is not a quiet channel by default).

Store and web offers wait for the customer's next visit: they are not outbound contacts and are
never capped. The channel the customer is using right now (``current_channel``) is exempt from
cooldown and quiet hours (the customer is there) but not from caps.

The history of contacts comes from two places, merged in one SQLite file under the state dir
(:class:`ContactStore`): ``POST /feedback`` (what the CRM actually sent) and the ingested feeds
(``messages`` and ``campaigns`` tables of the warehouse, imported by :func:`import_feed_contacts`).
The rules are pure functions of that history and the current time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from omniretain.settings import Action, ContactPolicySettings, Settings

logger = logging.getLogger(__name__)

CONTACTS_FILE = "contacts.sqlite"
FEEDBACK_SOURCE = "feedback"
OUTCOMES: tuple[str, ...] = ("sent", "opened", "clicked", "converted", "ignored", "complained")
"""Every outcome means the contact reached the customer, so each one counts once per decision."""


@dataclass(frozen=True)
class Contact:
    """One contact that reached the customer (UTC, timezone-aware)."""

    channel: str
    action: str
    contacted_at: datetime


@dataclass(frozen=True)
class PolicyVerdict:
    """What the contact policy holds back for one customer now, with the reason in words."""

    blocked_channels: Mapping[str, str] = field(default_factory=dict)
    blocked_actions: Mapping[str, str] = field(default_factory=dict)


OPEN_VERDICT = PolicyVerdict()


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are UTC, as everywhere in omniretain."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def in_quiet_hours(now: datetime, policy: ContactPolicySettings) -> bool:
    """True when the local hour is inside [start, end); the range may wrap past midnight."""
    start, end = policy.quiet_hours_start, policy.quiet_hours_end
    if start == end:
        return False
    hour = _utc(now).astimezone(ZoneInfo(policy.timezone)).hour
    return start <= hour < end if start < end else hour >= start or hour < end


def evaluate_contact_policy(
    history: Iterable[Contact],
    now: datetime,
    policy: ContactPolicySettings,
    actions: Sequence[Action],
    current_channel: str | None = None,
) -> PolicyVerdict:
    """The channels and actions the policy holds back for a customer at ``now``.

    Args:
        history: the customer's contacts (any order; future ones are ignored).
        now: the decision time.
        policy: caps, cooldown and quiet hours.
        actions: the catalogue (for each action's ``cooldown_days``).
        current_channel: the channel the customer is using now, exempt from cooldown and quiet
            hours.
    """
    now = _utc(now)
    outbound = set(policy.outbound_channels)
    past = [c for c in history if _utc(c.contacted_at) <= now]
    window_start = now - timedelta(days=policy.window_days)
    in_window = [c for c in past if _utc(c.contacted_at) > window_start and c.channel in outbound]

    blocked_channels: dict[str, str] = {}
    per_channel: dict[str, int] = {}
    for contact in in_window:
        per_channel[contact.channel] = per_channel.get(contact.channel, 0) + 1
    window = f"{policy.window_days:g} days"
    for channel, cap in policy.max_per_channel.items():
        if per_channel.get(channel, 0) >= cap:
            blocked_channels[channel] = (
                f"{per_channel.get(channel, 0)} {channel} contact(s) in the last {window} "
                f"(cap {cap})"
            )
    if len(in_window) >= policy.max_total:
        for channel in outbound:
            blocked_channels.setdefault(
                channel,
                f"{len(in_window)} contact(s) in the last {window} (cap {policy.max_total})",
            )

    exempt = {current_channel} if current_channel else set()
    last_outbound = max((_utc(c.contacted_at) for c in past if c.channel in outbound), default=None)
    if last_outbound is not None and now - last_outbound < timedelta(hours=policy.cooldown_hours):
        hours = (now - last_outbound).total_seconds() / 3600
        for channel in outbound - exempt:
            blocked_channels.setdefault(
                channel,
                f"contacted {hours:.0f} h ago (cooldown {policy.cooldown_hours:g} h)",
            )
    if in_quiet_hours(now, policy):
        for channel in set(policy.quiet_channels) - exempt:
            blocked_channels.setdefault(
                channel,
                f"quiet hours ({policy.quiet_hours_start:02d}:00-"
                f"{policy.quiet_hours_end:02d}:00 {policy.timezone})",
            )

    blocked_actions: dict[str, str] = {}
    last_by_action: dict[str, datetime] = {}
    for contact in past:
        moment = _utc(contact.contacted_at)
        if moment > last_by_action.get(contact.action, datetime.min.replace(tzinfo=UTC)):
            last_by_action[contact.action] = moment
    for action in actions:
        last = last_by_action.get(action.name)
        if action.cooldown_days > 0 and last is not None:
            if now - last < timedelta(days=action.cooldown_days):
                days = (now - last).total_seconds() / 86400
                blocked_actions[action.name] = (
                    f"{action.name} {days:.0f} day(s) ago (cooldown {action.cooldown_days:g} days)"
                )
    return PolicyVerdict(blocked_channels=blocked_channels, blocked_actions=blocked_actions)


# ---- the contact history store (I/O at the edge) --------------------------------------------
class InvalidFeedbackError(ValueError):
    """A feedback record the store refuses (unknown outcome)."""


def contacts_path(settings: Settings) -> Path:
    """``<state_dir>/serving/contacts.sqlite``."""
    return settings.state_dir / "serving" / CONTACTS_FILE


_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    source TEXT NOT NULL,          -- feedback | messages | campaigns
    source_id TEXT NOT NULL,       -- decision id, or the feed row's id
    customer_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    action TEXT NOT NULL,
    contacted_at TEXT NOT NULL,    -- ISO 8601 UTC
    outcome TEXT,
    revenue REAL,
    PRIMARY KEY (source, source_id)
);
CREATE INDEX IF NOT EXISTS contacts_by_customer ON contacts (customer_id, contacted_at);
CREATE TABLE IF NOT EXISTS consent_changes (  -- the latest consent change per customer and channel
    customer_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    granted INTEGER NOT NULL,
    changed_at TEXT NOT NULL,      -- ISO 8601 UTC
    PRIMARY KEY (customer_id, channel)
);
"""


class ContactStore:
    """Contacts per customer in SQLite (WAL): many readers and writers, threads and processes.

    One connection per thread; writes are single statements, so SQLite's own locking (with a
    busy timeout) makes them safe across BentoML workers. A repeated feedback for the same
    decision keeps one contact and the latest outcome.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self._busy_timeout_s)
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def record_feedback(
        self,
        decision_id: str,
        customer_id: str,
        action: str,
        channel: str,
        outcome: str,
        occurred_at: datetime,
        revenue: float | None = None,
    ) -> None:
        """Store a decision's outcome: the contact counts from its first report."""
        if outcome not in OUTCOMES:
            raise InvalidFeedbackError(f"outcome {outcome!r} is not one of {list(OUTCOMES)}")
        connection = self._connection()
        with connection:
            connection.execute(
                """
                INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source, source_id) DO UPDATE SET
                    outcome = excluded.outcome,
                    revenue = coalesce(excluded.revenue, contacts.revenue)
                """,
                (
                    FEEDBACK_SOURCE,
                    decision_id,
                    customer_id,
                    channel,
                    action,
                    _utc(occurred_at).isoformat(),
                    outcome,
                    revenue,
                ),
            )

    def add_feed_contacts(self, rows: Iterable[tuple[str, str, str, str, str, datetime]]) -> int:
        """Insert ``(source, source_id, customer_id, channel, action, at)`` rows; idempotent."""
        connection = self._connection()
        with connection:
            cursor = connection.executemany(
                "INSERT OR IGNORE INTO contacts (source, source_id, customer_id, channel, action,"
                " contacted_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(s, i, c, ch, a, _utc(at).isoformat()) for s, i, c, ch, a, at in rows],
            )
        return cursor.rowcount

    def record_consent(
        self, customer_id: str, channel: str, granted: bool, changed_at: datetime
    ) -> None:
        """A consent change (``POST /events``): it binds from the next decision on.

        The feature snapshot catches up at the next build; until then this overrides it. An
        older change than the stored one is ignored.
        """
        connection = self._connection()
        with connection:
            connection.execute(
                """
                INSERT INTO consent_changes VALUES (?, ?, ?, ?)
                ON CONFLICT (customer_id, channel) DO UPDATE SET
                    granted = excluded.granted, changed_at = excluded.changed_at
                WHERE excluded.changed_at >= consent_changes.changed_at
                """,
                (customer_id, channel, int(granted), _utc(changed_at).isoformat()),
            )

    def withdrawn_channels(self, customer_id: str) -> frozenset[str]:
        """Channels whose consent the customer withdrew through an event."""
        rows = (
            self._connection()
            .execute(
                "SELECT channel FROM consent_changes WHERE customer_id = ? AND granted = 0",
                (customer_id,),
            )
            .fetchall()
        )
        return frozenset(channel for (channel,) in rows)

    def history(self, customer_id: str, since: datetime) -> list[Contact]:
        """The customer's contacts at or after ``since``, oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT channel, action, contacted_at FROM contacts"
                " WHERE customer_id = ? AND contacted_at >= ? ORDER BY contacted_at",
                (customer_id, _utc(since).isoformat()),
            )
            .fetchall()
        )
        return [
            Contact(channel, action, datetime.fromisoformat(at)) for channel, action, at in rows
        ]

    def histories(self, since: datetime) -> dict[str, list[Contact]]:
        """Every customer's contacts at or after ``since``, oldest first (batch scoring)."""
        rows = (
            self._connection()
            .execute(
                "SELECT customer_id, channel, action, contacted_at FROM contacts"
                " WHERE contacted_at >= ? ORDER BY contacted_at",
                (_utc(since).isoformat(),),
            )
            .fetchall()
        )
        by_customer: dict[str, list[Contact]] = {}
        for customer_id, channel, action, at in rows:
            by_customer.setdefault(customer_id, []).append(
                Contact(channel, action, datetime.fromisoformat(at))
            )
        return by_customer

    def recent(self, customer_id: str, limit: int = 10) -> list[dict[str, object]]:
        """The customer's latest contacts with their outcome, newest first (for the profile)."""
        rows = (
            self._connection()
            .execute(
                "SELECT source, channel, action, contacted_at, outcome FROM contacts"
                " WHERE customer_id = ? ORDER BY contacted_at DESC LIMIT ?",
                (customer_id, limit),
            )
            .fetchall()
        )
        keys = ("source", "channel", "action", "contacted_at", "outcome")
        return [dict(zip(keys, row, strict=True)) for row in rows]


def history_horizon(policy: ContactPolicySettings, actions: Sequence[Action]) -> timedelta:
    """How far back the policy looks: the longest of the window, the cooldowns."""
    days = max(
        [policy.window_days, policy.cooldown_hours / 24, *(a.cooldown_days for a in actions)]
    )
    return timedelta(days=days)


def import_feed_contacts(settings: Settings, store: ContactStore, since: datetime) -> int:
    """Copy recent sent messages and (non-control) campaign contacts from the warehouse.

    The warehouse is opened read-only; when ingestion holds its write lock this returns 0 with a
    warning (the next reload tries again) instead of waiting: serving must never block on it.
    """
    import duckdb

    path = settings.warehouse_path
    if not path.exists():
        return 0
    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        logger.warning("contact history from the feeds skipped: %s", error)
        return 0
    since_naive = _utc(since).replace(tzinfo=None)
    rows: list[tuple[str, str, str, str, str, datetime]] = []
    try:
        tables = {name for (name,) in connection.execute("SHOW TABLES").fetchall()}
        if "messages" in tables:
            for source_id, customer_id, channel, campaign_id, at in connection.execute(
                "SELECT source_id, customer_id, channel, coalesce(campaign_id, ''), occurred_at"
                " FROM messages WHERE customer_id IS NOT NULL AND occurred_at >= ?"
                " AND lower(coalesce(event_type, 'sent')) IN ('sent', 'delivered')",
                [since_naive],
            ).fetchall():
                rows.append(
                    (
                        "messages",
                        str(source_id),
                        customer_id,
                        channel,
                        f"campaign:{campaign_id}",
                        at,
                    )
                )
        if "campaigns" in tables:
            for source_id, customer_id, channel, action, at in connection.execute(
                "SELECT source_id, customer_id, channel, action, occurred_at FROM campaigns"
                " WHERE customer_id IS NOT NULL AND occurred_at >= ?"
                " AND NOT coalesce(is_control, false)",
                [since_naive],
            ).fetchall():
                rows.append(("campaigns", str(source_id), customer_id, channel, action, at))
    except duckdb.Error as error:
        logger.warning("contact history from the feeds skipped: %s", error)
        return 0
    finally:
        connection.close()
    return store.add_feed_contacts(rows)
