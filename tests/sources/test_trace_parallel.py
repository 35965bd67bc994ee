"""Reading a trace file in several processes (``report --jobs``) gives exactly the result of one.

Real fixtures of each format are cut at many places and read through separate processes (the
command's JSON compared byte for byte); hypothesis-generated traces with every kind of event the
engine keeps per-thread state for (exits, entries, halts, sched_switch, kvm_userspace_exit, thread
exits, losses, x86 numbers whose isa comes from earlier names, malformed and over-long lines) are
cut at adversarial places and stitched in this process (``processes=False``: the same code without
forks, so many cut sets can be tried).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmexit.cli import main
from kvmexit.errors import BadTrace
from kvmexit.reasons import ISA_SVM
from kvmexit.sources.trace import parallel, read_stream, read_trace
from kvmexit.sources.trace.reader import finish
from kvmexit.sources.trace.render import Event, entry_payload, exit_payload, render_line, wakeup_payload

TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"
EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "kvmexit" / "data" / "example-arm64.trace.gz"


def report_json(path: str, *args: str) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["report", "--json", *args, path])
    return rc, out.getvalue(), err.getvalue()


def line_starts(path: Path) -> List[int]:
    data = path.read_bytes()
    return [i + 1 for i, c in enumerate(data[:-1]) if c == 10]


def plain_copy(src: Path, tmp_path: Path) -> Path:
    """A fixture as a plain file (the gzip ones decompressed), with its names file if any."""
    dst = tmp_path / (src.name[: -len(".gz")] if src.name.endswith(".gz") else src.name)
    data = src.read_bytes()
    dst.write_bytes(gzip.decompress(data) if src.name.endswith(".gz") else data)
    names = Path(str(src)[: -len(".gz")] if src.name.endswith(".gz") else str(src)).with_name(dst.name + ".names.json")
    if names.exists():
        (tmp_path / names.name).write_bytes(names.read_bytes())
    return dst


FIXTURES = [
    "arm64-upstream.synthetic.trace",
    "arm64-upstream.synthetic.trace-cmd",
    "arm64-upstream.synthetic.perf",
    "arm64-upstream-lost.synthetic.trace",
    "arm64-openeuler-5.10.synthetic.trace",
    "arm64-openeuler-4.19.synthetic.trace",
    "arm64-4.19.synthetic.trace",
    "x86-vmx.synthetic.trace",
    "x86-vmx.synthetic.trace-cmd",
    "x86-vmx.synthetic.perf",
    "x86-svm.synthetic.trace",
    "x86-vmx-old.synthetic.trace",
    "arm64-6.1-e2e.trace",
    "arm64-5.10-e2e.trace",
    "arm64-6.1-subreasons.trace",
    "arm64-6.1-hog.trace.gz",  # sched_switch, kvm_userspace_exit, thread exits: the split
    "arm64-6.1-ab-a.trace.gz",
    "x86-6.1-svm-subreasons.trace",
]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cut_anywhere_through_processes_gives_the_same_json(name, tmp_path):
    path = plain_copy(TRACES / name, tmp_path)
    want = report_json(str(path), "--jobs", "1")
    assert want[0] == 0, want[2]
    starts = line_starts(path)
    assert len(starts) > 10
    # Evenly (what --jobs does), and a few uneven cut sets of 2 to 4 ranges.
    assert report_json(str(path), "--jobs", "2") == want
    assert report_json(str(path), "--jobs", "3") == want
    n = len(starts)
    for cuts in ([starts[1]], [starts[n // 3], starts[n // 3 + 1]], [starts[n - 2]], starts[n // 5 :: n // 4][:3]):
        got = read_trace(str(path), offsets=cuts, jobs=2)
        one = read_trace(str(path))
        assert got.snapshot == one.snapshot, cuts
        assert got.health == one.health, cuts


@pytest.mark.parametrize(
    "name",
    [
        "arm64-6.1-hog.trace.gz",
        "arm64-upstream-lost.synthetic.trace",
        "arm64-6.1-subreasons.trace",
        "x86-vmx.synthetic.perf",
    ],
)
def test_fixture_cut_at_every_line_stitches_to_the_same_result(name, tmp_path):
    """Single cuts (two ranges) and pairs of neighbouring cuts all along the file (80 places),
    read without forks."""
    path = plain_copy(TRACES / name, tmp_path)
    one = read_trace(str(path))
    starts = line_starts(path)
    step = max(1, len(starts) // 80)
    for i in range(0, len(starts), step):
        for cuts in ([starts[i]], starts[i : i + 2]):
            got = stitched(path, cuts)
            assert got.snapshot == one.snapshot, cuts
            assert got.health == one.health, cuts


def test_the_shipped_example_decompressed(tmp_path):
    path = tmp_path / "example.trace"
    path.write_bytes(gzip.decompress(EXAMPLE.read_bytes()))
    names = str(EXAMPLE)[: -len(".gz")] + ".names.json"
    want = report_json(str(path), "--jobs", "1", "--names", names)
    assert want[0] == 0
    for jobs in ("2", "4"):
        assert report_json(str(path), "--jobs", jobs, "--names", names) == want
    for cuts in ([1000], [5000, 5100], [100, 20000, 30000]):
        assert (
            read_trace(str(path), offsets=cuts, jobs=3, names_path=names).snapshot
            == read_trace(str(path), names_path=names).snapshot
        )


def stitched(path: Path, offsets: List[int], max_line: Optional[int] = None, **kw):
    ranges = parallel.cut_points(str(path), path.stat().st_size, offsets)
    args = dict(processes=1)
    if max_line is not None:
        args["max_line"] = max_line
    got = parallel.read_parallel(
        str(path), ranges, kw.get("fmt"), kw.get("layout"), set(kw.get("tids", ())), set(), None, **args
    )
    assert got is not None
    return finish(got[0], got[1], None)


# -- generated traces ------------------------------------------------------------------------------

VCPUS = (301, 302, 303)
HOG = 777
ARM_REASONS = [(2, 0x24), (2, 0x16), (2, 0x01), (0, 0), (2, 0x18)]
X86_PAYLOADS = [
    "vcpu 0 reason EXTERNAL_INTERRUPT rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",
    "vcpu 0 reason hlt rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",
    "vcpu 0 reason 0x1234 rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",
    "vcpu 0 reason MSR_READ rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",
    "vcpu 0 reason npf rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",
]

STEP = st.tuples(
    st.sampled_from(
        [
            "exit",
            "exit",
            "entry",
            "entry",
            "wakeup",
            "uexit",
            "mmio",
            "out",
            "in",
            "switch",
            "pexit",
            "lost",
            "bad",
            "long",
        ]
    ),
    st.sampled_from(VCPUS),
    st.integers(min_value=0, max_value=4),  # reason / cpu / state choice
    st.integers(min_value=0, max_value=3000),  # us step (0: same timestamp)
    st.integers(min_value=0, max_value=5_000_000),  # wakeup ns (may exceed the exit: clamped)
)


def render(steps, fmt: str, layout: str) -> str:
    lines = ["# tracer: nop", "#"] if fmt == "ftrace" else (["cpus=2"] if fmt == "trace-cmd" else [])
    t = 1_000_000_000_000
    for kind, tid, k, step, ns in steps:
        t += step * 1000
        comm = "CPU %d/KVM" % (tid - 301)
        cpu = k % 2
        if kind == "exit":
            if layout == "x86":
                payload = X86_PAYLOADS[k]
            else:
                ret, ec = ARM_REASONS[k]
                payload = exit_payload(layout, ret, ec)
            ev = Event(t, cpu, tid, 300, comm, "kvm_exit", payload)
        elif kind == "entry":
            ev = Event(t, cpu, tid, 300, comm, "kvm_entry", entry_payload(layout))
        elif kind == "wakeup":
            ev = Event(t, cpu, tid, 300, comm, "kvm_vcpu_wakeup", wakeup_payload(ns))
        elif kind == "uexit":
            ev = Event(t, cpu, tid, 300, comm, "kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)")
        elif kind == "mmio":
            ev = Event(t, cpu, tid, 300, comm, "kvm_mmio", "mmio write len 4 gpa 0x9000000 val 0x%x" % k)
        elif kind in ("out", "in", "switch"):
            prev, nxt = (tid, HOG) if kind == "out" else (HOG, tid) if kind == "in" else (tid, VCPUS[k % 3])
            state = ("R", "S", "R+", "D", "S")[k]
            pcomm = comm if prev != HOG else "hog"
            ncomm = "CPU %d/KVM" % (nxt - 301) if nxt != HOG else "hog"
            payload = (
                "prev_comm=%s prev_pid=%d prev_prio=120 prev_state=%s ==> next_comm=%s next_pid=%d next_prio=120"
                % (pcomm, prev, state, ncomm, nxt)
            )
            ev = Event(t, cpu, prev, 300 if prev != HOG else HOG, pcomm, "sched_switch", payload)
        elif kind == "pexit":
            ev = Event(t, cpu, tid, 300, comm, "sched_process_exit", "comm=%s pid=%d prio=120" % (comm, tid))
        elif kind == "lost":
            lines.append("CPU:%d [LOST %d EVENTS]" % (cpu, k + 1))
            continue
        elif kind == "bad":
            lines.append("%16s-%-7d [000] d..1. garbage line %d" % (comm, tid, k))
            continue
        else:  # a line longer than the reader's limit in the test (max_line=300)
            lines.append("x" * (300 + k * 200))
            continue
        lines.append(render_line(fmt, ev, tgid_column=True, digits=9 if fmt == "perf" else 6))
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(STEP, min_size=4, max_size=70),
    st.sampled_from([("ftrace", "arm64"), ("trace-cmd", "arm64"), ("perf", "arm64"), ("ftrace", "x86")]),
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=5),
    st.booleans(),
)
def test_generated_traces_cut_anywhere_stitch_to_the_one_process_result(tmp_path_factory, steps, how, cuts, filtered):
    fmt, layout = how
    text = render(steps, fmt, layout).encode()
    path = tmp_path_factory.mktemp("gen") / ("t." + fmt)
    path.write_bytes(text)
    starts = [i + 1 for i, c in enumerate(text[:-1]) if c == 10]
    # Cuts at line starts picked by index (between any two events), or at byte offsets inside lines.
    offsets = [starts[c % len(starts)] if c % 3 else c % len(text) for c in cuts]
    tids = [VCPUS[0]] if filtered else []
    try:
        one = read_stream(io.BytesIO(text), fmt=fmt, layout=layout, max_line=300, tids=tids)
    except BadTrace:
        with pytest.raises(BadTrace):
            stitched(path, offsets, max_line=300, fmt=fmt, layout=layout, tids=tids)
        return
    got = stitched(path, offsets, max_line=300, fmt=fmt, layout=layout, tids=tids)
    assert got.snapshot == one.snapshot
    assert got.health == one.health


def every_cut(tmp_path: Path, steps, fmt: str = "ftrace", layout: str = "arm64", header: str = "", **kw) -> None:
    """The trace of ``steps`` (after ``header``) cut at every line start, and at every pair of them,
    stitches to the one-process result."""
    text = (header + render(steps, fmt, layout)).encode()
    path = tmp_path / ("t." + fmt)
    path.write_bytes(text)
    one = read_stream(io.BytesIO(text), fmt=fmt, layout=layout, **kw)
    starts = [i + 1 for i, c in enumerate(text[:-1]) if c == 10]
    cut_sets = [[a] for a in starts] + [[a, b] for i, a in enumerate(starts) for b in starts[i + 1 :]]
    for cuts in cut_sets:
        got = stitched(path, cuts, fmt=fmt, layout=layout, **kw)
        assert (got.snapshot, got.health) == (one.snapshot, one.health), cuts


BIG = 5_000_000  # a wakeup longer than its exit: the halt is clamped once a switch was seen


def test_halt_is_clamped_after_a_switch_in_an_earlier_range(tmp_path):
    """The second exit's pair is in a range with no switch of its own: the range records the halt
    it did not clamp, and the parent takes it off (a switch came before)."""
    steps = [
        ("switch", 303, 0, 1, 0),  # 303 -> 301: a switch, of no open exit
        ("exit", 301, 2, 1, 0),
        ("entry", 301, 0, 1, 0),
        ("exit", 301, 2, 1, 0),
        ("wakeup", 301, 0, 1, BIG),
        ("entry", 301, 0, 1, 0),
    ]
    every_cut(tmp_path, steps)


def test_halt_is_clamped_from_the_start_when_the_header_says_switches_were_recorded(tmp_path):
    steps = [
        ("exit", 301, 2, 1, 0),
        ("wakeup", 301, 0, 1, BIG),
        ("entry", 301, 0, 1, 0),
        ("exit", 301, 2, 1, 0),
        ("wakeup", 301, 0, 1, BIG),
        ("entry", 301, 0, 1, 0),
    ]
    header = (
        "# kvmexit record: layout=arm64 kernel=6.1 events=kvm:kvm_exit,kvm:kvm_entry,sched:sched_switch instance=x\n"
    )
    every_cut(tmp_path, steps, header=header)


def test_halt_of_a_deferred_pair_sees_a_switch_earlier_in_its_range(tmp_path):
    steps = [
        ("exit", 301, 2, 1, 0),
        ("entry", 301, 0, 1, 0),
        ("switch", 303, 0, 1, 0),
        ("exit", 301, 2, 1, 0),
        ("wakeup", 301, 0, 1, BIG),
        ("entry", 301, 0, 1, 0),
        ("uexit", 302, 0, 1, 0),
        ("exit", 302, 2, 1, 0),
        ("wakeup", 302, 0, 1, BIG),
        ("entry", 302, 0, 1, 0),
    ]
    every_cut(tmp_path, steps)


def test_guest_time_after_entries_without_exit_takes_the_last_entry(tmp_path):
    steps = [
        ("exit", 301, 0, 1, 0),
        ("entry", 301, 0, 1, 0),
        ("entry", 301, 0, 50, 0),  # unpaired
        ("entry", 301, 0, 70, 0),  # unpaired: the guest time starts here
        ("exit", 301, 1, 90, 0),
        ("entry", 301, 0, 1, 0),
    ]
    every_cut(tmp_path, steps)


@pytest.mark.parametrize("halt", [150_000, 255_000])  # a halt over some, or all, of the time off CPU
def test_switches_of_an_exit_open_across_the_cut_fold_into_its_split(tmp_path, halt):
    steps = [
        ("exit", 301, 2, 1, 0),
        ("out", 301, 0, 10, 0),  # preempted (R)
        ("in", 301, 0, 20, 0),
        ("out", 301, 1, 30, 0),  # blocked (S)
        ("in", 301, 0, 40, 0),
        ("in", 301, 0, 45, 0),  # already on CPU: nothing
        ("out", 301, 2, 50, 0),
        ("uexit", 301, 0, 5, 0),
        ("in", 301, 0, 60, 0),
        ("wakeup", 301, 0, 1, halt),
        ("entry", 301, 0, 1000, 0),
        ("exit", 301, 2, 1, 0),
        ("out", 301, 0, 10, 0),
        ("entry", 301, 0, 1, 0),  # an entry while off CPU (a broken trace): still one rule
    ]
    every_cut(tmp_path, steps)


def test_a_loss_closes_exits_open_across_the_cut(tmp_path):
    steps = [
        ("exit", 301, 0, 1, 0),  # CPU 0
        ("exit", 302, 1, 1, 0),  # CPU 1
        ("out", 301, 0, 10, 0),
        ("lost", 301, 0, 1, 0),  # CPU 0 lost events
        ("in", 301, 0, 20, 0),
        ("entry", 301, 0, 1, 0),  # unpaired now
        ("entry", 302, 1, 1, 0),
        ("exit", 301, 2, 1, 0),
        ("lost", 301, 2, 1, 0),
        ("entry", 301, 0, 1, 0),
    ]
    every_cut(tmp_path, steps)


def test_thread_exits_and_filters_across_the_cut(tmp_path):
    steps = [
        ("exit", 301, 0, 1, 0),
        ("exit", 302, 0, 1, 0),
        ("mmio", 301, 0, 1, 0),
        ("pexit", 301, 0, 1, 0),  # abandoned
        ("exit", 301, 2, 1, 0),
        ("entry", 301, 0, 1, 0),
        ("exit", 302, 0, 1, 0),  # unfinished
        ("entry", 302, 0, 1, 0),
    ]
    every_cut(tmp_path, steps)
    every_cut(tmp_path, steps, tids=[302])


def test_x86_numbers_after_a_cut_take_the_isa_of_the_names_before_it(tmp_path):
    """The range after the cut meets a number before any name: it is read again with the isa."""
    steps = [("exit", 301, 4, 1, 0), ("entry", 301, 0, 1, 0), ("exit", 301, 2, 1, 0), ("entry", 301, 0, 1, 0)]
    text = render(steps, "ftrace", "x86").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    one = read_stream(io.BytesIO(text), layout="x86")
    cut = text.index(b"reason 0x1234")
    cut = text.rindex(b"\n", 0, cut) + 1
    got = stitched(path, [cut], layout="x86")
    assert got.snapshot == one.snapshot
    assert {k.detail for k in got.snapshot.stats} == {ISA_SVM}  # npf named it, before the cut
    assert read_trace(str(path), offsets=[cut], jobs=2, layout="x86").snapshot == one.snapshot


def test_malformed_line_numbers_are_those_of_the_whole_file(tmp_path):
    steps = [("exit", 301, 0, 1, 0), ("bad", 301, 0, 0, 0), ("entry", 301, 0, 1, 0)] * 4
    text = render(steps, "ftrace", "arm64").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    starts = line_starts(path)
    got = read_trace(str(path), offsets=[starts[5], starts[9]], jobs=3)
    assert got.health.malformed_lines == [4, 7, 10, 13]
    assert got.health == read_trace(str(path)).health


def test_plan_reads_compressed_stdin_and_small_files_in_one_process(tmp_path, monkeypatch):
    text = render([("exit", 301, 0, 1, 0), ("entry", 301, 0, 1, 0)] * 50, "ftrace", "arm64").encode()
    plain = tmp_path / "t.trace"
    plain.write_bytes(text)
    packed = tmp_path / "t.trace.gz"
    packed.write_bytes(gzip.compress(text))
    assert parallel.plan("-", 2) is None
    assert parallel.plan(str(packed), 2) is None
    assert parallel.plan(str(plain), 1) is None
    assert parallel.plan(str(plain), None) is None  # automatic: far below MIN_RANGE per range
    planned = parallel.plan(str(plain), 3)
    assert planned is not None
    ranges, processes = planned
    assert processes == 3 and len(ranges) == 3 * parallel.PARTS_PER_JOB
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(text[a - 1 : a] == b"\n" for a, _ in ranges[1:])
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    want = report_json(str(packed), "--jobs", "1")

    def refused(*args, **kw):
        raise AssertionError("read in parallel")

    monkeypatch.setattr(parallel, "read_parallel", refused)
    assert report_json(str(packed), "--jobs", "4") == want


def test_a_worker_error_is_one_line(tmp_path, monkeypatch):
    text = render([("exit", 301, 0, 1, 0), ("entry", 301, 0, 1, 0)] * 50, "ftrace", "arm64").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    real = parallel.read_range

    me = os.getpid()

    def failing(*args, **kw):
        if os.getpid() != me:  # in the workers
            raise MemoryError
        time.sleep(0.2)  # the parent leaves parts to the worker
        return real(*args, **kw)

    monkeypatch.setattr(parallel, "read_range", failing)
    rc, out, err = report_json(str(path), "--jobs", "2")
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "out of memory" in err and "bytes" in err


def test_a_worker_that_dies_is_one_line(tmp_path, monkeypatch):
    text = render([("exit", 301, 0, 1, 0), ("entry", 301, 0, 1, 0)] * 50, "ftrace", "arm64").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    real = parallel.read_range

    me = os.getpid()

    def dying(*args, **kw):
        if os.getpid() != me:
            os._exit(9)
        time.sleep(0.2)  # the parent leaves parts to the worker
        return real(*args, **kw)

    monkeypatch.setattr(parallel, "read_range", dying)
    rc, out, err = report_json(str(path), "--jobs", "2")
    assert rc != 0 and out == "" and err.count("\n") == 1 and "exit code 9" in err and "Traceback" not in err


CTRL_C = r"""
import os, sys, time
sys.path.insert(0, %(src)r)
from kvmexit.sources.trace import parallel
real = parallel.read_range
me = os.getpid()
def slow(*args, **kw):
    if os.getpid() != me:
        os.write(1, ("worker " + str(os.getpid()) + "\n").encode())  # one write: they share the pipe
        time.sleep(60)
    else:
        os.write(1, b"parent\n")
        time.sleep(0.5)  # the parent leaves parts to the workers
    return real(*args, **kw)
parallel.read_range = slow
from kvmexit.cli import main
sys.exit(main(["report", "--jobs", "3", %(path)r]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method and /proc are Linux's")
def test_ctrl_c_leaves_no_worker_behind(tmp_path):
    text = render([("exit", 301, 0, 1, 0), ("entry", 301, 0, 1, 0)] * 50, "ftrace", "arm64").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    src = str(Path(__file__).resolve().parents[2] / "src")
    p = subprocess.Popen(
        [sys.executable, "-c", CTRL_C % {"src": src, "path": str(path)}],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None
    workers = []
    deadline = time.monotonic() + 30
    while len(workers) < 2 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("worker"):
            workers.append(int(line.split()[1]))
    assert len(workers) == 2, (workers, p.poll())
    os.killpg(p.pid, signal.SIGINT)  # as the terminal does: the whole process group
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "Traceback" not in err
    for pid in workers:
        # Its pipe closes early in its exit: give the rest of the exit a moment.
        until = time.monotonic() + 5
        while not _zombie_or_gone(pid) and time.monotonic() < until:
            time.sleep(0.05)
        assert _zombie_or_gone(pid), "worker %d left behind" % pid


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] in "ZX"
    except OSError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_with_a_parent_killed_outright(tmp_path):
    """SIGKILL leaves the parent no chance to end its workers: the kernel does (PR_SET_PDEATHSIG)."""
    text = render([("exit", 301, 0, 1, 0), ("entry", 301, 0, 1, 0)] * 50, "ftrace", "arm64").encode()
    path = tmp_path / "t.trace"
    path.write_bytes(text)
    src = str(Path(__file__).resolve().parents[2] / "src")
    p = subprocess.Popen(
        [sys.executable, "-c", CTRL_C % {"src": src, "path": str(path)}],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None
    workers: List[int] = []
    deadline = time.monotonic() + 30
    while len(workers) < 2 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("worker"):
            workers.append(int(line.split()[1]))
    assert len(workers) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    for pid in workers:
        until = time.monotonic() + 10
        while not _zombie_or_gone(pid) and time.monotonic() < until:
            time.sleep(0.05)
        assert _zombie_or_gone(pid), "worker %d outlived its parent" % pid
