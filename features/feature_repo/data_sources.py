"""Feast data sources: the point-in-time snapshot parquet written by ``features.build``."""

from __future__ import annotations

from feast import FileSource

from features.build import FEATURES_FILE_NAME
from features.contract import FEATURE_VIEW
from omniretain.settings import Settings


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
