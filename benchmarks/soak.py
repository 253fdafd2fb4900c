"""Soak: ``POST /recommend`` at a steady rate for minutes against ``bentoml serve`` on loopback.

Starts the real server on a trained state (``serving.server.server_process``, 127.0.0.1 only),
drives it with locust (headless, as a library: ``FastHttpUser`` users at a constant throughput)
for ``--seconds`` at ``--rate`` requests/s, 95 % known customers and 5 % unknown ones (cold
start), and stops by itself: at the deadline or after ``seconds x rate x 1.2`` requests,
whichever comes first. Every minute (every 10 s for runs under two minutes) it prints the
interval's requests, p50/p99 latency, errors and the server's resident memory (the ``bentoml
serve`` process and its workers); at the end the totals. The load generator shares the cores
with the server: say so beside every figure.

    python benchmarks/soak.py --state-dir DIR [--seconds 600] [--rate 100]

Last line: JSON with seconds, requests, errors, rss_start_mb, rss_end_mb, p99_ms.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time

import gevent
import locust  # noqa: F401  (its import patches the standard library with gevent)
import numpy as np
from _common import benchmark_parser, serve_state_dir, telemetry_off
from locust import FastHttpUser, constant_throughput, task
from locust.env import Environment

USERS = 10  # concurrent users; each sends rate / USERS requests per second
COLD_START_SHARE = 0.05
WARM_UP_REQUESTS = 50


class Recorder:
    """Latency and outcome of every request, read per reporting interval."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self._interval_start = 0

    def on_request(
        self, response_time: float, exception: BaseException | None, **_: object
    ) -> None:
        self.latencies_ms.append(float(response_time))
        if exception is not None:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(str(exception)[:200])

    def interval(self) -> list[float]:
        values = self.latencies_ms[self._interval_start :]
        self._interval_start = len(self.latencies_ms)
        return values


def make_user(ids: list[str], rate_per_user: float) -> type[FastHttpUser]:
    class RecommendUser(FastHttpUser):
        wait_time = constant_throughput(rate_per_user)

        @task
        def recommend(self) -> None:
            if random.random() < COLD_START_SHARE:
                customer_id = f"SOAK-UNKNOWN-{random.randrange(1_000_000)}"
            else:
                customer_id = random.choice(ids)
            with self.client.post(
                "/recommend", json={"customer_id": customer_id}, catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
                elif response.json().get("customer_id") != customer_id:
                    response.failure("answer for another customer")

    return RecommendUser


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = benchmark_parser(__doc__, state_dir="a trained state", state_dir_required=True)
    parser.add_argument("--seconds", type=int, default=600, help="length of the soak")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    telemetry_off()
    state_dir = serve_state_dir(args.state_dir)

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from omniretain.settings import load_settings
    from serving.server import process_tree_rss_mb, server_process

    settings = load_settings(state_dir=state_dir)
    snapshot = pq.read_table(
        settings.features_dir / "customer_features.parquet",
        columns=["customer_id", "event_timestamp"],
    )
    latest = snapshot.filter(
        pc.equal(snapshot["event_timestamp"], pc.max(snapshot["event_timestamp"]))
    )
    ids = [str(value) for value in latest["customer_id"].to_pylist()]
    report_every = 60 if args.seconds >= 120 else 10
    max_requests = int(args.seconds * args.rate * 1.2) + WARM_UP_REQUESTS

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]} (load generator on the same cores); "
        f"{args.seconds} s at {args.rate:g} req/s, {USERS} locust users, {len(ids)} customers"
    )
    with server_process(settings, timeout_s=600) as (base_url, process):
        recorder = Recorder()
        env = Environment(user_classes=[make_user(ids, args.rate / USERS)], host=base_url)
        env.events.request.add_listener(recorder.on_request)
        runner = env.create_local_runner()

        runner.start(USERS, spawn_rate=USERS)  # warm-up: imports, caches, first reads
        while len(recorder.latencies_ms) < WARM_UP_REQUESTS:
            gevent.sleep(0.1)
        warm_up_errors = recorder.errors
        recorder.latencies_ms.clear()
        recorder.errors = 0
        recorder.interval()
        rss_start = process_tree_rss_mb(process.pid)

        print(f"{'t s':>6}{'requests':>10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'rss MB':>9}")  # fmt: skip
        started = time.monotonic()
        next_report = started + report_every
        errors_reported = 0
        while True:
            gevent.sleep(0.2)
            now = time.monotonic()
            done = now - started >= args.seconds or len(recorder.latencies_ms) >= max_requests
            if now >= next_report or done:
                values = recorder.interval()
                span = now - (next_report - report_every)
                print(
                    f"{now - started:>6.0f}{len(values):>10}{len(values) / span:>8.1f}"
                    f"{percentile(values, 50):>9.1f}{percentile(values, 99):>9.1f}"
                    f"{recorder.errors - errors_reported:>8}"
                    f"{process_tree_rss_mb(process.pid):>9.1f}",
                    flush=True,
                )
                errors_reported = recorder.errors
                next_report = now + report_every
            if done:
                break
        elapsed = time.monotonic() - started
        total, errors = list(recorder.latencies_ms), recorder.errors  # what the intervals showed
        runner.quit()
        rss_end = process_tree_rss_mb(process.pid)

    print(
        f"total: {len(total):,} requests in {elapsed:.0f} s ({len(total) / elapsed:.1f} req/s), "
        f"p50 {percentile(total, 50):.1f} ms, p99 {percentile(total, 99):.1f} ms, "
        f"errors {errors} (+{warm_up_errors} in warm-up); server RSS "
        f"{rss_start:.1f} -> {rss_end:.1f} MB"
    )
    for sample in recorder.error_samples:
        print(f"error: {sample}")
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "requests": len(total),
                "errors": errors + warm_up_errors,
                "rss_start_mb": round(rss_start, 1),
                "rss_end_mb": round(rss_end, 1),
                "p99_ms": round(percentile(total, 99), 2),
                "rate": args.rate,
            }
        )
    )


if __name__ == "__main__":
    main()
