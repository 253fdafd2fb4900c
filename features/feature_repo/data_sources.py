"""Feast data sources: the snapshot parquet of ``features.build`` and the real-time push source."""

from __future__ import annotations

from feast import FileSource, PushSource

from features.build import FEATURES_FILE_NAME
from features.contract import FEATURE_VIEW
from omniretain.settings import Settings

REALTIME_EVENTS_FILE_NAME = "customer_events.parquet"
REALTIME_PUSH_SOURCE = "customer_events_push"


def customer_features_source(settings: Settings) -> FileSource:
    """The offline source: one row per customer and snapshot cutoff (``event_timestamp``).

    The path is stored in the registry at apply time, so a new state dir needs a new apply.
    """
    return FileSource(
        name=f"{FEATURE_VIEW}_source",
        path=str(settings.features_dir / FEATURES_FILE_NAME),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description="Point-in-time customer feature snapshots (only events before the cutoff).",
    )


def customer_events_push_source(settings: Settings) -> PushSource:
    """Real-time events (``POST /events``) pushed straight into the online store.

    Feast requires a batch source behind a push source; omniretain pushes online only, so the
    file is never written by the push path (the warehouse keeps the history of events).
    """
    return PushSource(
        name=REALTIME_PUSH_SOURCE,
        batch_source=FileSource(
            name=f"{REALTIME_PUSH_SOURCE}_batch",
            path=str(settings.features_dir / REALTIME_EVENTS_FILE_NAME),
            timestamp_field="event_timestamp",
        ),
        description="Cart abandonments and service cases as they happen.",
    )
