#!/usr/bin/env python3
"""Thread churn: do kvmexit's kernel maps and memory stay flat over days of short-lived vCPUs?

Needs root, bcc and kernel headers (scripts/setup.sh). kvmexit's arm64 programs are loaded (not
attached); short-lived threads, a batch at a time, each send one exit->entry pair through
BPF_PROG_TEST_RUN (a new thread is a new tid to the kernel) and die; between batches the live
loop's work is done (a snapshot, as ``-i`` or a scrape does, and a sweep). Printed: the peak
occupancy of the per-thread start map and of the statistics map, the entries of the name caches
(tgid/tid names, the per-thread name cache; they must stay flat), the names kept for the rows of
exited threads (one per exited thread: they grow with the retired totals), this process's RSS, and
whether every exit sent is accounted for exactly once (pairs, plus exits refused by a full map).

Usage: bench/churn.py [--threads N] [--batch N] [--max-keys N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from bpf_testrun import test_run_raw  # noqa: E402
from fake_kvm import ARM64_FORMATS, TRAP  # noqa: E402
from kvmexit.layouts import detect  # noqa: E402
from kvmexit.sources.live import LiveSource  # noqa: E402

EC_HVC64 = 0x16


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=200_000, help="short-lived threads over the run")
    parser.add_argument("--batch", type=int, default=2_000, help="threads between two snapshots")
    parser.add_argument("--max-keys", type=int, default=65536, help="size of the statistics map")
    args = parser.parse_args()
    source = LiveSource(detect(dict(ARM64_FORMATS)), attach=False, max_keys=args.max_keys).open()
    try:
        raw = source.bpf.RAW_TRACEPOINT
        exit_fd = source.bpf.load_func("kvmexit_exit", raw).fd
        entry_fd = source.bpf.load_func("kvmexit_entry", raw).fd

        def vcpu() -> None:
            test_run_raw(exit_fd, TRAP, EC_HVC64, 0x1000)
            test_run_raw(entry_fd, 0x1000)

        sent = 0
        peak_starts = peak_stats = peak_cached = 0
        peak_rss = rss_mib()
        start = time.monotonic()
        print("threads  starts  stats-keys  name-caches  retired-names  RSS(MiB)")
        while sent < args.threads:
            n = min(args.batch, args.threads - sent)
            for _ in range(n):
                t = threading.Thread(target=vcpu)
                t.start()
                t.join()
            sent += n
            snap = source.snapshot()  # what -i, top and a scrape do; it also sweeps dead threads
            starts, keys = len(source.bpf["threads"]), len(snap.stats)  # thread slots (open exit + rows)
            cached = source.resolver.cached() + len(source._threads)
            peak_cached = max(peak_cached, cached)
            peak_starts, peak_stats, peak_rss = (
                max(peak_starts, starts),
                max(peak_stats, keys),
                max(peak_rss, rss_mib()),
            )
            if sent % (args.batch * 10) == 0 or sent == args.threads:
                print(
                    "%7d  %6d  %10d  %11d  %13d  %8.1f"
                    % (sent, starts, keys, cached, len(snap.retired_threads), rss_mib()),
                    flush=True,
                )
        snap = source.snapshot()
        pairs = sum(s.pairs for s in snap.stats.values())
        refused = snap.health.stats_map_full + snap.health.start_map_full
        others = sum(s.unfinished + s.open for s in snap.stats.values())
        print(
            "%d threads in %.0fs: peak start-map entries %d, peak stats-map keys %d (of %d), peak name-cache "
            "entries %d, peak RSS %.1f MiB (max RSS %.1f MiB)"
            % (
                sent,
                time.monotonic() - start,
                peak_starts,
                peak_stats,
                args.max_keys,
                peak_cached,
                peak_rss,
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
        )
        print(
            "exits sent %d = counted %d (pairs) + %d (refused: map full) + %d (unfinished/open): %s"
            % (sent, pairs, refused, others, "exact" if sent == pairs + refused + others else "MISMATCH")
        )
        return 0 if sent == pairs + refused + others else 1
    finally:
        source.close()


if __name__ == "__main__":
    sys.exit(main())
