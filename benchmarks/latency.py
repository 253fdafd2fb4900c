"""Latency and throughput of ``POST /recommend`` over real HTTP, next to the in-process floor.

Starts ``bentoml serve`` on loopback on a trained state (``serving.server.server_process``),
sends a bounded number of requests at concurrency 1, 16 and 64 (closed loop: each connection
sends again as soon as it is answered, the saturation throughput), then 16 connections paced at
200 requests/s (the issue's goal: the p99 a CRM sending that rate sees), then
``/recommend/batch`` if the service has it, and computes the same decisions in this process
without HTTP (``OmniRetain.inner().recommend_one``: the same models, reads and decision): the
floor. Last,
how often the served churn drivers (path attribution) name the same top 3 as TreeSHAP, on the
latest snapshot's customers.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams (uvloop), one
connection per request in flight (:class:`Connection`: about 0.3 ms of CPU per request against
1-3 ms for httpx). It shares the 2 cores with the server, so every figure here is pessimistic;
the table shows the CPU per request of the server's processes and of this client.

    python benchmarks/latency.py --state-dir DIR [--quick]

Last line: JSON with p50_ms_c1, p99_ms_c1, rps_c16, p99_ms_c16, rps_c64, p99_ms_c64,
floor_p99_ms, batch_customers_per_s (the closed-loop phases), and rps_c16_paced,
p99_ms_c16_paced (the paced phase).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from _common import benchmark_parser, serve_state_dir, telemetry_off


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator's client.

    A generic client (httpx: about 1-2 ms of CPU per request) takes from the two cores what the
    server needs; this one writes a prepared request and reads the status line, the headers and
    a ``Content-Length`` (or chunked) body, nothing more: tens of microseconds per request. A
    response that closes the connection, or a broken one, reconnects on the next request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``path``; the status and the response body."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode("ascii") + body)
        try:
            headers = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = headers.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            if fields.get("transfer-encoding", "").lower() == "chunked":
                content = await self._read_chunked()
            else:
                content = await self.reader.readexactly(int(fields.get("content-length", "0")))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, content

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(
    base_url: str,
    ids: list[str],
    concurrency: int,
    requests: int,
    offset: int = 0,
    rate: float | None = None,
) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight; latencies in ms and requests/s.

    Without ``rate`` every connection sends its next request as soon as the last is answered
    (closed loop: the server's saturation throughput, where the latency is the queue it then
    holds). With ``rate`` request ``i`` is due at ``start + i / rate`` (still at most
    ``concurrency`` in flight) and its latency counts from when it was due, so a request held
    back by a slow answer counts its wait (no coordinated omission): the latency a CRM sending
    that many requests per second sees.

    One keep-alive connection per request in flight (:class:`Connection`), as a CRM's
    connection pool. Customers are taken in order from ``offset`` (wrapping around): the
    service caches reason codes per customer and feature vector, so each phase starts where the
    previous one ended and repeats a customer only once the population is used up."""
    url = urlsplit(base_url)
    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))
    connections = [
        Connection(url.hostname or "127.0.0.1", url.port or 80) for _ in range(concurrency)
    ]

    async def worker(connection: Connection) -> None:
        nonlocal errors
        for index in queue:
            body = json.dumps({"customer_id": ids[(offset + index) % len(ids)]}).encode()
            started = time.perf_counter()
            if rate is not None:
                due = begun + index / rate
                if due > started:
                    await asyncio.sleep(due - started)
                started = due
            try:
                async with asyncio.timeout(30):
                    status, _ = await connection.post_json("/recommend", body)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                connection.close()  # e.g. a keep-alive connection closed under load
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            errors += status != 200

    begun = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    elapsed = time.perf_counter() - begun
    for connection in connections:
        connection.close()
    values = np.array(latencies)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "rps": requests / elapsed,
        "errors": errors,
    }


PACED_RATE = 200.0  # requests/s of the paced phase at concurrency 16: the goal


def batch_throughput(base_url: str, ids: list[str], rounds: int) -> float | None:
    """Customers per second through ``/recommend/batch``; None when the route does not exist."""
    import httpx

    body = {"customer_ids": ids[:1000]}
    started = time.perf_counter()
    for _ in range(rounds):
        response = httpx.post(f"{base_url}/recommend/batch", json=body, timeout=120)
        if response.status_code == 404:
            return None
        response.raise_for_status()
    return rounds * len(body["customer_ids"]) / (time.perf_counter() - started)


def in_process_floor(ids: list[str], requests: int) -> tuple[dict[str, float], Any]:
    """The same ``recommend_one`` of the service class, called in this process without HTTP
    (BentoML's ``inner`` class: the models, feature reader, policy and logs of the server).
    Returns the figures and the service (its models explain the reasons' agreement)."""
    from serving.service import OmniRetain

    service = OmniRetain.inner()
    for customer_id in ids[-20:]:  # warm-up on other customers than the measured ones
        service.recommend_one(customer_id)
    totals = []
    for index in range(requests):
        started = time.perf_counter()
        service.recommend_one(ids[index % len(ids)])
        totals.append((time.perf_counter() - started) * 1000)
    cache = service.contributions
    return {
        "p50_ms": float(np.percentile(totals, 50)),
        "p99_ms": float(np.percentile(totals, 99)),
        "reason_cache_hits": cache.hits / max(cache.hits + cache.misses, 1),
    }, service


def reasons_agreement(model: object, matrix: np.ndarray, limit: int = 3) -> dict[str, float]:
    """How often path attribution names the same top churn drivers as TreeSHAP.

    The drivers are what ``serving.reasons.top_churn_drivers`` shows: the ``limit`` features
    with the largest positive contributions (ties by name)."""
    from serving.reasons import contributions

    def top(row: np.ndarray) -> list[int]:
        order = sorted(
            (index for index in range(len(row)) if row[index] > 0), key=lambda i: -row[i]
        )
        return order[:limit]

    path = contributions(model, matrix, "path")[:, :-1]
    shap = contributions(model, matrix, "treeshap")[:, :-1]
    same_set = same_order = same_first = overlap = 0
    for path_row, shap_row in zip(path, shap, strict=True):
        ours, exact = top(path_row), top(shap_row)
        same_set += set(ours) == set(exact)
        same_order += ours == exact
        same_first += ours[:1] == exact[:1]
        overlap += len(set(ours) & set(exact)) / max(len(exact), 1)
    rows = max(len(matrix), 1)
    return {
        "customers": len(matrix),
        "same_set": same_set / rows,
        "same_order": same_order / rows,
        "same_first": same_first / rows,
        "overlap": overlap / rows,
    }


def process_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and of each descendant (the server's workers)."""
    import psutil

    seconds = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def busiest_share(before: dict[int, float], after: dict[int, float]) -> float:
    """The share of the server's CPU taken by its busiest process between two readings: 1/2
    when two workers share the load evenly (connections spread by ``SO_REUSEPORT``)."""
    used = [after[pid] - before.get(pid, 0.0) for pid in after]
    return max(used) / max(sum(used), 1e-9)


def run(coroutine: Any) -> Any:
    """Run the load generator on uvloop when it is installed (it is, with BentoML): cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    parser = benchmark_parser(
        __doc__, state_dir="a trained state", state_dir_required=True, quick="fewer requests"
    )
    args = parser.parse_args()
    telemetry_off()
    state_dir = serve_state_dir(args.state_dir)

    from omniretain.settings import load_settings
    from serving.batch import features_path, read_latest_snapshot
    from serving.server import server_process

    settings = load_settings(state_dir=state_dir)
    snapshot = read_latest_snapshot(features_path(settings))
    ids = snapshot["customer_id"].astype(str).tolist()
    requests = {1: 100, 16: 400, 64: 640} if args.quick else {1: 1000, 16: 4000, 64: 6400}
    paced = {"concurrency": 16, "rate": PACED_RATE, "requests": 400 if args.quick else 4000}

    results: dict[int, dict] = {}
    with server_process(settings, timeout_s=600) as (base_url, process):
        run(load(base_url, ids, 4, 40, offset=len(ids) - 40))  # warm-up: the last ids
        offset = 0
        for concurrency, count in requests.items():
            server_cpu, client_cpu = process_cpu_seconds(process.pid), time.process_time()
            results[concurrency] = run(load(base_url, ids, concurrency, count, offset))
            server_cpu_after = process_cpu_seconds(process.pid)
            results[concurrency]["server_cpu_ms"] = (
                (sum(server_cpu_after.values()) - sum(server_cpu.values())) * 1000 / count
            )
            results[concurrency]["busiest_share"] = busiest_share(server_cpu, server_cpu_after)
            results[concurrency]["client_cpu_ms"] = (
                (time.process_time() - client_cpu) * 1000 / count
            )
            offset += count
        results_paced = run(
            load(base_url, ids, paced["concurrency"], paced["requests"], offset, PACED_RATE)
        )
        batch = batch_throughput(base_url, ids, 2 if args.quick else 10)
    floor, service = in_process_floor(ids, requests[1])
    churn = service.models.churn.model
    sample = snapshot.reindex(columns=churn.feature_names).head(500 if args.quick else 3000)
    agreement = reasons_agreement(churn, sample.to_numpy(dtype=np.float64))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]} (load generator on the same cores)"
    )
    print(
        f"{'concurrency':>12}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}"
        f"{'server CPU ms/req':>19}{'client CPU ms/req':>19}{'busiest worker':>16}"
    )
    for concurrency, figures in results.items():
        print(
            f"{concurrency:>12}{requests[concurrency]:>10}{figures['p50']:>9.1f}"
            f"{figures['p99']:>9.1f}{figures['rps']:>9.0f}{figures['errors']:>8}"
            f"{figures['server_cpu_ms']:>19.2f}{figures['client_cpu_ms']:>19.2f}"
            f"{figures['busiest_share']:>16.0%}"
        )
    print(
        "busiest worker: its share of the server's CPU in the phase (50% = both workers "
        "equally busy; connections are hashed to workers, so 16 may split 10/6; concurrency 1 is "
        "one connection, hence one worker)"
    )
    print(
        f"in-process floor (service.recommend_one without HTTP): p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms"
    )
    print(
        f"reason codes ({settings.serving.reasons}) served from the cache in the floor: "
        f"{floor['reason_cache_hits']:.0%} of requests"
    )
    print(
        f"top-3 churn drivers, path attribution vs TreeSHAP on {agreement['customers']:,} "
        f"customers: same three {agreement['same_set']:.0%}, same order "
        f"{agreement['same_order']:.0%}, same first {agreement['same_first']:.0%}, "
        f"mean overlap {agreement['overlap']:.0%}"
    )
    print(
        f"paced: {paced['requests']} requests due at {PACED_RATE:.0f}/s, at most 16 in flight "
        f"(latency from when each was due): {results_paced['rps']:.0f} req/s, p50 "
        f"{results_paced['p50']:.1f} ms, p99 {results_paced['p99']:.1f} ms, "
        f"{results_paced['errors']} errors"
    )
    print(f"HTTP p50 at c1 / floor p50 = {results[1]['p50'] / floor['p50_ms']:.1f}x")
    print(f"/recommend/batch: {batch:,.0f} customers/s" if batch else "/recommend/batch: absent")
    print(
        json.dumps(
            {
                "p50_ms_c1": round(results[1]["p50"], 2),
                "p99_ms_c1": round(results[1]["p99"], 2),
                "rps_c16": round(results[16]["rps"], 1),
                "p99_ms_c16": round(results[16]["p99"], 2),
                "rps_c64": round(results[64]["rps"], 1),
                "p99_ms_c64": round(results[64]["p99"], 2),
                "floor_p99_ms": round(floor["p99_ms"], 2),
                "batch_customers_per_s": round(batch, 1) if batch else None,
                "rps_c16_paced": round(results_paced["rps"], 1),
                "p99_ms_c16_paced": round(results_paced["p99"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
