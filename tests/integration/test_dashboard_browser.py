"""The KPI dashboard in a real headless Chromium: the page loads without script errors and every
chart is drawn with data. A screenshot is kept under the state directory (in CI: the project's
state dir, ``<state_dir>/artifacts/dashboard.png``).

The state is a small hand-made warehouse (purchases, contacts, surveys, carts, a randomised
campaign) and a drift summary; no model is registered, so the page must say so and still show
everything else. Chromium missing: the test fails under CI (``CI`` set) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from monitoring.dashboard import write_dashboard
from omniretain.settings import Settings, load_settings

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=15000",
    "--window-size=1400,2200",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def write_small_warehouse(settings: Settings, customers: int = 120, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01")
    channels = np.array(["web", "store", "app"])
    rows = []
    for customer in range(customers):
        breadth = 1 + customer % 3
        for _ in range(rng.integers(1, 12)):
            rows.append(
                (
                    f"C{customer:04d}",
                    start + pd.Timedelta(days=float(rng.uniform(0, 360))),
                    str(channels[rng.integers(0, breadth)]),
                    float(rng.gamma(2, 30)),
                    False,
                )
            )
    purchases = pd.DataFrame(
        rows, columns=["customer_id", "occurred_at", "channel", "amount", "is_return"]
    )
    cases = pd.DataFrame(
        {
            "case_id": [f"K{i // 2}" for i in range(60)],
            "occurred_at": [start + pd.Timedelta(days=i * 5 + i % 2) for i in range(60)],
            "resolved": [i % 2 == 1 for i in range(60)],
        }
    )
    surveys = pd.DataFrame(
        {
            "occurred_at": [start + pd.Timedelta(days=i * 3) for i in range(110)],
            "survey_type": ["nps" if i % 2 else "ces" for i in range(110)],
            "score": [float(i % 11) if i % 2 else float(1 + i % 7) for i in range(110)],
        }
    )
    web = pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(0, customers, 3)],
            "occurred_at": [start + pd.Timedelta(days=i) for i in range(0, customers, 3)],
            "event_type": "cart_abandoned",
        }
    )
    campaigns = pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(customers)],
            "occurred_at": start + pd.Timedelta(days=100),
            "campaign_id": "K2025-04",
            "action": ["no_action" if i % 4 == 0 else "winback_offer" for i in range(customers)],
            "channel": ["none" if i % 4 == 0 else "email" for i in range(customers)],
            "randomised": True,
            "propensity": [0.25 if i % 4 == 0 else 0.75 for i in range(customers)],
            "is_control": [i % 4 == 0 for i in range(customers)],
        }
    )
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        for name, frame in {
            "purchases": purchases,
            "contacts": cases,
            "surveys": surveys,
            "web_events": web,
            "campaigns": campaigns,
        }.items():
            con.register("frame", frame)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
            con.unregister("frame")


def write_drift_summary(settings: Settings) -> None:
    latest = settings.monitoring_dir / "drift" / "latest"
    latest.mkdir(parents=True)
    columns = [
        {"column": "spend_90d", "drifted": True},
        {"column": "purchases_90d", "drifted": False},
    ]
    summary = {"drift_detected": False, "columns": columns, "share_drifted": 0.5, "threshold": 0.6}
    (latest / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, int, str]:
    browser = chromium()
    settings = load_settings(state_dir=tmp_path_factory.mktemp("dashboard_state"))
    settings.ensure_dirs()
    write_small_warehouse(settings)
    write_drift_summary(settings)
    report = write_dashboard(settings)
    return settings, report.path, report.charts, browser


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_page_loads_without_errors_and_draws_every_chart(page, tmp_path: Path) -> None:
    settings, path, charts, browser = page
    result = run_chromium(browser, tmp_path / "profile", "--dump-dom", path.as_uri())
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body is not None, result.stderr[-2000:]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert charts == 4  # retention, multichannel share, NPS/CES, campaigns (no model: no risk)
    assert attributes.get("data-charts") == str(charts)
    assert attributes.get("data-charts-drawn") == str(charts)  # each has data and drawn traces
    assert json.loads(attributes["data-errors"].replace("&quot;", '"')) == []
    assert "Uncaught" not in result.stderr
    assert "churn risk not shown" in result.stdout  # no model: said, not hidden
    assert "no drift" in result.stdout


def test_screenshot_is_kept_under_the_state_dir(page, tmp_path: Path) -> None:
    settings, path, _, browser = page
    target_state = load_settings().state_dir if os.environ.get("CI") else settings.state_dir
    shot = target_state / "artifacts" / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(browser, tmp_path / "profile", f"--screenshot={shot}", path.as_uri())
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a blank page is a few kB


# ---- GET /dashboard over real HTTP (the app the BentoML service mounts) -----------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """The dashboard route under uvicorn on a free port; the page is not written beforehand."""
    import socket
    import threading
    import time

    import uvicorn

    from monitoring.dashboard_route import dashboard_app

    settings = load_settings(state_dir=tmp_path_factory.mktemp("dashboard_route"))
    settings.ensure_dirs()
    write_small_warehouse(settings)
    write_drift_summary(settings)
    empty = load_settings(state_dir=tmp_path_factory.mktemp("dashboard_empty"))
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(
        routes=[
            Mount("/dashboard", dashboard_app(lambda: settings)),
            Mount("/empty", dashboard_app(lambda: empty)),
        ]
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "uvicorn did not start"
    yield settings, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_dashboard_route_generates_then_serves_the_page_over_http(served) -> None:
    import httpx

    from monitoring.dashboard import dashboard_path

    settings, base_url = served
    assert not dashboard_path(settings).exists()
    first = httpx.get(f"{base_url}/dashboard/", timeout=300)
    assert first.status_code == 200, first.text[:500]
    assert first.headers["content-type"].startswith("text/html")
    assert "omniretain: retention KPIs" in first.text and 'class="chart"' in first.text
    assert dashboard_path(settings).read_text(encoding="utf-8") == first.text
    written = dashboard_path(settings).stat().st_mtime_ns
    again = httpx.get(f"{base_url}/dashboard", timeout=300, follow_redirects=True)
    assert again.status_code == 200 and dashboard_path(settings).stat().st_mtime_ns == written
    fresh = httpx.get(f"{base_url}/dashboard/?refresh=true", timeout=300)
    assert fresh.status_code == 200 and dashboard_path(settings).stat().st_mtime_ns > written


def test_dashboard_route_names_a_bad_refresh_and_a_missing_state(served) -> None:
    import httpx

    _, base_url = served
    bad = httpx.get(f"{base_url}/dashboard/?refresh=sometimes", timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "refresh"
    missing = httpx.get(f"{base_url}/empty/", timeout=60)
    assert missing.status_code == 404 and "omniretain ingest" in missing.json()["error"]


def test_dashboard_needs_the_admin_scope_when_keys_are_configured() -> None:
    from serving.auth import ADMIN_SCOPE, required_scope

    assert required_scope("/dashboard") == required_scope("/dashboard/") == ADMIN_SCOPE
