#!/usr/bin/env python3
"""The cost of one Prometheus scrape of ``kvmexit exporter``, end to end.

Needs root, bcc, kernel headers and prometheus_client (scripts/setup.sh). kvmexit's arm64
programs are loaded (not attached) and their maps filled through BPF_PROG_TEST_RUN by vCPU
threads (each named ``CPU n/KVM``, so each is its own label set), one exit of each reason per
thread; the exporter then serves them on loopback with the same code as ``kvmexit exporter``,
and /metrics is fetched over HTTP. A scrape's time covers the kernel map read, the report,
the metric families and their text. Series are counted in the answer (one per sample line).
The defaults, 6 and 60 threads of 11 reasons, make about 10,000 and 100,000 series (161 per
label set: 3 counters and the histogram's 156 buckets, _sum and _count).

Usage: bench/exporter_scrape.py [--threads N] [--reasons N] [--scrapes N]
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from bpf_testrun import test_run_raw  # noqa: E402
from fake_kvm import ARM64_FORMATS, TRAP  # noqa: E402
from kvmexit.commands.exporter import SharedSource, serve  # noqa: E402
from kvmexit.layouts import detect  # noqa: E402
from kvmexit.sources.live import LiveSource  # noqa: E402

ECS = (0x01, 0x16, 0x18, 0x24, 0x20, 0x07, 0x19, 0x15, 0x17, 0x00, 0x0E)


def fill(fds: dict, threads: int, reasons: int) -> None:
    libc = ctypes.CDLL(None)
    barrier = threading.Barrier(threads)  # all alive at once: distinct tids

    def vcpu(index: int) -> None:
        libc.prctl(15, b"CPU %d/KVM" % index, 0, 0, 0)
        for ec in ECS[:reasons]:
            test_run_raw(fds["kvmexit_exit"], TRAP, ec, 0x1000)
            test_run_raw(fds["kvmexit_entry"], 0x1000)
        barrier.wait()

    workers = [threading.Thread(target=vcpu, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[6, 60])
    parser.add_argument("--reasons", type=int, default=11)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    print("kvmexit exporter: time of one scrape (GET /metrics on loopback), median of %d" % args.scrapes)
    for threads in args.threads:
        source = LiveSource(detect(dict(ARM64_FORMATS)), attach=False).open()
        try:
            raw = source.bpf.RAW_TRACEPOINT
            fds = {fn: source.bpf.load_func(fn, raw).fd for fn in ("kvmexit_exit", "kvmexit_entry")}
            fill(fds, threads, args.reasons)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            serve(SharedSource(source), ("127.0.0.1", port))
            url = "http://127.0.0.1:%d/metrics" % port
            times, size, series = [], 0, 0
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=60) as r:
                    body = r.read()
                times.append(time.perf_counter() - t0)
                size = len(body)
                series = sum(1 for ln in body.split(b"\n") if ln.startswith(b"kvmexit_"))
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                "  %4d threads x %d reasons = %5d label sets: %6d kvmexit series, %5d KiB, %7.1f ms (max RSS %.0f MiB)"
                % (
                    threads,
                    args.reasons,
                    threads * args.reasons,
                    series,
                    size // 1024,
                    statistics.median(times) * 1e3,
                    rss_mb,
                )
            )
        finally:
            source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
