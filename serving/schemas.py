"""The HTTP contract of the service: request and response bodies of every endpoint.

Kept apart from ``service.py`` so that clients, tests and the docs can import the shapes without
importing BentoML.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from starlette.types import Message, Scope, Send

from serving.decision import Alternative, RiskBand
from serving.policy import OUTCOMES

CUSTOMER_ID_MAX_LENGTH = 128
ModelT = TypeVar("ModelT", bound=BaseModel)
MAX_CART_ITEMS = 500
Outcome = Literal["sent", "opened", "clicked", "converted", "ignored", "complained"]
assert set(OUTCOMES) == set(Outcome.__args__)  # one list of outcomes: serving.policy's
EventType = Literal["cart_abandoned", "case_opened", "consent_withdrawn", "consent_granted"]
ConsentChannel = Literal["email", "sms", "app", "call_center"]  # the channels that need consent

EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)  # clock skew between the CRM and us, not more
MAX_AMOUNT = 1_000_000_000.0  # currency; far above any basket, far below float overflow


def _plausible_moment(moment: datetime) -> datetime:
    """An event time the stores can hold: 2000 or later, at most a day ahead, UTC if naive."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if aware < EARLIEST_EVENT:
        raise ValueError(f"must be on or after {EARLIEST_EVENT:%Y-%m-%d}")
    if aware > datetime.now(UTC) + FUTURE_TOLERANCE:
        raise ValueError("must not be more than a day in the future")
    return aware


def _not_a_contact_address(value: str) -> str:
    """A resolved customer id, never an email address or phone number (kept out of the logs).

    A bare run of digits stays a valid id (some shops number their customers); a number written
    as a phone number (``+44 ...``, or digits in groups) is refused.
    """
    digits = sum(char.isdigit() for char in value)
    phone_like = set(value) <= PHONE_CHARACTERS and digits >= 8
    if EMAIL.search(value) or (phone_like and (value.startswith("+") or not value.isdigit())):
        raise ValueError(
            "looks like an email address or phone number; send the resolved customer id "
            "(contact addresses are never accepted, so they never reach a log)"
        )
    return value


EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
PHONE_CHARACTERS = frozenset("0123456789+ ().-/")
CustomerId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=CUSTOMER_ID_MAX_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]+$",
    ),
    AfterValidator(_not_a_contact_address),
]
EventTime = Annotated[datetime, AfterValidator(_plausible_moment)]


class CartItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    quantity: int = Field(1, ge=1, le=10_000)
    unit_price: float = Field(ge=0.0, le=1_000_000.0)


class RequestContext(BaseModel):
    """What the caller knows right now; it changes the decision (see ``serving.decision``)."""

    model_config = ConfigDict(extra="forbid")

    current_channel: Literal["email", "sms", "app", "web", "store", "call_center", "social"] | (
        None
    ) = Field(None, description="Where the customer is now; offers there work better.")
    cart: list[CartItem] = Field(
        default_factory=list,
        max_length=MAX_CART_ITEMS,
        description="The basket right now; a non-empty cart counts as a cart at stake.",
    )

    @property
    def cart_value(self) -> float:
        return sum(item.quantity * item.unit_price for item in self.cart)


class RecommendRequest(BaseModel):
    """``{"customer_id": "...", "context": {...}}``; anything else is a client error (4xx)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    customer_id: CustomerId = Field(
        description="The resolved customer id (as in the feature store).",
        examples=["C00042"],
    )
    context: RequestContext | None = Field(None, description="Optional: channel and cart now.")


class BatchRecommendRequest(BaseModel):
    """``{"customer_ids": [...]}``: up to ``serving.max_batch_ids`` ids (413 above)."""

    model_config = ConfigDict(extra="forbid")

    customer_ids: list[CustomerId] = Field(min_length=1, examples=[["C00042", "C00043"]])
    explain: bool = Field(
        False, description="Add churn drivers to the reasons (TreeSHAP, ~2 ms per customer)."
    )


class FeedbackRequest(BaseModel):
    """The outcome of a decision as the CRM saw it; counted by the contact policy."""

    model_config = ConfigDict(extra="forbid")

    decision_id: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
        AfterValidator(_not_a_contact_address),
    ]
    customer_id: CustomerId
    action: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    channel: Literal["email", "sms", "app", "web", "store", "call_center", "social"]
    outcome: Outcome
    occurred_at: EventTime | None = Field(None, description="When it happened; now if omitted.")
    revenue: float | None = Field(None, ge=0.0, le=MAX_AMOUNT)


class EventRequest(BaseModel):
    """A real-time event pushed to the online store; a cart abandonment returns a decision."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    event_type: EventType
    occurred_at: EventTime | None = Field(None, description="When it happened; now if omitted.")
    cart_value: float | None = Field(None, ge=0.0, le=MAX_AMOUNT, description="For cart_abandoned.")
    channel: ConsentChannel | None = Field(
        None, description="For consent_withdrawn / consent_granted: the channel concerned."
    )

    @model_validator(mode="after")
    def _consent_names_its_channel(self) -> EventRequest:
        if self.event_type.startswith("consent_") and self.channel is None:
            raise ValueError(f"channel: required for {self.event_type}")
        if not self.event_type.startswith("consent_") and self.channel is not None:
            raise ValueError(f"channel: only for consent events, not {self.event_type}")
        return self


class NextBestAction(BaseModel):
    action: str = Field(description="An action of the catalogue; no_action when none pays.")
    channel: str = Field(description="Where to deliver it; always a consented channel.")
    expected_value: float = Field(description="Expected net value in currency, 2 decimals.")
    reasons: list[str] = Field(description="Churn drivers in plain words, then why this won.")


class ModelVersions(BaseModel):
    churn: str
    repurchase: str
    value: str | None = Field(None, description="None: customer value is spend_365d.")
    uplift: str | None = Field(None, description="None: the catalogue's base_uplift.")


class Recommendation(BaseModel):
    """What the CRM needs to act on one customer, with the provenance to audit it."""

    decision_id: str
    customer_id: str
    cold_start: bool = Field(
        description="Unknown customer: scored as 'nothing known', store/web offers only."
    )
    control_group: bool
    degraded: bool = Field(
        False,
        description="The online feature store failed: a no-contact fallback, not a scored one.",
    )
    churn_probability: float = Field(ge=0.0, le=1.0)
    repurchase_probability: float = Field(ge=0.0, le=1.0)
    risk_band: RiskBand
    customer_value: float = Field(description="Value at stake (currency) used for the decision.")
    next_best_action: NextBestAction
    propensity: float = Field(description="Probability that the policy made this choice.")
    explored: bool
    alternatives: list[Alternative]
    model_versions: ModelVersions
    feature_service: str


class BatchRecommendation(BaseModel):
    count: int
    cold_start: int
    degraded: int = 0
    results: list[Recommendation]


class FeedbackAck(BaseModel):
    decision_id: str
    stored: bool


class EventAck(BaseModel):
    customer_id: str
    event_type: str
    pushed: bool
    decision: Recommendation | None = None


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
EXPECTED_BODIES: dict[type[BaseModel], str] = {
    RecommendRequest: _EXPECTED_BODY,
    BatchRecommendRequest: 'send a JSON object {"customer_ids": ["<id>", ...]}',
    FeedbackRequest: 'send a JSON object {"decision_id", "customer_id", "action", "channel", '
    '"outcome"}',
    EventRequest: 'send a JSON object {"customer_id", "event_type"}',
}


def parse_body(model: type[ModelT], body: bytes, content_type: str | None) -> ModelT:
    """Validate a request body and say, in words, which field is wrong.

    BentoML's own validation answers 400 with the internal model name, logs a stack trace per bad
    request, and answers 500 to a malformed multipart body; this runs first (see
    ``serving.service``) so that every client mistake gets a 4xx naming the field.

    Raises:
        RequestBodyError: 415 for a body that is not JSON by media type, 400 for text that is not
            JSON, 422 for JSON that breaks the schema (missing, empty, too long, wrong type or
            unknown field).
    """
    expected = EXPECTED_BODIES.get(model, "send a JSON object")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise RequestBodyError(
            415,
            f"unsupported Content-Type {media_type!r}: {expected} as application/json",
            [{"loc": [], "msg": "unsupported media type", "type": "media_type"}],
        )
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as error:
        detail = [
            {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
            for item in error.errors(include_url=False, include_context=False, include_input=False)
        ]
        if any(item["type"] == "json_invalid" for item in detail):
            raise RequestBodyError(400, f"the body is not valid JSON: {expected}", detail) from None
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in detail
        )
        raise RequestBodyError(
            422, f"invalid request body ({problems}); {expected}", detail
        ) from None


_CUSTOMER_ID_ADAPTER: TypeAdapter[str] = TypeAdapter(CustomerId)


def parse_customer_id(raw: str) -> str:
    """A customer id from a URL path, held to the same rules as in a body.

    Raises:
        RequestBodyError: 422 naming ``customer_id``.
    """
    try:
        return _CUSTOMER_ID_ADAPTER.validate_python(raw)
    except ValidationError as error:
        problems = "; ".join(item["msg"] for item in error.errors(include_url=False))
        raise RequestBodyError(
            422,
            f"customer_id: {problems}",
            [{"loc": ["customer_id"], "msg": problems, "type": "value_error"}],
        ) from None


def error_message(status: int, method: str, path: str, body: bytes) -> str:
    """Words for an error answered by the framework itself (no route, wrong method...)."""
    if status == 404:
        return f"no such route: {method} {path}; the API is described at /docs.json"
    if status == 405:
        return f"method {method} is not allowed on {path}; see /docs.json for its method"
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        fields = [
            ".".join(str(part) for part in item.get("loc", []) if part not in ("body", "path"))
            for item in payload["detail"]
            if isinstance(item, dict)
        ]
        return f"invalid request ({', '.join(filter(None, fields)) or 'body'}): {text[:300]}"
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    return f"{method} {path} failed with status {status}: {str(detail)[:300] or 'no detail'}"


def json_errors(scope: Scope, send: Send) -> Send:
    """Wrap an ASGI ``send`` so that every error (4xx/5xx) goes out as ``{"error": "..."}``.

    BentoML's and Starlette's own answers (404 of an unknown route, 405, a mounted app's
    ``{"detail": ...}``) are plain text or lack ``error``; rewritten here, so a client always
    finds a JSON body with a message. An error body that already has ``error`` passes unchanged.
    """
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def send_with_json_errors(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"] = message
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, body = held.pop("start"), b"".join(chunks)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not (isinstance(payload, dict) and isinstance(payload.get("error"), str)):
            status = start["status"]
            method, path = scope.get("method", ""), scope.get("path", "")
            body = json.dumps({"error": error_message(status, method, path, body)}).encode()
        headers = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (b"content-length", b"content-type")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return send_with_json_errors
