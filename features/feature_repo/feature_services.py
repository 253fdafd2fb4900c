"""Feast feature services: one versioned service for both training sets and online reads."""

from __future__ import annotations

from feast import FeatureService, FeatureView

from features.feature_repo.feature_views import customer_features_view
from omniretain.settings import Settings


def churn_feature_service(settings: Settings, view: FeatureView | None = None) -> FeatureService:
    """``churn_v1`` (named by ``settings.features.feature_service``): every customer feature."""
    return FeatureService(
        name=settings.features.feature_service,
        features=[view or customer_features_view(settings)],
        description="Features of the churn and next-best-action models (training and serving).",
    )
