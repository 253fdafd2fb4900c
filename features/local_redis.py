"""A throw-away local ``redis-server`` for tests and benchmarks (no persistence, free port).

Production points ``features.redis_connection_string`` at a managed Redis; this helper only
exists so that the Redis online store is exercised against a real server, never a fake.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

REDIS_SERVER = "redis-server"
START_TIMEOUT_SECONDS = 10.0


class RedisServerUnavailable(RuntimeError):
    """``redis-server`` is not installed or did not start."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_path() -> str | None:
    """The ``redis-server`` executable, or ``None`` when it is not installed."""
    return shutil.which(REDIS_SERVER) or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _wait_until_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    import redis

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = redis.Redis(host="127.0.0.1", port=port)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RedisServerUnavailable(f"redis-server exited with code {process.returncode}")
        try:
            if client.ping():
                client.close()
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RedisServerUnavailable(f"redis-server did not answer on port {port} within 10 s")


@contextmanager
def local_redis_server() -> Iterator[str]:
    """Start ``redis-server`` on a free port without persistence; yield ``host:port``.

    Raises:
        RedisServerUnavailable: the executable is missing (install it: ``apt-get install
            redis-server``) or the server did not come up.
    """
    executable = redis_server_path()
    if executable is None:
        raise RedisServerUnavailable(
            "redis-server is not installed; install it (apt-get install redis-server)"
        )
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_ready(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
