"""Integration fixtures: a real ``redis-server`` for the Redis online store tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from features.local_redis import local_redis_server, redis_server_path


@pytest.fixture(scope="session")
def redis_connection_string() -> Iterator[str]:
    """``host:port`` of a redis-server started for this session (no persistence).

    Without ``redis-server`` the Redis tests skip locally and fail in CI (``CI`` set), where
    ``.ci/run`` installs it.
    """
    if redis_server_path() is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    with local_redis_server() as connection_string:
        yield connection_string
