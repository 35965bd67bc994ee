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
    return subprocess.Popen(
        [sys.executable, "-m", "kvmexit", "record", *args],
        cwd=str(ROOT / "src"),
        stdout=subprocess.PIPE,
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
    deadline = time.monotonic() + 20
    while not ours(p.pid) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert ours(p.pid), "instance never appeared"
    inst = os.path.join(INSTANCES, ours(p.pid)[0])
    enable = os.path.join(inst, "events/kvm/kvm_exit/enable")
    while time.monotonic() < deadline and open(enable).read().strip() != "1":
        time.sleep(0.02)
    assert open(enable).read().strip() == "1"  # enabled in the instance only
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


def args(**kw):
    ns = argparse.Namespace(
        output="x", duration=0.1, duration_option=None, buffer_size=64, force=False, no_names=False, event=[]
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
