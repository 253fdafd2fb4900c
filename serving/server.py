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
