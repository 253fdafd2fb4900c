"""Faults of the service's dependencies, against real ones: Redis stopped, hung and restarted; the
MLflow registry unreachable at start-up, with and without cached champions.

The service runs in-process (``OmniRetain.to_asgi()`` + Starlette's ``TestClient``, BentoML's own
routing and middlewares) on a copy of the session's small trained state whose online store is a
``redis-server`` this module owns: it saves, stops, restarts (same port, same data file) and
freezes it (SIGSTOP) to play a store that is down or slow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.local_redis import free_port
from omniretain.settings import Settings, load_settings

READ_TIMEOUT_SECONDS = 0.2
RETRY_SECONDS = 0.5
# A degraded answer must come within the read timeout plus the service's own work; the slack is
# for a loaded 2-core CI machine, and it is still far below redis-py's default retries (seconds).
DEGRADED_BUDGET_SECONDS = 1.5


class RedisProcess:
    """A real ``redis-server`` on a fixed port with an RDB file, so a restart keeps the data."""

    def __init__(self, executable: str, data_dir: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.data_dir), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Save the data, then stop the server (connections are refused until ``start``)."""
        import redis

        redis.Redis(host="127.0.0.1", port=self.port).save()
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server: connections are accepted by the kernel but nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def redis_store(
    tmp_path_factory: pytest.TempPathFactory, redis_server_executable: str
) -> Iterator[RedisProcess]:
    server = RedisProcess(redis_server_executable, tmp_path_factory.mktemp("redis_data"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_state(
    served_state: Settings,
    redis_store: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
    environment: Any,
) -> Iterator[dict[str, str]]:
    """The session's features and registry, served from Redis; the service's environment."""
    from features.store import apply_repo, materialize

    state_dir = tmp_path_factory.mktemp("faults_state")
    shutil.copytree(served_state.features_dir, state_dir / "features")
    shutil.copy(served_state.warehouse_path, state_dir / "warehouse.duckdb")
    env = {
        "OMNIRETAIN_STATE_DIR": str(state_dir),
        "OMNIRETAIN_FEATURES__ONLINE_STORE": "redis",
        "OMNIRETAIN_FEATURES__REDIS_CONNECTION_STRING": redis_store.connection_string,
        "OMNIRETAIN_SERVING__ONLINE_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS),
        "OMNIRETAIN_SERVING__ONLINE_RETRY_SECONDS": str(RETRY_SECONDS),
        "MLFLOW_TRACKING_URI": served_state.mlflow_tracking_uri,  # the session's champions
    }
    with environment(**env):
        settings = load_settings()
        assert settings.features.online_store == "redis"
        apply_repo(settings)
        materialize(settings)
        yield env


def known_customers(served_state: Settings, count: int = 5) -> list[str]:
    frame = pd.read_parquet(served_state.features_dir / "customer_features.parquet")
    latest = frame[frame["event_timestamp"] == frame["event_timestamp"].max()]
    return sorted(latest["customer_id"])[:count]


def timed_post(client: Any, path: str, body: dict[str, Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    return response, time.perf_counter() - started


def assert_degraded(response: Any, elapsed: float) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True, body
    assert body["next_best_action"]["action"] == "no_action"
    assert body["next_best_action"]["channel"] == "none"
    assert "Degraded" in body["next_best_action"]["reasons"][0]
    assert elapsed < DEGRADED_BUDGET_SECONDS, f"degraded answer took {elapsed:.2f} s"


def wait_until(check: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_redis_down_then_back_degrades_and_recovers_by_itself(
    redis_state: dict[str, str],
    redis_store: RedisProcess,
    served_state: Settings,
    serve_in_process: Any,
) -> None:
    ids = known_customers(served_state)
    with serve_in_process(**redis_state) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        healthy = client.post("/recommend", json={"customer_id": ids[0]}).json()
        assert healthy["degraded"] is False and healthy["cold_start"] is False

        redis_store.stop()
        try:
            for customer_id in ids:
                assert_degraded(*timed_post(client, "/recommend", {"customer_id": customer_id}))
            batch = client.post("/recommend/batch", json={"customer_ids": ids})
            assert batch.status_code == 200 and batch.json()["degraded"] == len(ids)
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text  # still answering: stay in rotation
            assert ready.json()["status"] == "degraded"
            assert ready.json()["online_store"] == "unavailable"
            assert "online store" in ready.json()["reason"]
            event = client.post(
                "/events", json={"customer_id": ids[0], "event_type": "case_opened"}
            )
            assert event.status_code == 503 and "online store" in event.json()["error"]
        finally:
            redis_store.start()

        # No restart of the service: the next tries after the retry interval find the store.
        def recovered() -> dict[str, Any] | None:
            body = client.post("/recommend", json={"customer_id": ids[0]}).json()
            return body if body["degraded"] is False else None

        back = wait_until(recovered)
        assert back is not None, "still degraded 15 s after Redis came back"
        assert back["churn_probability"] == healthy["churn_probability"]  # same stored features
        assert client.get("/readyz").json()["status"] == "ready"


def test_a_hung_redis_is_bounded_by_the_read_timeout(
    redis_state: dict[str, str],
    redis_store: RedisProcess,
    served_state: Settings,
    serve_in_process: Any,
    environment: Any,
) -> None:
    import redis

    from features.store import OnlineFeatureReader

    ids = known_customers(served_state)
    with environment(**redis_state):
        reader = OnlineFeatureReader(load_settings(), timeout_seconds=READ_TIMEOUT_SECONDS)
    assert reader.get(ids[:1])[0] is not None
    with serve_in_process(**redis_state) as client:
        with redis_store.frozen():
            started = time.perf_counter()
            with pytest.raises(redis.TimeoutError):
                reader.get(ids[:1])
            assert time.perf_counter() - started < 1.0  # the socket timeout, no retries
            for customer_id in ids[:3]:
                assert_degraded(*timed_post(client, "/recommend", {"customer_id": customer_id}))
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        thawed = wait_until(
            lambda: (
                client.post("/recommend", json={"customer_id": ids[1]}).json()["degraded"] is False
            )
        )
        assert thawed, "still degraded after SIGCONT"


def test_registry_unreachable_at_start_serves_the_cached_champions(
    redis_state: dict[str, str], served_state: Settings, serve_in_process: Any
) -> None:
    from serving.model_cache import cache_dir
    from training.registry import champion_versions

    ids = known_customers(served_state)
    champions = champion_versions(served_state)
    with serve_in_process(**redis_state) as client:  # registry reachable: the champions get cached
        expected = client.post("/recommend", json={"customer_id": ids[0]}).json()
    assert (cache_dir(load_settings(state_dir=redis_state["OMNIRETAIN_STATE_DIR"]))).is_dir()
    unreachable = {
        **redis_state,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nobody listens there
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    with serve_in_process(**unreachable) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded" and "cached" in ready.json()["reason"]
        body = client.post("/recommend", json={"customer_id": ids[0]}).json()
        assert body["model_versions"] == expected["model_versions"]
        assert body["churn_probability"] == expected["churn_probability"]
        served = {k: v for k, v in body["model_versions"].items() if v is not None}
        assert served == champions


def test_registry_unreachable_without_a_cache_refuses_to_become_ready(
    redis_state: dict[str, str], tmp_path: Path, serve_in_process: Any
) -> None:
    shutil.copytree(Path(redis_state["OMNIRETAIN_STATE_DIR"]) / "features", tmp_path / "features")
    shutil.copytree(Path(redis_state["OMNIRETAIN_STATE_DIR"]) / "feast", tmp_path / "feast")
    fresh = {
        **redis_state,
        "OMNIRETAIN_STATE_DIR": str(tmp_path),  # no serving/model_cache here
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    with serve_in_process(**fresh) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        reason = ready.json()["reason"]
        assert "did not answer" in reason and "no cached champion" in reason, reason
        answer = client.post("/recommend", json={"customer_id": "C0001"})
        assert answer.status_code == 503 and "not ready" in answer.json()["error"]
        assert client.get("/healthz").status_code == 200  # alive, just not ready
