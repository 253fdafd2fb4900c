"""One listening socket per BentoML worker (serving.server.spread_connections_across_workers).

The worker side is checked on real sockets: worker 2 replaces the inherited descriptor by its
own SO_REUSEPORT socket on the same address; worker 1, or a socket without SO_REUSEPORT (the
supervisor did not opt in), is left alone. The supervisor side refuses a port another server
listens on. The whole path runs in the integration tests that start ``bentoml serve``.
"""

from __future__ import annotations

import os
import socket

import pytest

from serving.server import _own_worker_socket, _reuseport_api_socket

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="Linux/BSD only")


def _listening(reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def _identity(descriptor: int) -> tuple[int, int]:
    stat = os.fstat(descriptor)
    return stat.st_dev, stat.st_ino


def _argv(descriptor: int, worker_id: int) -> list[str]:
    return ["/x/_bentoml_impl/worker/service.py", "svc:Svc", "--fd", str(descriptor),
            "--backlog", "16", "--worker-id", str(worker_id)]  # fmt: skip


def test_worker_two_gets_its_own_socket_on_the_same_address() -> None:
    shared = _listening(reuseport=True)
    inherited = os.dup(shared.fileno())  # what the worker received from the supervisor
    try:
        before = _identity(inherited)
        _own_worker_socket(_argv(inherited, 2))
        assert _identity(inherited) != before  # another socket behind the same number
        own = socket.socket(fileno=os.dup(inherited))
        with own:
            assert own.getsockname() == shared.getsockname()
            assert own.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            with socket.create_connection(shared.getsockname(), timeout=5):
                pass  # the address still accepts connections
    finally:
        os.close(inherited)
        shared.close()


@pytest.mark.parametrize(("worker_id", "reuseport"), [(1, True), (2, False)])
def test_worker_one_and_a_socket_without_reuseport_are_left_alone(
    worker_id: int, reuseport: bool
) -> None:
    shared = _listening(reuseport)
    inherited = os.dup(shared.fileno())
    try:
        before = _identity(inherited)
        _own_worker_socket(_argv(inherited, worker_id))
        assert _identity(inherited) == before
    finally:
        os.close(inherited)
        shared.close()


def test_supervisor_refuses_a_port_another_server_listens_on() -> None:
    from circus.sockets import CircusSocket

    _reuseport_api_socket()
    other = _listening(reuseport=True)  # even a server that opted in: never share silently
    try:
        host, port = other.getsockname()
        api = CircusSocket(name="_bento_api_server", host=host, port=port)
        with api, pytest.raises(OSError):
            api.bind_and_listen()
    finally:
        other.close()
    free = CircusSocket(name="_bento_api_server", host="127.0.0.1", port=0)
    with free:
        free.bind_and_listen()
        assert free.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
