"""The benchmarks' baselines are what their names say: bench/original_kvmexit_aarch64.bpf.c pairs
exits like kvmexit does (same events through BPF_PROG_TEST_RUN, same counts, same sums within the
time between the two programs' clock reads)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bpf_testrun import test_run_raw
from kvmexit.layouts import Layout
from kvmexit.reasons import ARCH_ARM64

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
ARM64 = Layout("arm64", ARCH_ARM64, "ret", "esr_ec", defines=("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1"))
TRAP = 2
WFX, HVC64, SYS64 = 0x01, 0x16, 0x18


def test_faithful_original_pairs_exits_like_kvmexit():
    from kvmexit.sources.live import LiveSource, import_bcc

    bcc = import_bcc()
    orig = bcc.BPF(text=(BENCH / "original_kvmexit_aarch64.bpf.c").read_text(), cflags=["-DORIG_RAW_TRACEPOINT"])
    ours = LiveSource(ARM64, attach=False).open()
    try:
        raw = bcc.BPF.RAW_TRACEPOINT
        o_exit, o_entry = (orig.load_func(f, raw).fd for f in ("orig_exit", "orig_entry"))
        k_exit, k_entry = (ours.bpf.load_func(f, raw).fd for f in ("kvmexit_exit", "kvmexit_entry"))
        slack = 0  # ns: the two programs read the clock this far apart, at most, per event

        def both(first: int, second: int, *args: int) -> int:
            t0 = time.monotonic_ns()
            test_run_raw(first, *args)
            test_run_raw(second, *args)
            return time.monotonic_ns() - t0

        # (class, pause before the entry; None: another exit comes first, so it is unfinished)
        script = [(WFX, 0.003), (HVC64, 0.001), (HVC64, 0.002), (SYS64, None), (HVC64, 0.001), (WFX, 0.004)]
        for ec, pause in script:
            gap = both(o_exit, k_exit, TRAP, ec, 0x1000)
            if pause is None:
                continue
            time.sleep(pause)
            slack += max(gap, both(o_entry, k_entry, 0x1000))
        tid = threading.get_native_id()
        threads = orig["orig_threads"]
        (t,) = [v for k, v in threads.items() if k.value & 0xFFFFFFFF == tid]
        snap = ours.snapshot()
        kvm = {k.detail: s for k, s in snap.stats.items() if k.tid == tid and k.code == TRAP}
        assert set(kvm) == {WFX, HVC64, SYS64}
        for ec, s in kvm.items():
            o = t.ec[ec]
            assert o.count == s.exits, hex(ec)  # the original counts every exit
            paired = sum(1 for e, p in script if e == ec and p is not None)
            assert s.pairs == paired
            assert abs(o.sum - s.total_ns) <= slack, (hex(ec), o.sum, s.total_ns, slack)
            if paired:
                assert abs(o.min - s.min_ns) <= slack and abs(o.max - s.max_ns) <= slack
            else:
                assert o.sum == 0 and s.unfinished == 1
        assert sum(o.count for o in t.ec) == len(script)
        assert t.last_exit_rs == WFX and bytes(t.comm).rstrip(b"\0")
    finally:
        ours.close()
        orig.cleanup()
