"""Feast feature services, versioned: ``churn_v1`` (training and serving) and ``nba_v1`` (serving).

``churn_v1`` holds the batch snapshot features, the same for training sets and online reads.
``nba_v1`` adds the real-time view for the next-best-action decision; the models only read the
features they were trained on, so serving with ``nba_v1`` never changes a score.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView

from features.feature_repo.feature_views import customer_features_view, customer_realtime_view
from omniretain.settings import Settings


def churn_feature_service(settings: Settings, view: FeatureView | None = None) -> FeatureService:
    """``churn_v1`` (named by ``settings.features.feature_service``): every customer feature."""
    return FeatureService(
        name=settings.features.feature_service,
        features=[view or customer_features_view(settings)],
        description="Features of the churn and next-best-action models (training and serving).",
    )


def nba_feature_service(
    settings: Settings,
    view: FeatureView | None = None,
    realtime_view: FeatureView | None = None,
) -> FeatureService:
    """``nba_v1`` (``settings.features.serving_feature_service``): churn features + real-time."""
    return FeatureService(
        name=settings.features.serving_feature_service,
        features=[
            view or customer_features_view(settings),
            realtime_view or customer_realtime_view(settings),
        ],
        description="Online features of the next-best-action decision: the churn_v1 features "
        "plus the latest real-time events.",
    )
