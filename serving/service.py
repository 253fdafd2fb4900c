"""The BentoML HTTP service: recommend, batch, profile, feedback, events.

Start it from the project root (the CLI's ``omniretain serve`` does exactly this)::

    OMNIRETAIN_STATE_DIR=/path/to/state bentoml serve serving.service:OmniRetain \
        --host 127.0.0.1 --port 3000

The state directory (Feast store, MLflow registry, contact store) comes from ``load_settings()``,
hence from ``OMNIRETAIN_STATE_DIR`` in the server's environment. ``/healthz``, ``/livez``,
``/readyz`` and ``/metrics`` come with BentoML and stay open; every other route needs an API key
with the right scope when keys are configured (:mod:`serving.auth`). ``docs/api.md`` has a curl
example per endpoint.

Models are held in one immutable :class:`ModelSet`; a daemon thread polls the registry every
``serving.reload_poll_seconds`` and swaps in a new set when a champion alias moves. A request
reads ``self.models`` once, so it finishes with the set it started with. The decision itself is
:func:`serving.decision.decide`; this file is glue: read, score, decide, log, answer.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bentoml
import numpy as np
from bentoml import get_current_service
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.dashboard_route import dashboard_app
from omniretain.settings import load_settings
from serving.auth import AuthError, authorize, redact_logs
from serving.decision import (
    CONSENT_FEATURE_BY_CHANNEL,
    MODEL_UPLIFT_CONTEXT,
    Exploration,
    RowColumns,
    apply_realtime_fields,
    apply_request_context,
    decide,
    decision_table,
    in_control_group,
    risk_band,
    uplift_matrix,
)
from serving.erased import ErasedCustomers
from serving.fallback import (
    HEALTH,
    OnlineStoreBreaker,
    OnlineStoreUnavailableError,
    degraded_decision,
)
from serving.models import (
    ModelSet,
    churn_probability_one,
    load_model_set,
    load_model_set_or_cache,
    value_one,
)
from serving.policy import (
    ContactStore,
    contacts_path,
    evaluate_contact_policy,
    history_horizon,
    import_feed_contacts,
)
from serving.profile import WarehouseUnavailableError, build_profile, read_warehouse_profile
from serving.reasons import ContributionCache, path_attribution
from serving.schemas import (
    BatchRecommendation,
    BatchRecommendRequest,
    ErrorResponse,
    EventAck,
    EventRequest,
    FeedbackAck,
    FeedbackRequest,
    ModelVersions,
    NextBestAction,
    Recommendation,
    RecommendRequest,
    RequestBodyError,
    RequestContext,
    json_errors,
    parse_body,
    parse_customer_id,
)
from serving.server import spread_connections_across_workers

logger = logging.getLogger(__name__)
redact_logs()  # no API key, email address or phone number in any log line of this process
spread_connections_across_workers()  # one listening socket per worker (serving/server.py)

RECOMMEND_ROUTE = "/recommend"
READYZ_ROUTE = "/readyz"
PROBE_ROUTES = frozenset({READYZ_ROUTE, "/healthz", "/livez", "/metrics"})
BODY_MODELS: dict[str, type] = {
    RECOMMEND_ROUTE: RecommendRequest,
    "/recommend/batch": BatchRecommendRequest,
    "/feedback": FeedbackRequest,
    "/events": EventRequest,
}
SERVER_WORKERS = 2  # the cores of the reference machine (see the decorator below)
BATCH_READ_CHUNK = 500  # online reads per call: Feast's cost grows fast with the entity count


def feature_vector(row: Mapping[str, float | None], feature_names: Sequence[str]) -> np.ndarray:
    """One row in the model's column order, as float64; missing or None becomes NaN.

    LightGBM treats NaN as missing, exactly as in training; a pandas frame would cost ~1 ms per
    request for nothing.
    """
    values = [row.get(name) for name in feature_names]
    return np.array(
        [[math.nan if value is None else float(value) for value in values]], dtype=np.float64
    )


def feature_rows(rows: Sequence[Mapping[str, float | None]], names: Sequence[str]) -> np.ndarray:
    """:func:`feature_vector` of many rows at once: (rows x names) float64, NaN for missing."""
    return np.array(
        [
            [math.nan if (v := row.get(name)) is None else float(v) for name in names]
            for row in rows
        ],
        dtype=np.float64,
    ).reshape(len(rows), len(names))


@dataclass(frozen=True)
class Scored:
    """One customer's model outputs, ready for the decision."""

    features: dict[str, float]
    cold_start: bool
    churn_row: np.ndarray  # (1 x churn features): what TreeSHAP explains
    churn_probability: float
    repurchase_probability: float
    customer_value: float | None
    uplift: np.ndarray | None  # (1 x decision columns)


def score_rows(
    models: ModelSet,
    features: Sequence[dict[str, float]],
    cold_start: Sequence[bool],
    actions: Sequence[Any],
) -> list[Scored]:
    """Every champion on all rows in one call each (one row for /recommend, a chunk for batch):
    LightGBM's per-call overhead is paid once per model, not once per customer."""
    matrices: dict[tuple[str, ...], np.ndarray] = {}

    def matrix_of(names: Sequence[str]) -> np.ndarray:
        key = tuple(names)
        if key not in matrices:
            matrices[key] = feature_rows(features, names)
        return matrices[key]

    one = len(features) == 1  # /recommend: LightGBM's single-row fast path (serving.models)
    churn_matrix = matrix_of(models.churn.model.feature_names)
    churn = _probabilities(models.churn.model, churn_matrix, one)
    repurchase_model = models.repurchase.model
    repurchase = _probabilities(repurchase_model, matrix_of(repurchase_model.feature_names), one)
    values = None
    if models.value is not None:
        value_model = models.value.model
        value_matrix = matrix_of(value_model.feature_names)
        if one and hasattr(value_model, "booster"):
            values = np.array([value_one(value_model, value_matrix)])
        else:
            values = value_model.predict(value_matrix)
    uplift = None
    if models.uplift is not None:
        uplift_model = models.uplift.model
        effects = uplift_model.effects(matrix_of(uplift_model.feature_names))
        table = decision_table(actions)
        uplift = uplift_matrix(
            effects, uplift_model.arms, table, churn, repurchase, features=RowColumns(features)
        )
    return [
        Scored(
            features=row,
            cold_start=cold,
            churn_row=churn_matrix[index : index + 1],
            churn_probability=float(churn[index]),
            repurchase_probability=float(repurchase[index]),
            customer_value=None if values is None or cold else float(values[index]),
            uplift=None if uplift is None else uplift[index : index + 1],
        )
        for index, (row, cold) in enumerate(zip(features, cold_start, strict=True))
    ]


def _probabilities(model: Any, matrix: np.ndarray, one: bool) -> np.ndarray:
    """P(positive) per row of a calibrated classifier (one row: the single-row fast path)."""
    if one and hasattr(model, "booster") and hasattr(model, "calibrator"):
        return np.array([churn_probability_one(model, matrix)])
    return model.predict_proba(matrix)[:, 1]


class ApiGate:
    """ASGI middleware: API keys (401/403), then every JSON body validated (4xx naming the field).

    A valid body is replayed to BentoML unchanged. ``/recommend/batch`` over the size limit is a
    413 before any scoring.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        settings = load_settings()
        self.keys = list(settings.serving.api_keys)
        self.max_batch_ids = settings.serving.max_batch_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == READYZ_ROUTE:  # its own JSON status and reason (serving/fallback.py)
            import anyio

            status, body = await anyio.to_thread.run_sync(HEALTH.readiness)
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        send = json_errors(scope, send)
        request = Request(scope, receive)
        if HEALTH.models_error is not None and scope["path"] not in PROBE_ROUTES:
            error = {"error": f"the service is not ready: {HEALTH.models_error}"}
            await JSONResponse(error, status_code=503)(scope, receive, send)
            return
        try:
            authorize(scope["path"], request.headers, self.keys)
        except AuthError as error:
            await JSONResponse({"error": error.message}, status_code=error.status_code)(
                scope, receive, send
            )
            return
        model = BODY_MODELS.get(scope["path"]) if scope["method"] == "POST" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        body = await request.body()
        try:
            parsed = parse_body(model, body, request.headers.get("content-type"))
            if isinstance(parsed, BatchRecommendRequest):
                self._check_batch_size(parsed)
        except RequestBodyError as error:
            await JSONResponse(error.to_json(), status_code=error.status_code)(scope, receive, send)
            return
        if isinstance(parsed, RecommendRequest):
            await recommend_route(parsed, scope, receive, send)
            return

        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay_body, send)

    def _check_batch_size(self, parsed: BatchRecommendRequest) -> None:
        if len(parsed.customer_ids) > self.max_batch_ids:
            raise RequestBodyError(
                413,
                f"customer_ids holds {len(parsed.customer_ids)} ids; at most "
                f"{self.max_batch_ids} per call: split the list",
                [{"loc": ["customer_ids"], "msg": "too many ids", "type": "too_long"}],
            )


SERVER_HEADER = (b"server", b"BentoML Service/omniretain")  # as BentoML's own answers
INTERNAL_ERROR = "An unexpected error has occurred, please check the server log."  # BentoML's


async def recommend_route(
    parsed: RecommendRequest, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /recommend``, answered by :class:`ApiGate` once the key and the body are checked.

    The route is still declared with ``@bentoml.api`` below (its OpenAPI, its example, the
    Python client) and does the same thing through ``OmniRetain.recommend_one``; answering here
    skips what BentoML adds per request on top of the gate and BentoML's outer middlewares
    (Prometheus metrics, timeout and concurrency limit still apply): its request context, the
    router, a second validation of the body, and a chunked response built by a generic
    serialiser. Measured: about a third of a worker's CPU per request (docs/campaigns.md).
    Same JSON as BentoML's answer (``model_dump_json`` of :class:`Recommendation`), sent with a
    ``Content-Length`` in one body message; an erased customer's 410 and the 503 of a service
    without models are unchanged; an unexpected error is logged and answered 500 as BentoML
    would.
    """
    service = get_current_service()
    try:
        answer = service.recommend_one(parsed.customer_id, parsed.context)
    except Exception:
        logger.exception("Exception on %s [POST]", RECOMMEND_ROUTE)
        await JSONResponse({"error": INTERNAL_ERROR}, status_code=500)(scope, receive, send)
        return
    if not isinstance(answer, Recommendation):  # a ready response: the erased customer's 410
        await answer(scope, receive, send)
        return
    body = answer.model_dump_json().encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        SERVER_HEADER,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


app = FastAPI(title="omniretain profile")


# Two worker processes: a request is CPU-bound Python (BentoML's stack, then features, four
# models, the decision), so a second process on the second core is what adds throughput;
# threads would share one GIL. Each worker loads its own models and polls the registry.
# Per request, BentoML's own stack cost more CPU than the decision (py-spy on a worker under
# benchmarks/latency.py); two of its layers are switched off by its configuration, each
# reversible:
# - the access log: one formatted log line per request; every decision is already in the
#   decision log (monitoring/logs.py) with its id, and errors are still logged; on again with
#   ``serving.access_log: true`` (or OMNIRETAIN_SERVING__ACCESS_LOG=true), redacted like all logs;
# - OpenTelemetry spans for /recommend (and /recommend/batch): no exporter is configured, so
#   they were built and dropped. Prometheus /metrics stays on.
@bentoml.service(
    name="omniretain",
    workers=SERVER_WORKERS,
    traffic={"timeout": 60},
    logging={"access": {"enabled": load_settings().serving.access_log}},
    tracing={"excluded_urls": [RECOMMEND_ROUTE]},
)
@bentoml.asgi_app(app, path="/profile")
@bentoml.asgi_app(dashboard_app(), path="/dashboard")  # the KPI page (admin scope)
class OmniRetain:
    """Churn risk and the next best action per customer, from the champion models."""

    def __init__(self) -> None:
        from features.store import OnlineFeatureReader
        from monitoring.logs import DecisionLogger, FeedbackLogger

        HEALTH.claim(self)
        self.settings = load_settings()
        serving = self.settings.serving
        self.models: ModelSet | None = None
        self._load_models()
        self.features = OnlineFeatureReader(
            self.settings, timeout_seconds=serving.online_read_timeout_seconds
        )
        self.store_breaker = OnlineStoreBreaker(serving.online_retry_seconds)
        HEALTH.breaker = self.store_breaker
        HEALTH.probe = lambda: self.features.get(["__readyz_probe__"])
        self.contributions = ContributionCache(method=serving.reasons)
        self.contacts = ContactStore(contacts_path(self.settings))
        self.erased = ErasedCustomers(self.settings.state_dir)
        self.decision_log = DecisionLogger(self.settings)
        self.feedback_log = FeedbackLogger(self.settings)
        self._pusher: Any = None
        self._pusher_error: str | None = None
        self._stop = threading.Event()
        self._import_feed_contacts()
        threading.Thread(target=self._poll_registry, name="champion-poll", daemon=True).start()
        # Everything loaded so far (BentoML, Feast, MLflow, pandas, the models: about 400,000
        # objects) lives as long as the worker; out of the collector's reach, a full collection
        # no longer walks them (measured: 0.9 s under load, a pause every request in flight
        # waits for). Models of a later hot reload stay collectable.
        gc.freeze()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()

    # ---- models: registry, else the local cache; the poll retries ------------------------
    def _load_models(self) -> None:
        """Load the champions into ``self.models``, or say in ``HEALTH`` why the service waits."""
        from serving.model_cache import NoCachedModelsError
        from training.registry import ModelNotFoundError

        try:
            models, note = load_model_set_or_cache(self.settings)
        except (NoCachedModelsError, ModelNotFoundError) as error:
            if HEALTH.owner is self:
                HEALTH.models_error = str(error)
            logger.error("not ready: %s", error)
            return
        self._prepare_reasons(models)
        self.models = models  # one atomic swap
        if HEALTH.owner is self:
            HEALTH.models_error, HEALTH.models_note = None, note
            HEALTH.versions = models.versions

    def _prepare_reasons(self, models: ModelSet) -> None:
        """Build the churn model's path-attribution tables before the models serve (about 0.4 s
        of CPU for 300 trees), so neither the first request nor the first after a hot reload
        pays for them. A failure is logged: the first request then builds them (or says why)."""
        model = models.churn.model
        if self.settings.serving.reasons != "path" or not hasattr(model, "booster"):
            return
        try:
            path_attribution(model)
        except Exception:
            logger.exception("preparing the reason codes of churn model %s", models.churn.version)

    def _read_features(self, customer_ids: list[str]) -> list[dict[str, float] | None] | None:
        """Online rows, or ``None`` when the store failed (now or within the retry interval)."""
        try:
            return self.store_breaker.call(lambda: self.features.get(customer_ids))
        except OnlineStoreUnavailableError:
            return None

    def _degraded(
        self, customer_id: str, models: ModelSet, context: RequestContext | None
    ) -> Recommendation:
        """The flagged no-contact answer of :mod:`serving.fallback` (scores: nothing known)."""
        recommendation = self._recommend(
            customer_id, None, context, models, explain=False, log=False
        )
        decision = degraded_decision(
            self.store_breaker.error or "unavailable", self.settings.serving.online_retry_seconds
        )
        return recommendation.model_copy(
            update={
                "degraded": True,
                "cold_start": False,
                "next_best_action": NextBestAction(**decision),
                "propensity": 1.0,
                "explored": False,
                "alternatives": [],
            }
        )

    # ---- background: hot reload and contact history from the feeds ----------------------
    def _import_feed_contacts(self) -> None:
        since = datetime.now(UTC) - history_horizon(
            self.settings.contact_policy, self.settings.actions
        )
        try:
            import_feed_contacts(self.settings, self.contacts, since)
        except Exception:  # the feeds are a bonus for the policy, never a reason not to serve
            logger.exception("importing contact history from the feeds failed")

    def _poll_registry(self) -> None:
        from training.registry import champion_versions

        while not self._stop.wait(self.settings.serving.reload_poll_seconds):
            if HEALTH.owner is not self:
                return  # a newer service instance of this process took over (tests)
            if self.models is None or HEALTH.models_note is not None:
                self._load_models()  # not ready, or from the cache: try the registry again
                continue
            try:
                current = self.models.versions
                served = {k: v for k, v in current.items() if v is not None}
                if champion_versions(self.settings) != served:
                    models = load_model_set(self.settings)
                    self._prepare_reasons(models)
                    self.models = models  # one atomic swap
                    HEALTH.versions = self.models.versions
                    logger.info("champions reloaded: %s -> %s", current, self.models.versions)
                self._import_feed_contacts()
            except Exception:  # keep serving the current set; try again next poll
                logger.exception("champion reload failed; still serving %s", self.models.versions)

    # ---- the decision for one customer ---------------------------------------------------
    def _features(
        self, row: dict[str, float] | None, context: RequestContext | None, now: datetime
    ) -> dict[str, float]:
        """The stored features with the pushed real-time fields and the request's cart."""
        features = apply_realtime_fields(row or {}, now.timestamp())
        return apply_request_context(features, context.cart_value if context else None)

    def _recommend(
        self,
        customer_id: str,
        row: dict[str, float] | None,
        context: RequestContext | None,
        models: ModelSet,
        explain: bool = True,
        source: str = "single",
        log: bool = True,
        scored: Scored | None = None,
    ) -> Recommendation:
        now = datetime.now(UTC)
        if scored is None:
            features = self._features(row, context, now)
            scored = score_rows(models, [features], [row is None], self.settings.actions)[0]
        features, cold_start = scored.features, scored.cold_start
        churn_probability = scored.churn_probability
        repurchase_probability = scored.repurchase_probability
        customer_value, uplift = scored.customer_value, scored.uplift
        current_channel = context.current_channel if context else None
        contributions: dict[str, float] = {}
        if explain and not cold_start:  # reason codes: computed only where they are shown
            contributions = self.contributions.get(models.churn, scored.churn_row)

        policy = self.settings.contact_policy
        history = self.contacts.history(
            customer_id, now - history_horizon(policy, self.settings.actions)
        )
        verdict = evaluate_contact_policy(
            history, now, policy, self.settings.actions, current_channel
        )
        serving = self.settings.serving
        control = in_control_group(customer_id, serving.control_share, serving.control_salt)
        exploration = Exploration(serving.exploration_share, random.random(), random.random())
        decision = decide(
            customer_id,
            features,
            churn_probability,
            repurchase_probability,
            contributions,
            self.settings.actions,
            MODEL_UPLIFT_CONTEXT if uplift is not None else None,
            customer_value=customer_value,
            uplift=uplift,
            blocked_channels={
                **verdict.blocked_channels,
                **dict.fromkeys(self.contacts.withdrawn_channels(customer_id), "consent withdrawn"),
            },
            blocked_actions=verdict.blocked_actions,
            current_channel=current_channel,
            control_group=control,
            exploration=exploration,
        )
        if cold_start:
            decision.reasons.insert(
                0,
                "Cold start: the customer is not in the feature store yet; scored as a customer "
                "about whom nothing is known, offered only where no consent is needed.",
            )
        value_used = (
            customer_value
            if customer_value is not None
            else max(0.0, float(features.get("spend_365d", 0.0) or 0.0))
        )
        if math.isnan(value_used):
            value_used = 0.0
        versions = models.versions
        recommendation = Recommendation(
            decision_id=f"{random.getrandbits(128):032x}",  # unique, not a secret: no urandom
            customer_id=customer_id,
            cold_start=cold_start,
            control_group=decision.control_group,
            churn_probability=round(churn_probability, 4),
            repurchase_probability=round(repurchase_probability, 4),
            risk_band=risk_band(churn_probability),
            customer_value=round(value_used, 2),
            next_best_action=NextBestAction(
                action=decision.action,
                channel=decision.channel,
                expected_value=decision.expected_value,
                reasons=decision.reasons,
            ),
            propensity=decision.propensity,
            explored=decision.explored,
            alternatives=decision.alternatives,
            model_versions=ModelVersions(**versions),
            feature_service=self.settings.features.feature_service,
        )
        if log:
            self._log(recommendation, features, source)
        return recommendation

    def _log(
        self, recommendation: Recommendation, features: Mapping[str, float], source: str
    ) -> None:
        """Hand the decision to the monitoring logger: a queue put, never a disk write here."""
        from monitoring.logs import DecisionRecord

        self.decision_log.log(
            DecisionRecord(
                decision_id=recommendation.decision_id,
                customer_id=recommendation.customer_id,
                churn_probability=recommendation.churn_probability,
                repurchase_probability=recommendation.repurchase_probability,
                action=recommendation.next_best_action.action,
                channel=recommendation.next_best_action.channel,
                churn_model_version=recommendation.model_versions.churn,
                repurchase_model_version=recommendation.model_versions.repurchase,
                features=features,
                expected_value=recommendation.next_best_action.expected_value,
                propensity=recommendation.propensity,
                is_control=recommendation.control_group,
                source=source,  # type: ignore[arg-type]
                feature_service=recommendation.feature_service,
            )
        )

    # ---- the API ---------------------------------------------------------------------------
    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(
        self, customer_id: str, context: RequestContext | None = None
    ) -> Recommendation:
        """Score one customer with the champions and choose the next best action.

        Over HTTP, :class:`ApiGate` answers this route itself (:func:`recommend_route`, the same
        ``recommend_one``) once the key and body are checked; this declaration gives the route
        its OpenAPI schema and example, and serves BentoML's in-process calls.

        Both run on the worker's event loop instead of a thread (a queue, a wake-up and two GIL
        hand-overs: about a seventh of a worker's CPU per request, measured). It never awaits:
        the work is CPU-bound Python and two local reads bounded by
        ``serving.online_read_timeout_seconds``, and BentoML ran one request at a time per
        worker anyway (``threads`` 1). The other routes (batch: up to 10,000 ids) stay in
        BentoML's thread.
        """
        return self.recommend_one(customer_id, context)

    def recommend_one(
        self, customer_id: str, context: RequestContext | None = None
    ) -> Recommendation:
        """``POST /recommend`` without HTTP: the same reads, models, decision and log."""
        if (refusal := self.erased.refusal([customer_id])) is not None:
            return refusal  # type: ignore[no-any-return]
        models = self.models
        assert models is not None  # ApiGate answers 503 until the models are loaded
        rows = self._read_features([customer_id])
        if rows is None:
            return self._degraded(customer_id, models, context)
        return self._recommend(customer_id, rows[0], context, models)

    @bentoml.api(route="/recommend/batch", input_spec=BatchRecommendRequest)
    def recommend_batch(
        self, customer_ids: list[str], explain: bool = False
    ) -> BatchRecommendation:
        """Up to ``serving.max_batch_ids`` customers; unknown ids get the cold-start decision."""
        if (refusal := self.erased.refusal(customer_ids, "customer_ids")) is not None:
            return refusal  # type: ignore[no-any-return]
        models = self.models
        assert models is not None  # ApiGate answers 503 until the models are loaded
        results: list[Recommendation] = []
        for start in range(0, len(customer_ids), BATCH_READ_CHUNK):
            chunk = customer_ids[start : start + BATCH_READ_CHUNK]
            rows = self._read_features(chunk)
            if rows is None:
                results.extend(self._degraded(customer_id, models, None) for customer_id in chunk)
                continue
            now = datetime.now(UTC)
            features = [self._features(row, None, now) for row in rows]
            scored = score_rows(
                models, features, [row is None for row in rows], self.settings.actions
            )
            for customer_id, row, one in zip(chunk, rows, scored, strict=True):
                results.append(
                    self._recommend(
                        customer_id, row, None, models, explain=explain, source="batch", scored=one
                    )
                )
        return BatchRecommendation(
            count=len(results),
            cold_start=sum(r.cold_start for r in results),
            degraded=sum(r.degraded for r in results),
            results=results,
        )

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(
        self,
        decision_id: str,
        customer_id: str,
        action: str,
        channel: str,
        outcome: str,
        occurred_at: datetime | None = None,
        revenue: float | None = None,
    ) -> FeedbackAck:
        """Store an outcome: the contact policy counts it from now on; monitoring logs it."""
        from monitoring.logs import FeedbackRecord

        if (refusal := self.erased.refusal([customer_id])) is not None:
            return refusal  # type: ignore[no-any-return]
        known_actions = {a.name for a in self.settings.actions}
        if action not in known_actions:
            error = {"error": f"action: unknown action {action!r}; known: {sorted(known_actions)}"}
            return JSONResponse(error, status_code=422)  # type: ignore[return-value]
        moment = occurred_at or datetime.now(UTC)
        self.contacts.record_feedback(
            decision_id, customer_id, action, channel, outcome, moment, revenue
        )
        self.feedback_log.log(
            FeedbackRecord(
                decision_id=decision_id, outcome=outcome, customer_id=customer_id, revenue=revenue
            )
        )
        return FeedbackAck(decision_id=decision_id, stored=True)

    @bentoml.api(route="/events", input_spec=EventRequest)
    def events(
        self,
        customer_id: str,
        event_type: str,
        occurred_at: datetime | None = None,
        cart_value: float | None = None,
        channel: str | None = None,
    ) -> EventAck:
        """Push a real-time event online; a cart abandonment answers with the triggered decision.

        A consent change is stored in the contact store and binds from the next decision on.
        """
        import pandas as pd

        if (refusal := self.erased.refusal([customer_id])) is not None:
            return refusal  # type: ignore[no-any-return]
        if event_type in ("consent_withdrawn", "consent_granted"):
            granted = event_type == "consent_granted"
            self.contacts.record_consent(
                customer_id, str(channel), granted, occurred_at or datetime.now(UTC)
            )
            return EventAck(customer_id=customer_id, event_type=event_type, pushed=False)
        pusher = self._realtime_pusher()
        if pusher is None:
            error = {"error": f"events are not available: {self._pusher_error}"}
            return JSONResponse(error, status_code=503)  # type: ignore[return-value]
        moment = occurred_at or datetime.now(UTC)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        fields: dict[str, Any] = {"customer_id": [customer_id], "event_timestamp": [moment]}
        if event_type == "cart_abandoned":
            fields["last_cart_abandoned_at"] = [int(moment.timestamp())]
            fields["cart_value"] = [float(cart_value) if cart_value is not None else math.nan]
        else:
            fields["last_case_opened_at"] = [int(moment.timestamp())]
        try:
            self.store_breaker.call(lambda: pusher.push(pd.DataFrame(fields)))
        except OnlineStoreUnavailableError as error:
            error_body = {"error": f"the online store is unavailable, event not stored: {error}"}
            return JSONResponse(error_body, status_code=503)  # type: ignore[return-value]
        decision = None
        if event_type == "cart_abandoned":
            models = self.models
            assert models is not None
            rows = self._read_features([customer_id])
            decision = (
                self._degraded(customer_id, models, None)
                if rows is None
                else self._recommend(customer_id, rows[0], None, models, source="single")
            )
        return EventAck(
            customer_id=customer_id, event_type=event_type, pushed=True, decision=decision
        )

    def _realtime_pusher(self) -> Any:
        """The Feast push path, opened on first use (its import costs seconds)."""
        if self._pusher is None and self._pusher_error is None:
            try:
                from features.store import RealtimePusher

                self._pusher = RealtimePusher(self.settings)
            except Exception as error:  # missing view or older feature repo: say it, once
                self._pusher_error = str(error)
        return self._pusher

    @app.get("/{customer_id}", response_model=None)
    def profile(self, customer_id: str) -> Any:
        """The unified profile of a customer (``GET /profile/{customer_id}``)."""
        try:
            customer_id = parse_customer_id(customer_id)
        except RequestBodyError as error:
            return JSONResponse(error.to_json(), status_code=error.status_code)
        if (refusal := self.erased.refusal([customer_id])) is not None:
            return refusal
        models = self.models
        assert models is not None
        rows = self._read_features([customer_id])
        row = rows[0] if rows is not None else None  # store down: the warehouse profile only
        warehouse, warehouse_error = None, None
        try:
            warehouse = read_warehouse_profile(self.settings.warehouse_path, customer_id)
        except WarehouseUnavailableError as error:
            warehouse_error = str(error)
        scores, band = None, None
        feature_consents: dict[str, bool] = {}
        if row is not None:
            recommendation = self._recommend(
                customer_id, row, None, models, explain=False, log=False
            )
            scores = {
                "churn_probability": recommendation.churn_probability,
                "repurchase_probability": recommendation.repurchase_probability,
                "customer_value": recommendation.customer_value,
            }
            band = recommendation.risk_band
            feature_consents = {
                channel: row.get(feature) == 1.0
                for channel, feature in CONSENT_FEATURE_BY_CHANNEL.items()
                if feature in row and not math.isnan(row[feature])
            }
        profile = build_profile(
            customer_id,
            warehouse,
            warehouse_error,
            feature_consents,
            self.contacts.recent(customer_id),
            scores,
            band,
            models.versions,
        )
        for channel in self.contacts.withdrawn_channels(customer_id):
            profile.consents[channel] = False  # a withdrawal binds before the next snapshot
        if not profile.known:
            error = ErrorResponse(
                error=f"unknown customer_id {customer_id!r}", customer_id=customer_id
            )
            return JSONResponse(error.model_dump(), status_code=404)
        return JSONResponse(profile.model_dump(mode="json"))


OmniRetain.add_asgi_middleware(ApiGate)
