"""Latency and throughput of ``POST /recommend`` over real HTTP, next to the in-process floor.

Starts ``bentoml serve`` on loopback on a trained state (``serving.server.running_server``),
sends a bounded number of requests at concurrency 1, 16 and 64 (httpx async, one client), then
``/recommend/batch`` if the service has it, and computes the same decisions in this process
without HTTP (``OmniRetain.inner().recommend``: the same models, reads and decision): the floor.
The load generator shares the 2 cores with the server: every figure here is pessimistic.

    python benchmarks/latency.py --state-dir DIR [--quick]

Last line: JSON with p50_ms_c1, p99_ms_c1, rps_c16, p99_ms_c16, rps_c64, p99_ms_c64,
floor_p99_ms, batch_customers_per_s.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time

import numpy as np
from _common import benchmark_parser, serve_state_dir, telemetry_off


async def load(
    base_url: str, ids: list[str], concurrency: int, requests: int, offset: int = 0
) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight; latencies in ms and requests/s.

    Customers are taken in order from ``offset`` (wrapping around): the service caches reason
    codes per customer and feature vector, so each phase starts where the previous one ended
    and repeats a customer only once the population is used up."""
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            for index in queue:
                body = {"customer_id": ids[(offset + index) % len(ids)]}
                started = time.perf_counter()
                try:
                    response = await client.post("/recommend", json=body)
                except httpx.TransportError:  # e.g. a keep-alive connection closed under load
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    values = np.array(latencies)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "rps": requests / elapsed,
        "errors": errors,
    }


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


def in_process_floor(ids: list[str], requests: int) -> dict[str, float]:
    """The same ``recommend`` of the service class, called in this process without HTTP
    (BentoML's ``inner`` class: the models, feature reader, policy and logs of the server)."""
    from serving.service import OmniRetain

    service = OmniRetain.inner()
    for customer_id in ids[-20:]:  # warm-up on other customers than the measured ones
        service.recommend(customer_id)
    totals = []
    for index in range(requests):
        started = time.perf_counter()
        service.recommend(ids[index % len(ids)])
        totals.append((time.perf_counter() - started) * 1000)
    cache = service.contributions
    return {
        "p50_ms": float(np.percentile(totals, 50)),
        "p99_ms": float(np.percentile(totals, 99)),
        "reason_cache_hits": cache.hits / max(cache.hits + cache.misses, 1),
    }


def main() -> None:
    parser = benchmark_parser(
        __doc__, state_dir="a trained state", state_dir_required=True, quick="fewer requests"
    )
    args = parser.parse_args()
    telemetry_off()
    state_dir = serve_state_dir(args.state_dir)

    from omniretain.settings import load_settings
    from serving.batch import features_path, read_latest_snapshot
    from serving.server import running_server

    settings = load_settings(state_dir=state_dir)
    ids = read_latest_snapshot(features_path(settings))["customer_id"].astype(str).tolist()
    requests = {1: 100, 16: 400, 64: 640} if args.quick else {1: 1000, 16: 4000, 64: 6400}

    results: dict[int, dict] = {}
    with running_server(settings, timeout_s=600) as base_url:
        asyncio.run(load(base_url, ids, 4, 40, offset=len(ids) - 40))  # warm-up: the last ids
        offset = 0
        for concurrency, count in requests.items():
            results[concurrency] = asyncio.run(load(base_url, ids, concurrency, count, offset))
            offset += count
        batch = batch_throughput(base_url, ids, 2 if args.quick else 10)
    floor = in_process_floor(ids, requests[1])

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]} (load generator on the same cores)"
    )
    print(f"{'concurrency':>12}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
    for concurrency, figures in results.items():
        print(
            f"{concurrency:>12}{requests[concurrency]:>10}{figures['p50']:>9.1f}"
            f"{figures['p99']:>9.1f}{figures['rps']:>9.0f}{figures['errors']:>8}"
        )
    print(
        f"in-process floor (service.recommend without HTTP): p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms"
    )
    print(
        f"reason codes (TreeSHAP) served from the cache in the floor: "
        f"{floor['reason_cache_hits']:.0%} of requests"
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
            }
        )
    )


if __name__ == "__main__":
    main()
