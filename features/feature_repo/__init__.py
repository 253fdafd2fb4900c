"""The Feast repo of omniretain, split by kind (entities, sources, views, services).

Every object is built by a function of the settings, because paths live in the settings and
differ between the CLI, the tests and the serving workers. ``features.store.apply_repo`` applies
:func:`repo_objects`; importing this package imports Feast (seconds), so light modules must not.
"""

from __future__ import annotations

from typing import Any

from features.feature_repo.data_sources import (
    REALTIME_PUSH_SOURCE,
    customer_events_push_source,
    customer_features_source,
)
from features.feature_repo.entities import customer_entity
from features.feature_repo.feature_services import churn_feature_service, nba_feature_service
from features.feature_repo.feature_views import (
    REALTIME_FEATURES,
    REALTIME_VIEW,
    customer_features_view,
    customer_realtime_view,
)
from omniretain.settings import Settings


def repo_objects(settings: Settings) -> list[Any]:
    """Entity, sources, feature views and feature services, in the order Feast applies them."""
    entity = customer_entity()
    source = customer_features_source(settings)
    push_source = customer_events_push_source(settings)
    view = customer_features_view(settings, entity=entity, source=source)
    realtime = customer_realtime_view(settings, entity=entity, source=push_source)
    return [
        entity,
        source,
        push_source,
        view,
        realtime,
        churn_feature_service(settings, view=view),
        nba_feature_service(settings, view=view, realtime_view=realtime),
    ]


__all__ = [
    "REALTIME_FEATURES",
    "REALTIME_PUSH_SOURCE",
    "REALTIME_VIEW",
    "churn_feature_service",
    "customer_entity",
    "customer_events_push_source",
    "customer_features_source",
    "customer_features_view",
    "customer_realtime_view",
    "nba_feature_service",
    "repo_objects",
]
