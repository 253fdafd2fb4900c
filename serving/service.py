"""The BentoML HTTP service: ``POST /recommend`` with ``{"customer_id": "..."}``.

Start it from the project root (the CLI's ``omniretain serve`` does exactly this)::

    OMNIRETAIN_STATE_DIR=/path/to/state bentoml serve serving.service:OmniRetain \
        --host 127.0.0.1 --port 3000

The state directory (Feast store and MLflow registry) comes from ``load_settings()``, hence from
``OMNIRETAIN_STATE_DIR`` in the server's environment. The project root must be importable (it is
the working directory, or on ``PYTHONPATH``). ``/healthz``, ``/livez``, ``/readyz`` and
``/metrics`` come with BentoML; ``/readyz`` answers once both champions and the feature reader
are loaded.

This file stays small: scoring glue only; the decision lives in :mod:`serving.decision`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniretain.settings import load_settings
from serving.decision import decide, risk_band
from serving.schemas import (
    ErrorResponse,
    ModelVersions,
    NextBestAction,
    Recommendation,
    RecommendRequest,
    RequestBodyError,
    parse_recommend_body,
)

RECOMMEND_ROUTE = "/recommend"


def feature_vector(row: Mapping[str, float | None], feature_names: Sequence[str]) -> np.ndarray:
    """One row in the model's column order, as float64; missing or None becomes NaN.

    LightGBM treats NaN as missing, exactly as in training; a pandas frame would cost ~1 ms per
    request for nothing.
    """
    values = [row.get(name) for name in feature_names]
    return np.array(
        [[math.nan if value is None else float(value) for value in values]], dtype=np.float64
    )


class RecommendBodyValidation:
    """ASGI middleware: answer every malformed ``/recommend`` body with our own clear 4xx.

    It validates the body with :func:`serving.schemas.parse_recommend_body` and replays it to
    BentoML unchanged when it is valid (BentoML then validates the same model again: a few
    microseconds).
    """

    def __init__(self, app: ASGIApp, route: str = RECOMMEND_ROUTE) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.route:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        try:
            parse_recommend_body(body, request.headers.get("content-type"))
        except RequestBodyError as error:
            await JSONResponse(error.to_json(), status_code=error.status_code)(scope, receive, send)
            return

        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay_body, send)


@bentoml.service(name="omniretain", workers=1, traffic={"timeout": 30})
class OmniRetain:
    """Churn risk and the next best action for one customer, from the champion models."""

    def __init__(self) -> None:
        from features.store import OnlineFeatureReader
        from training.registry import load_champion

        self.settings = load_settings()
        self.churn = load_champion(self.settings, "churn")
        self.repurchase = load_champion(self.settings, "repurchase")
        self.features = OnlineFeatureReader(self.settings)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    def recommend(self, customer_id: str) -> Recommendation:
        """Score the customer with both champions and choose the next best action."""
        row = self.features.get([customer_id])[0]
        if row is None:
            error = ErrorResponse(
                error=f"unknown customer_id {customer_id!r}: no features in the online store",
                customer_id=customer_id,
            )
            return JSONResponse(error.model_dump(), status_code=404)  # type: ignore[return-value]

        churn_model, repurchase_model = self.churn.model, self.repurchase.model
        churn_row = feature_vector(row, churn_model.feature_names)
        churn_probability = float(churn_model.predict_proba(churn_row)[0, 1])
        repurchase_row = feature_vector(row, repurchase_model.feature_names)
        repurchase_probability = float(repurchase_model.predict_proba(repurchase_row)[0, 1])
        contributions = churn_model.contributions(churn_row)[0, :-1]  # last column: the bias
        churn_contributions = dict(
            zip(churn_model.feature_names, contributions.tolist(), strict=True)
        )

        decision = decide(
            customer_id,
            row,
            churn_probability,
            repurchase_probability,
            churn_contributions,
            self.settings.actions,
        )
        return Recommendation(
            customer_id=customer_id,
            churn_probability=round(churn_probability, 4),
            repurchase_probability=round(repurchase_probability, 4),
            risk_band=risk_band(churn_probability),
            next_best_action=NextBestAction(
                action=decision.action,
                channel=decision.channel,
                expected_value=decision.expected_value,
                reasons=decision.reasons,
            ),
            alternatives=decision.alternatives,
            model_versions=ModelVersions(
                churn=str(self.churn.version), repurchase=str(self.repurchase.version)
            ),
            feature_service=self.settings.features.feature_service,
        )


OmniRetain.add_asgi_middleware(RecommendBodyValidation)
