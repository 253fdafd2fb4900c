"""The HTTP contract of the service: request and response bodies of ``POST /recommend``.

Kept apart from ``service.py`` so that clients, tests and the docs can import the shapes without
importing BentoML.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from serving.decision import Alternative, RiskBand

CUSTOMER_ID_MAX_LENGTH = 128

CustomerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=CUSTOMER_ID_MAX_LENGTH),
]


class RecommendRequest(BaseModel):
    """A flat body: ``{"customer_id": "..."}``; anything else is a client error (4xx)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    customer_id: CustomerId = Field(
        description="The resolved customer id (as in the feature store).",
        examples=["C00042"],
    )


class NextBestAction(BaseModel):
    action: str = Field(description="An action of the catalogue; no_action when none pays.")
    channel: str = Field(description="Where to deliver it; always a consented channel.")
    expected_value: float = Field(description="Expected net value in currency, 2 decimals.")
    reasons: list[str] = Field(description="Churn drivers in plain words, then why this won.")


class ModelVersions(BaseModel):
    churn: str
    repurchase: str


class Recommendation(BaseModel):
    """What the CRM needs to act on one customer, with the provenance to audit it."""

    customer_id: str
    churn_probability: float = Field(ge=0.0, le=1.0)
    repurchase_probability: float = Field(ge=0.0, le=1.0)
    risk_band: RiskBand
    next_best_action: NextBestAction
    alternatives: list[Alternative]
    model_versions: ModelVersions
    feature_service: str


class ErrorResponse(BaseModel):
    """The body of a 4xx that the service itself returns (e.g. an unknown customer)."""

    error: str
    customer_id: str | None = None


class RequestBodyError(ValueError):
    """A request body the service cannot use; carries the HTTP answer to give the client."""

    def __init__(self, status_code: int, message: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "detail": self.detail}


JSON_MEDIA_TYPES = frozenset({"", "application/json"})
_EXPECTED_BODY = 'send a JSON object {"customer_id": "<id>"}'


def parse_recommend_body(body: bytes, content_type: str | None) -> RecommendRequest:
    """Validate a ``POST /recommend`` body and say, in words, what is wrong with it.

    BentoML's own validation answers 400 with the internal model name, logs a stack trace per bad
    request, and answers 500 to a malformed multipart body; this runs first (see
    ``serving.service``) so that every client mistake gets a 4xx naming the field.

    Raises:
        RequestBodyError: 415 for a body that is not JSON by media type, 400 for text that is not
            JSON, 422 for JSON that breaks the schema (missing, empty, too long, wrong type or
            unknown field).
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise RequestBodyError(
            415,
            f"unsupported Content-Type {media_type!r}: {_EXPECTED_BODY} as application/json",
            [{"loc": [], "msg": "unsupported media type", "type": "media_type"}],
        )
    try:
        return RecommendRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        detail = [
            {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
            for item in error.errors(include_url=False, include_context=False, include_input=False)
        ]
        if any(item["type"] == "json_invalid" for item in detail):
            raise RequestBodyError(
                400, f"the body is not valid JSON: {_EXPECTED_BODY}", detail
            ) from None
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in detail
        )
        raise RequestBodyError(
            422, f"invalid request body ({problems}); {_EXPECTED_BODY}", detail
        ) from None
