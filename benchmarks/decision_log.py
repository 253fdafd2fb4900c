"""What the decision log's writer thread costs the requests beside it: CPU and GIL stalls.

A worker's event loop and the writer thread share the GIL: while the writer converts a flush
(500 records of ~80 features) into a table, a request ready to run waits. This logs records as
the service does (``DecisionLogger.log``) in flushes of ``flush_rows``, and meanwhile a probe
thread sleeps 1 ms over and over, as an event loop waiting on its sockets would: how late it
wakes is how long the writer kept the GIL. Prints the writer's CPU per record and the probe's
lateness (p50, p99, max).

    python benchmarks/decision_log.py [--quick]
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import benchmark_parser, telemetry_off

FEATURES = 80
PROBE_SLEEP_S = 0.001


def main() -> None:
    parser = benchmark_parser(__doc__, quick="fewer flushes")
    args = parser.parse_args()
    telemetry_off()

    from monitoring.logs import DecisionLogger, DecisionRecord
    from omniretain.settings import load_settings

    flushes = 10 if args.quick else 40
    names = [f"feature_{index:02d}" for index in range(FEATURES)]
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(state_dir=Path(folder) / "state")
        settings.monitoring.decision_log.flush_seconds = 3600.0  # flushes of flush_rows only
        rows = settings.monitoring.decision_log.flush_rows
        log = DecisionLogger(settings)
        records = [
            DecisionRecord(
                customer_id=f"C{index:09d}",
                churn_probability=rng.random(),
                repurchase_probability=rng.random(),
                action="winback_offer",
                channel="email",
                churn_model_version="3",
                repurchase_model_version="2",
                features={
                    name: (None if rng.random() < 0.05 else rng.random() * 100) for name in names
                },
                decided_at=datetime.now(UTC),
            )
            for index in range(rows)
        ]
        lateness: list[float] = []
        flush_s: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                time.sleep(PROBE_SLEEP_S)
                lateness.append(time.perf_counter() - start - PROBE_SLEEP_S)

        writer_clock = time.pthread_getcpuclockid(log._thread.ident)  # the writer's CPU
        process_cpu = time.process_time()  # and Arrow's threads, the probe, the logging
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        for _ in range(flushes):
            for record in records:
                log.log(record)
            time.sleep(0.05)
            start = time.perf_counter()
            log.flush()
            flush_s.append(time.perf_counter() - start)
        writer_cpu = time.clock_gettime(writer_clock)
        process_cpu = time.process_time() - process_cpu
        stop.set()
        prober.join()
        log.close()
        assert log.stats.written == flushes * rows and log.stats.write_errors == 0
    late_ms = np.array(lateness) * 1000
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load "
        f"{open('/proc/loadavg').read().split()[:3]}"
    )
    print(f"{flushes} flushes of {rows} records x {FEATURES} features")
    print(f"flush() wall time: median {np.median(flush_s) * 1000:.1f} ms")
    count = flushes * rows
    print(
        f"CPU per record: writer thread {writer_cpu * 1e6 / count:.1f} us, "
        f"process {process_cpu * 1e6 / count:.1f} us"
    )
    print(
        f"probe lateness over {len(late_ms)} sleeps of {PROBE_SLEEP_S * 1000:.0f} ms: "
        f"p50 {np.percentile(late_ms, 50):.3f} ms, p99 {np.percentile(late_ms, 99):.3f} ms, "
        f"max {late_ms.max():.3f} ms"
    )


if __name__ == "__main__":
    main()
