"""``kvmexit record``: a private tracefs instance, removed on every exit path.

Needs root and tracefs with the kvm events (they exist here even when no guest runs); skips
with the reason otherwise. The global buffer's tracing_on and kvm event switches must be left
exactly as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmexit.errors import NotRoot, TracepointsMissing

ROOT = Path(__file__).resolve().parent.parent.parent
TRACEFS = "/sys/kernel/tracing"
INSTANCES = os.path.join(TRACEFS, "instances")
GLOBAL_FILES = [
    "tracing_on",
    "events/kvm/kvm_exit/enable",
    "events/kvm/kvm_entry/enable",
    "options/record-tgid",
    "buffer_size_kb",
]


def why_not() -> str:
    if os.geteuid() != 0:
        return "not root"
    if not os.path.isdir(INSTANCES):
        return "tracefs with instances not mounted at %s" % TRACEFS
    if not os.path.exists(os.path.join(TRACEFS, "events", "kvm", "kvm_exit", "format")):
        return "no kvm tracepoints"
    return ""


needs_tracefs = pytest.mark.skipif(bool(why_not()), reason="needs root and tracefs with kvm events: " + why_not())


def global_state():
    out = {}
    for rel in GLOBAL_FILES:
        try:
            with open(os.path.join(TRACEFS, rel)) as f:
                out[rel] = f.read()
        except OSError:
            out[rel] = None
    return out


def ours(pid: int):
    try:
        return [d for d in os.listdir(INSTANCES) if d.startswith("kvmexit-%d-" % pid)]
    except OSError:
        return []


def record(*args, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "kvmexit", "record", *args],
        cwd=str(ROOT / "src"),
        stderr=subprocess.PIPE,
        **kw,
    )


@needs_tracefs
@pytest.mark.parametrize("duration", [("-d", "0.5"), ("0.5",)])
def test_duration_records_and_cleans_up(tmp_path, duration):
    before = global_state()
    out = tmp_path / "vm.trace"
    p = record("-o", str(out), *duration, "--buffer-size", "1024")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert ours(p.pid) == []
    assert global_state() == before
    first = out.read_text().splitlines()[0]
    assert first.startswith("# kvmexit record: layout=")
    assert "kvm_exit,kvm_entry" in first
    # thread exits too, so report can tell an exit abandoned by its thread from an open one
    assert "sched:sched_process_exit" in first.split("events=")[1].split()[0].split(",")
    names = json.loads((tmp_path / "vm.trace.names.json").read_text())
    assert names["layout"] in ("x86", "arm64", "arm64-4.19", "arm64-openeuler-4.19", "arm64-openeuler-5.10")
    assert "kvm_exit" in names["formats"]
    assert b"no events lost" in err


@needs_tracefs
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_and_cleans_up(tmp_path, sig):
    before = global_state()
    out = tmp_path / "vm.trace"
    p = record("-o", str(out))
    try:
        _signal_case(p, sig, out, before)
    finally:
        if p.poll() is None:  # a failed assertion must not leave a recorder (and its instance) behind
            p.terminate()
            p.wait(timeout=20)


def _signal_case(p, sig, out, before):
    inst = os.path.join(INSTANCES, wait_tracing(p, out))
    assert open(os.path.join(inst, "events/kvm/kvm_exit/enable")).read().strip() == "1"  # in the instance only
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert signal.Signals(sig).name.encode() in err
    assert ours(p.pid) == []
    assert not os.path.exists(inst)
    assert global_state() == before
    assert out.exists()


@needs_tracefs
def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "vm.trace"
    out.write_text("precious\n")
    p = record("-o", str(out), "-d", "0.2")
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert len(err.splitlines()) == 1 and b"already exists" in err and b"--force" in err
    assert out.read_text() == "precious\n"
    assert ours(p.pid) == []
    p = record("-o", str(out), "-d", "0.2", "--force")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert out.read_text().startswith("# kvmexit record")


@needs_tracefs
def test_recorded_text_is_read_by_report(tmp_path):
    """No guest runs here, so record a busy non-kvm event too: report must account for every
    real line (none malformed) and say there are no KVM events."""
    out = tmp_path / "busy.trace.gz"
    p = record("-o", str(out), "-d", "0.5", "--event", "sched:sched_switch")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    from kvmexit.errors import BadTrace
    from kvmexit.sources.trace import read_trace

    with pytest.raises(BadTrace) as e:
        read_trace(str(out))
    msg = str(e.value)
    assert "no KVM exit/entry events" in msg and " 0 malformed" in msg
    assert ours(p.pid) == []


@needs_tracefs
def test_split_records_its_events_on_the_monotonic_clock(tmp_path):
    """--split: sched_switch and kvm_userspace_exit recorded (named in the header), the instance on
    trace_clock mono while it records (the clock of kvm_vcpu_wakeup's halt time), every line read."""
    out = tmp_path / "split.trace"
    p = record("-o", str(out), "-d", "1", "--split")
    deadline = time.monotonic() + 20
    clock = ""
    while p.poll() is None and time.monotonic() < deadline and "[mono]" not in clock:
        for inst in ours(p.pid):
            try:
                with open(os.path.join(INSTANCES, inst, "trace_clock")) as f:
                    clock = f.read()
            except OSError:
                pass
        time.sleep(0.05)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "[mono]" in clock, clock
    header = out.read_text().splitlines()[0]
    assert "sched:sched_switch" in header and "kvm:kvm_userspace_exit" in header, header
    from kvmexit.errors import BadTrace
    from kvmexit.sources.trace import read_trace

    with pytest.raises(BadTrace) as e:  # no guest runs here: switches only, all of them well-formed
        read_trace(str(out))
    assert " 0 malformed" in str(e.value)
    assert ours(p.pid) == []


@needs_tracefs
def test_split_and_sub_name_each_event_once(tmp_path):
    """--split --sub: kvm_userspace_exit, which both record, is enabled and named in the header once."""
    out = tmp_path / "both.trace"
    p = record("-o", str(out), "-d", "0.3", "--split", "--sub", "--buffer-size", "1024")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    events = out.read_text().splitlines()[0].split("events=")[1].split()[0].split(",")
    names = [e.split(":")[-1] for e in events]
    assert len(names) == len(set(names)), events
    assert "kvm_userspace_exit" in names and "sched:sched_switch" in events, events
    assert ours(p.pid) == []


def args(**kw):
    ns = argparse.Namespace(
        output="x",
        duration=0.1,
        duration_option=None,
        buffer_size=64,
        force=False,
        no_names=False,
        event=[],
        split=False,
    )
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_not_root(monkeypatch):
    from kvmexit.commands import record as rec

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRoot):
        rec.run(args())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (checked before tracefs)")
def test_missing_kvm_tracepoints(tmp_path):
    from kvmexit.commands import record as rec

    (tmp_path / "events").mkdir()
    (tmp_path / "instances").mkdir()
    with pytest.raises(TracepointsMissing):
        rec.run(args(output=str(tmp_path / "o")), tracefs=str(tmp_path))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [("0",), ("-d", "-1"), ("--buffer-size", "0")])
def test_non_positive_numbers_are_refused(bad, tmp_path):
    p = record("-o", str(tmp_path / "x.trace"), *bad)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and b"Traceback" not in err and b"error: argument" in err
    assert not (tmp_path / "x.trace").exists()


# -- issue 10: write errors, stale instances, exclusive creation, refused set-ups ----------------------


def one_error_line(err: bytes) -> str:
    lines = err.decode().splitlines()
    assert len(lines) == 1 and b"Traceback" not in err, err
    return lines[0]


@needs_tracefs
@pytest.mark.parametrize(
    "bad,message",
    [(("--buffer-size", "999999999"), "Cannot allocate memory"), (("--event", "nosuch:event"), "no tracepoint")],
    ids=["enomem", "no-event"],
)
def test_refused_set_up_leaves_no_file(tmp_path, bad, message):
    """Before: an ENOMEM traceback or an error, and a 0-byte FILE that made the retry fail."""
    out = tmp_path / "vm.trace"
    p = record("-o", str(out), "-d", "0.2", *bad)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and message in one_error_line(err)
    assert list(tmp_path.iterdir()) == []
    assert ours(p.pid) == []


@needs_tracefs
@pytest.mark.parametrize("which", ["trace", "names"])
@pytest.mark.parametrize("force", [False, True])
def test_symlink_is_never_written_through(tmp_path, which, force):
    """Before: the names file followed a symlink planted in a shared directory (root then wrote
    the link's target)."""
    out = tmp_path / "vm.trace"
    link = out if which == "trace" else tmp_path / "vm.trace.names.json"
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link.symlink_to(target)
    p = record("-o", str(out), "-d", "0.2", *(["--force"] if force else []))
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "symbolic link" in one_error_line(err)
    assert target.read_text() == "precious\n" and link.is_symlink()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["victim", link.name])


@needs_tracefs
def test_names_file_is_not_clobbered_without_force(tmp_path):
    out = tmp_path / "vm.trace"
    names = tmp_path / "vm.trace.names.json"
    names.write_text("precious\n")
    p = record("-o", str(out), "-d", "0.2")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "already exists" in one_error_line(err)
    assert names.read_text() == "precious\n" and not out.exists()
    p = record("-o", str(out), "-d", "0.2", "--force")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert json.loads(names.read_text())["kvmexit_names"] == 1


@needs_tracefs
def test_files_are_not_world_writable_under_umask_000(tmp_path):
    out = tmp_path / "vm.trace"
    p = record("-o", str(out), "-d", "0.2", preexec_fn=lambda: os.umask(0))
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "vm.trace.names.json").stat().st_mode & 0o777) == oct(0o644)


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 64 KiB mounted by the test, for full-disk cases."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_pages: int) -> None:
    """Fill the file system but ``leave_pages`` pages."""
    filler = mnt / "filler"
    fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, bytes(4096)) == 4096:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave_pages:
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave_pages * 4096))


@needs_tracefs
def test_full_disk_at_the_start_is_an_error_and_leaves_nothing(small_fs):
    """Before: "103 bytes ... no events lost", exit 0, and a 0-byte file (the error came at the
    final close and was swallowed)."""
    fill(small_fs, 0)
    out = small_fs / "vm.trace"
    p = record("-o", str(out), "-d", "0.2")
    _, err = p.communicate(timeout=30)
    line = one_error_line(err)
    assert p.returncode == 1 and "No space left on device" in line and "nothing was kept" in line
    assert sorted(f.name for f in small_fs.iterdir()) == ["filler"]
    assert ours(p.pid) == []


@needs_tracefs
def test_full_disk_while_recording_keeps_a_partial_file(small_fs):
    """A busy event fills 64 KiB within seconds. Before: an OSError traceback."""
    out = small_fs / "vm.trace"
    p = record("-o", str(out), "-d", "20", "--event", "sched:sched_switch", "--event", "syscalls:sys_enter_read")
    _, err = p.communicate(timeout=60)
    line = one_error_line(err)
    assert p.returncode == 1 and "No space left on device" in line, line
    partial = small_fs / "vm.trace.partial"
    assert "kept in %s" % partial in line
    assert partial.read_bytes().startswith(b"# kvmexit record: layout=")
    assert not out.exists() and not (small_fs / "vm.trace.names.json").exists()
    assert ours(p.pid) == []


@needs_tracefs
def test_names_file_on_a_full_disk_is_an_error(small_fs):
    """The trace (a header and a few host-wide process exec/exit lines: no guest runs here) fits in
    two pages, the names file (over 4 KiB: it holds the format files) does not fit in what is left.
    Before: an OSError traceback and a truncated names file. A busy host can fill the two pages with
    process lines first (then the trace is the file refused): that case is tried again."""
    fill(small_fs, 2)
    out = small_fs / "vm.trace"
    for _ in range(3):
        p = record("-o", str(out), "-d", "0.2")
        _, err = p.communicate(timeout=30)
        line = one_error_line(err)
        if "names.json" in line or p.returncode != 1:
            break
        for f in small_fs.iterdir():  # the trace overflowed: its kept .partial goes, the filler stays
            if f.name != "filler":
                f.unlink()
    assert p.returncode == 1 and "names.json" in line and "trace itself is complete" in line
    assert out.read_bytes().startswith(b"# kvmexit record: layout=")
    assert not (small_fs / "vm.trace.names.json").exists()


@needs_tracefs
def test_standard_output_refusing_data(tmp_path):
    with open("/dev/full", "wb") as full:
        p = record("-o", "-", "-d", "0.2", stdout=full)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "No space left on device" in one_error_line(err)
    assert ours(p.pid) == []


def wait_tracing(p, out) -> str:
    """The recorder's instance, once it records: its header is written only after the instance is
    set up (a new instance is visible, and traces, before its events are enabled)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and p.poll() is None:
        names = ours(p.pid)
        if names and out.exists() and out.read_bytes().startswith(b"# kvmexit record: layout="):
            return names[0]
        time.sleep(0.05)
    raise AssertionError("recorder %d never started tracing" % p.pid)


@needs_tracefs
def test_killed_recorder_is_readable_and_its_instance_is_removed_next_time(tmp_path):
    """SIGKILL leaves the instance tracing (nothing can run in the process). The trace must be
    readable (the header is flushed at once), and the next record removes the instance of the dead
    process, saying so, while a live recorder's instance is left alone."""
    killed = record("-o", str(tmp_path / "killed.trace"))
    alive = record("-o", str(tmp_path / "alive.trace"))
    try:
        stale = wait_tracing(killed, tmp_path / "killed.trace")
        live = wait_tracing(alive, tmp_path / "alive.trace")
        killed.kill()
        killed.communicate(timeout=20)
        assert os.path.isdir(os.path.join(INSTANCES, stale))  # the kernel keeps it
        assert (tmp_path / "killed.trace").read_bytes().startswith(b"# kvmexit record: layout=")
        p = record("-o", str(tmp_path / "next.trace"), "-d", "0.2")
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert ("removed tracefs instance %s" % stale).encode() in err
        assert not os.path.exists(os.path.join(INSTANCES, stale))
        assert os.path.isdir(os.path.join(INSTANCES, live))  # a live process's: untouched
    finally:
        for q in (killed, alive):
            if q.poll() is None:
                q.terminate()
                q.wait(timeout=20)
    assert ours(alive.pid) == []


#: A short-lived VMM: it creates a VM (KVM_CREATE_VM on /dev/kvm), lives ~0.2 s, and exits.
BRIEF_VMM = (
    "import fcntl, os, sys, time\n"
    "kvm = os.open('/dev/kvm', os.O_RDWR)\n"
    "vm = fcntl.ioctl(kvm, 0xAE01, 0)\n"
    "print(os.getpid(), flush=True)\n"
    "time.sleep(0.2)\n"
)


@needs_tracefs
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm to create a VM")
def test_a_vmm_living_under_a_second_is_named(tmp_path):
    """A VMM that starts while recording and lives 0.2 s, between two scans of /proc (every 5 s):
    its name is read when its exec reaches the trace, so the names file has it."""
    out = tmp_path / "brief.trace"
    p = record("-o", str(out), "-d", "3")
    try:
        wait_tracing(p, out)
        vmm = subprocess.run(
            [sys.executable, "-c", BRIEF_VMM, "-name", "guest=brief-vm,debug-threads=on"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert vmm.returncode == 0, vmm.stderr
        pid = vmm.stdout.strip()
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    names = json.loads((tmp_path / "brief.trace.names.json").read_text())
    assert names["vms"].get(pid) == "brief-vm", names["vms"]
    assert "sched:sched_process_exec" in out.read_text().splitlines()[0]


@needs_tracefs
def test_sub_records_the_sub_reason_events_this_kernel_has(tmp_path):
    from kvmexit.commands.live import detect_layout
    from kvmexit.sources.live import SUB_PROGRAMS

    out = tmp_path / "sub.trace"
    p = record("-o", str(out), "-d", "0.3", "--sub", "--buffer-size", "1024")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    events = out.read_text().splitlines()[0].split("events=")[1].split()[0].split(",")
    arch = detect_layout(None).arch
    from kvmexit.layouts import find_tracefs

    have = [e for e, _ in SUB_PROGRAMS[arch] if os.path.isdir(os.path.join(find_tracefs(), "events", "kvm", e))]
    assert have and [e for e in events if e in dict(SUB_PROGRAMS[arch])] == have
    for e, _ in SUB_PROGRAMS[arch]:
        if e not in have:
            assert ("this kernel has no kvm:%s" % e).encode() in err
    assert ours(p.pid) == []
