"""``GET /dashboard``: the KPI dashboard served by the BentoML service (mounted in
``serving/service.py``; behind the ``admin`` scope when API keys are configured, as every path
:mod:`serving.auth` does not list).

The page is the file ``omniretain monitor dashboard`` writes (:func:`monitoring.dashboard.
dashboard_path`). It is sent as is; it is generated when missing, or when ``?refresh=true``
asks for fresh figures. Generating takes seconds (the warehouse, the champion scoring every
snapshot, Plotly), so it runs in a worker thread, one at a time, never per request by default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from omniretain.settings import Settings, load_settings

TRUE_VALUES = frozenset({"1", "true", "yes"})
FALSE_VALUES = frozenset({"", "0", "false", "no"})


def parse_refresh(value: str | None) -> bool:
    """``?refresh=`` as a boolean; anything else is the caller's error (a 422 naming it)."""
    text = (value or "").strip().lower()
    if text in TRUE_VALUES:
        return True
    if text in FALSE_VALUES:
        return False
    raise ValueError(f"refresh: expected true or false, got {value!r}")


def dashboard_app(settings_factory: Callable[[], Settings] = load_settings) -> Starlette:
    """A small ASGI app answering ``GET /`` of its mount with the newest dashboard page."""
    lock = threading.Lock()
    state: dict[str, Settings] = {}

    def settings() -> Settings:
        if "settings" not in state:
            state["settings"] = settings_factory()
        return state["settings"]

    def generate(refresh: bool) -> None:
        from monitoring.dashboard import dashboard_path, write_dashboard

        with lock:  # concurrent first requests: one writes, the others then find the file
            if refresh or not dashboard_path(settings()).exists():
                write_dashboard(settings())

    async def page(request: Request) -> Response:
        from monitoring.dashboard import dashboard_path

        try:
            refresh = parse_refresh(request.query_params.get("refresh"))
        except ValueError as error:
            return JSONResponse({"error": str(error), "field": "refresh"}, status_code=422)
        path = dashboard_path(settings())
        if refresh or not path.exists():
            try:
                await run_in_threadpool(generate, refresh)
            except FileNotFoundError as error:  # no warehouse yet: nothing to show
                return JSONResponse(
                    {"error": f"no dashboard yet: {error}", "path": str(path)}, status_code=404
                )
        return FileResponse(path, media_type="text/html; charset=utf-8")

    return Starlette(routes=[Route("/", page, methods=["GET"])])
