"""Feast feature views: ``customer_features`` (batch snapshots) and ``customer_realtime`` (push)."""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64, String

from features.build import feature_specs
from features.contract import ENTITY_KEY, FEATURE_VIEW
from features.feature_repo.data_sources import (
    customer_events_push_source,
    customer_features_source,
)
from features.feature_repo.entities import customer_entity
from omniretain.settings import Settings

_FEAST_TYPES = {"int64": Int64, "float64": Float64}
REALTIME_VIEW = "customer_realtime"
# name -> (dtype, description); epoch seconds keep the values numeric like every other feature
REALTIME_FEATURES: dict[str, tuple[str, str]] = {
    "last_cart_abandoned_at": ("int64", "When the customer last abandoned a cart (epoch s)."),
    "last_case_opened_at": ("int64", "When the customer last opened a service case (epoch s)."),
    "cart_value": ("float64", "Value of the last abandoned cart."),
}


def feature_fields(settings: Settings) -> list[Field]:
    """One typed ``Field`` per feature, with its description as the field tag too."""
    return [
        Field(
            name=spec.name,
            dtype=_FEAST_TYPES[spec.dtype],
            description=spec.description,
            tags={"description": spec.description},
        )
        for spec in feature_specs(settings.features.lookback_days)
    ]


def customer_features_view(
    settings: Settings, entity: Entity | None = None, source: FileSource | None = None
) -> FeatureView:
    """All customer features; online so that serving reads the latest snapshot by id."""
    return FeatureView(
        name=FEATURE_VIEW,
        entities=[entity or customer_entity()],
        ttl=timedelta(days=settings.features.feast_ttl_days),
        schema=[Field(name=ENTITY_KEY, dtype=String), *feature_fields(settings)],
        online=True,
        source=source or customer_features_source(settings),
        description="Point-in-time customer features at each snapshot cutoff.",
    )


def customer_realtime_view(
    settings: Settings, entity: Entity | None = None, source: PushSource | None = None
) -> FeatureView:
    """Fields pushed by real-time events; online only (served beside the batch features)."""
    return FeatureView(
        name=REALTIME_VIEW,
        entities=[entity or customer_entity()],
        ttl=timedelta(days=settings.features.feast_ttl_days),
        schema=[
            Field(name=ENTITY_KEY, dtype=String),
            *[
                Field(name=name, dtype=_FEAST_TYPES[dtype], description=description)
                for name, (dtype, description) in REALTIME_FEATURES.items()
            ],
        ],
        online=True,
        source=source or customer_events_push_source(settings),
        description="Latest real-time events per customer (cart abandonment, service case).",
    )
