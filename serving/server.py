"""Running ``bentoml serve`` as a child process: for the CLI, the demo, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omniretain.settings import PROJECT_ROOT, Settings

SERVICE_IMPORT = "serving.service:OmniRetain"


def server_command(host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line of this environment."""
    bentoml = Path(sys.executable).with_name("bentoml")
    executable = [str(bentoml)] if bentoml.exists() else [sys.executable, "-m", "bentoml"]
    return [*executable, "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of the server: the same state folder and the project on the path."""
    env = dict(os.environ)
    env["OMNIRETAIN_STATE_DIR"] = str(settings.state_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``/readyz`` until it answers 200; fail early if the server process died."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")


@contextmanager
def server_process(
    settings: Settings, port: int | None = None, timeout_s: float = 300
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``bentoml serve`` on loopback, yield its base URL and process, and always stop it.

    The server runs in its own session (its workers included), stopped with SIGTERM, then
    SIGKILL after 20 s.
    """
    port = port or free_port()
    log_path = settings.state_dir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            server_command("127.0.0.1", port),
            cwd=PROJECT_ROOT,
            env=server_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base_url, process, timeout_s)
            yield base_url, process
        except Exception as error:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{error}; server log ({log_path}):\n{tail}") from error
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@contextmanager
def running_server(
    settings: Settings, port: int | None = None, timeout_s: float = 300
) -> Iterator[str]:
    """Start ``bentoml serve`` on loopback, yield its base URL, and always stop it."""
    with server_process(settings, port, timeout_s) as (base_url, _):
        yield base_url


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server and its workers), MB."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1_048_576


# ---- one listening socket per worker ---------------------------------------------------------
API_SOCKET_NAME = "_bento_api_server"  # BentoML's name for the HTTP listening socket
WORKER_SCRIPT_SUFFIX = os.path.join("_bentoml_impl", "worker", "service.py")


def spread_connections_across_workers() -> None:
    """Let the kernel spread connections over BentoML's workers (``SO_REUSEPORT``).

    BentoML's workers share one listening socket, and the worker that wakes first accepts every
    pending connection (uvloop accepts until the queue is empty). A client's keep-alive pool (a
    CRM's connection pool, locust, the latency benchmark) then sticks to one worker while the
    other idles: measured 71 % against 6 % of a core, half the throughput of two workers. With
    ``SO_REUSEPORT`` and one listening socket per worker, the kernel hashes each new connection
    to one of them.

    Called when ``serving.service`` is imported, which ``bentoml serve`` does first in its
    supervisor (before the socket is opened) and then in every worker (before uvicorn starts):

    - supervisor: the API socket gets ``SO_REUSEPORT`` before it is bound, after checking that
      no other server listens on the port (two servers must not share it silently);
    - worker 1 accepts on the inherited socket; every other worker binds its own socket to the
      same address and puts it on the inherited descriptor number (``dup2``).

    Anything unexpected (no ``SO_REUSEPORT``, a Unix socket, BentoML's arguments changed)
    leaves BentoML's own behaviour.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        return
    if sys.argv and sys.argv[0].endswith(WORKER_SCRIPT_SUFFIX):
        _own_worker_socket(sys.argv)
    else:
        _reuseport_api_socket()


def _reuseport_api_socket() -> None:
    """Supervisor: BentoML's API socket is bound with ``SO_REUSEPORT`` (circus binds it; its
    class is patched in place: BentoML imported it before it imported this module)."""
    try:
        from circus.sockets import CircusSocket
    except ImportError:
        return
    if getattr(CircusSocket.bind_and_listen, "omniretain_reuseport", False):
        return
    bind_and_listen = CircusSocket.bind_and_listen

    def bind_and_listen_reuseport(self: CircusSocket) -> None:
        if self.name == API_SOCKET_NAME and not self.is_unix:
            with socket.socket(self.family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host, self.port))  # raises if a server listens there
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bind_and_listen(self)

    bind_and_listen_reuseport.omniretain_reuseport = True  # type: ignore[attr-defined]
    CircusSocket.bind_and_listen = bind_and_listen_reuseport


def _own_worker_socket(argv: list[str]) -> None:
    """Worker 2 and up: a socket of its own on the address of the inherited one."""
    try:
        descriptor = int(argv[argv.index("--fd") + 1])
        worker_id = int(argv[argv.index("--worker-id") + 1])
        backlog = int(argv[argv.index("--backlog") + 1]) if "--backlog" in argv else 2048
    except (ValueError, IndexError):
        return
    if worker_id <= 1:
        return
    inherited = socket.socket(fileno=os.dup(descriptor))
    try:
        if inherited.family not in (socket.AF_INET, socket.AF_INET6):
            return
        if not inherited.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            return  # the supervisor did not opt in: keep sharing its socket
        own = socket.socket(inherited.family, socket.SOCK_STREAM)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(inherited.getsockname())
        own.listen(backlog)
        own.setblocking(False)
        os.dup2(own.fileno(), descriptor)
        own.close()
    finally:
        inherited.close()
