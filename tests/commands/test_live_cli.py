"""The ``kvmexit`` and ``kvmexit-aarch64`` commands, run as users run them (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from cli_checks import one_error_line

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "src/kvmexit/schema/report-v2.json").read_text())
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def kvmexit(*args: str, python=(sys.executable,), module="kvmexit", prefix=(), timeout=120):
    cmd = [*prefix, *python, "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def test_help_lists_real_examples():
    proc = kvmexit("-h")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    for example in ("kvmexit -i 1 -c 5", "--vm web01", "kvmexit report trace.txt", "--json 5"):
        assert example in proc.stdout


def test_compat_help_keeps_the_original_usage():
    proc = kvmexit("-h", module="kvmexit.commands.compat_aarch64")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: kvmexit-aarch64 [-h] [duration]")


def test_count_without_interval_is_refused():
    line = one_error_line(kvmexit("-c", "3"))
    assert "-c/--count needs -i/--interval" in line


def test_missing_tracepoints(tmp_path):
    (tmp_path / "events").mkdir()
    line = one_error_line(kvmexit("--tracefs", str(tmp_path), "1"))
    assert line.startswith("kvmexit: error: kvm:kvm_exit/kvm:kvm_entry tracepoints not found (hint: load the kvm")


def test_unknown_layout(tmp_path):
    for ev, body in (("kvm_exit", "\tfield:u64 mystery;\toffset:8;\tsize:8;\tsigned:0;\n"), ("kvm_entry", "")):
        d = tmp_path / "events" / "kvm" / ev
        d.mkdir(parents=True)
        (d / "format").write_text("name: %s\nformat:\n%s" % (ev, body))
    line = one_error_line(kvmexit("--tracefs", str(tmp_path), "1"))
    assert "unknown kvm_exit layout with fields mystery" in line


@pytest.mark.skipif(not shutil.which("setarch"), reason="setarch (util-linux) not installed")
def test_unsupported_architecture():
    line = one_error_line(kvmexit("1", prefix=("setarch", "i686")))
    assert line == "kvmexit: error: unsupported architecture i686 (hint: kvmexit supports aarch64 and x86_64 hosts)"


needs_kvm_tracefs = pytest.mark.usefixtures("bpf_env")


@needs_kvm_tracefs
def test_not_root():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    # Layout detection reads tracefs, which only root may read: give the format files to nobody.
    proc = kvmexit("1", prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    line = one_error_line(proc)
    assert "root" in line and line.startswith("kvmexit: error:")


@needs_kvm_tracefs
def test_bcc_missing():
    # -S: no site packages, so Debian's bcc module cannot be imported.
    line = one_error_line(kvmexit("1", python=(sys.executable, "-S")))
    assert line.startswith("kvmexit: error: the bcc Python module is not available")
    assert "python3-bpfcc" in line


@needs_kvm_tracefs
def test_headers_missing():
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) not installed")
    script = "mount -t tmpfs none /lib/modules && exec %s -m kvmexit 1" % sys.executable
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    line = one_error_line(proc)
    assert "kernel headers for %s not found" % os.uname().release in line
    assert "hint: install linux-headers" in line


def kvmexit_program_ids() -> set:
    listing = json.loads(subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, check=True).stdout)
    return {p["id"] for p in listing if p.get("name", "").startswith("kvmexit_")}


def program_ids_of(pid: int) -> set:
    """IDs of the BPF programs process ``pid`` holds open (from /proc/PID/fdinfo)."""
    ids = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) != "anon_inode:bpf-prog":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                ids.update(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
        except OSError:
            continue
    return ids


def released(proc, timeout=5.0) -> bool:
    """The programs ``proc`` loaded are gone (the kernel frees them after an RCU grace period).
    Only its own: other processes may run kvmexit at the same time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.program_ids & kvmexit_program_ids():
            return True
        time.sleep(0.05)
    return False


def start_tracing(*args: str, module="kvmexit"):
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    line = proc.stderr.readline()  # blocks until attached (or failed)
    assert line.startswith("kvmexit: tracing"), line + proc.stderr.read()
    proc.program_ids = program_ids_of(proc.pid)
    assert proc.program_ids and proc.program_ids <= kvmexit_program_ids(), "no kvmexit_* program loaded"
    return proc


@needs_kvm_tracefs
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_tracing_with_a_valid_report_and_detaches(sig):
    proc = start_tracing("--json")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["source"]["kind"] == "live"
    assert "kvmexit: no KVM exits traced" in err
    assert released(proc)


@needs_kvm_tracefs
def test_intervals_print_one_json_document_each_and_detach():
    proc = start_tracing("-i", "0.3", "-c", "3", "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert released(proc)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["interval"]["index"] for d in docs] == [0, 1, 2]
    for d in docs:
        jsonschema.validate(d, SCHEMA)


@needs_kvm_tracefs
def test_csv_and_text_views():
    csv_out = kvmexit("--csv", "0.2")
    assert csv_out.returncode == 0 and csv_out.stdout.startswith("time,tgid,tid,comm,vm,vcpu,reason,count")
    text = kvmexit("0.2")
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].split()[:5] == ["TGID", "TID", "VM", "VCPU", "REASON"]
    assert text.stdout.rstrip().splitlines()[-1].startswith("kvmexit: no KVM exits traced")


@needs_kvm_tracefs
def test_compat_front_end_prints_the_original_columns_and_detaches():
    proc = start_tracing(module="kvmexit.commands.compat_aarch64")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.splitlines()[0].split() == ["TGID", "TID", "COMM", "KVM_EXIT_REASON", "COUNT", "AVG_TIME(ns)"]
    assert released(proc)


@needs_kvm_tracefs
def test_ebpf_prints_the_program_with_its_defines():
    proc = kvmexit("--ebpf", "-p", "1")
    assert proc.returncode == 0
    assert proc.stdout.startswith("// cflags: -DLAYOUT_")
    assert "-DFILTER_TGID" in proc.stdout.splitlines()[0]
    assert "int kvmexit_exit(" in proc.stdout


@needs_kvm_tracefs
def test_a_vm_not_running_yet_is_waited_for():
    proc = kvmexit("--vm", "no-such-vm-here", "1")
    assert proc.returncode == 0, proc.stderr
    assert "kvmexit: no VM named no-such-vm-here runs yet: traced from its first exit when it starts" in proc.stderr


def test_fallback_example_when_live_tracing_is_impossible(tmp_path):
    (tmp_path / "events").mkdir()
    proc = kvmexit("--tracefs", str(tmp_path), "--fallback-example", "--by", "reason", "1")
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("kvmexit: showing the example trace shipped with kvmexit")
    assert "live tracing is not possible here: kvm:kvm_exit/kvm:kvm_entry tracepoints not found" in first
    assert proc.stdout.splitlines()[0].split()[0] == "REASON"
    assert "WFx" in proc.stdout


@needs_kvm_tracefs
def test_fallback_example_when_no_exit_occurs():
    """The README's promise: it says why on one line and reports on the example instead (no empty
    live report before it)."""
    proc = kvmexit("--fallback-example", "--json", "0.3")
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    if docs[0]["source"]["kind"] == "live" and docs[0]["totals"]["exits"]:
        pytest.skip("exits happened on this host while tracing: no fallback to check")
    assert len(docs) == 1 and docs[0]["source"]["kind"] == "trace" and docs[0]["source"]["example"] is True
    ready, note, *rest = proc.stderr.splitlines()
    assert ready.startswith("kvmexit: tracing")
    assert note.startswith("kvmexit: showing the example trace shipped with kvmexit")
    assert "no KVM exit occurred while tracing live (" in note
    assert all(line.startswith("kvmexit: ") and "exits:" in line for line in rest)  # the example's self-check


def test_fallback_example_is_one_report_not_intervals():
    proc = kvmexit("--fallback-example", "-i", "1")
    assert proc.returncode == 2
    assert "--fallback-example replaces one empty report" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args",
    [("0",), ("-1",), ("-i", "0"), ("-i", "1", "-c", "0"), ("--top", "0"), ("x",)],
)
def test_non_positive_numbers_are_refused_before_anything_runs(args):
    proc = kvmexit(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kvmexit: error: argument")


# -- arguments: refused before anything runs, one line each ------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("--max-threads", "0"), "argument --max-threads: 0: must be 1 to"),
        (("--max-keys", "0"), "argument --max-keys: 0: must be 1 to"),
        (("--max-keys", "99999999999"), "argument --max-keys: 99999999999: must be 1 to"),
        (("-t", "99999999999999999999"), "argument -t/--tid: 99999999999999999999: must be 1 to 4194304"),
        (("-p", "0"), "argument -p/--pid: 0: must be 1 to 4194304"),
        (("-T", "5,x"), "argument -T/--tids: not an integer: 'x'"),
        (("inf",), "argument duration: must be finite: 'inf'"),
        (("-i", "inf"), "argument -i/--interval: must be finite"),
        (("-v", "0"), "-v/--vcpu is bcc kvmexit's option, not kvmexit's: filter the vCPU's thread with -t TID"),
        (("--reason", "NOPE"), "argument --reason: no x86 exit is named 'NOPE'"),
        (("-c", "3"), "-c/--count needs -i/--interval"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message):
    if "--reason" in args and os.uname().machine != "x86_64":
        args, message = ("--reason", "NOPE"), "argument --reason: no arm64 exit is named 'NOPE'"
    proc = kvmexit(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kvmexit: error: " + message)


@pytest.mark.parametrize("command", ["exporter", "top"])
@pytest.mark.parametrize("option", ["--max-threads", "--max-keys"])
def test_every_live_command_bounds_its_map_sizes(command, option):
    """top and the exporter had their own unbounded copies of these options."""
    proc = kvmexit(command, option, "0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("kvmexit %s: error: argument %s: 0: must be 1 to" % (command, option))
    )


def test_the_exporter_sizes_its_sub_reason_map():
    from kvmexit.cli import exporter_parser

    args = exporter_parser().parse_args(["--sub", "--max-sub-keys", "1024"])
    assert args.sub and args.max_sub_keys == 1024


def test_a_misspelt_reason_gets_the_close_names():
    proc = kvmexit("report", "--example", "--reason", "wfi")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("no arm64 exit is named 'wfi' (hint: did you mean WFx?)")


def test_bcc_kvmexit_aliases_are_accepted():
    import argparse

    from kvmexit.commands import live

    parser = argparse.ArgumentParser()
    live.prepare_parser(parser)
    args = parser.parse_args(["-T", "5,6", "-t", "7", "-a", "3"])
    assert (args.tids, args.by, args.duration) == ([5, 6, 7], "thread", 3.0)
    assert parser.parse_args(["--by", "reason"]).by == "reason"


def test_tracefs_that_does_not_exist_is_named():
    line = one_error_line(kvmexit("--tracefs", "/nonexistent", "1"))
    assert line.startswith("kvmexit: error: no tracefs at /nonexistent (it has no events directory)")


@pytest.mark.parametrize(
    "args, named",
    [
        (("-p", "1"), "-p 1"),
        (("-T", "1,135"), "-t 1 -t 135"),  # 135 is the example's VMM process, not one of its threads
        (("--vm", "nope"), "--vm nope"),
        (("--reason", "HVC32"), "--reason HVC32"),
    ],
)
def test_a_report_filter_that_matches_nothing_says_so(args, named):
    proc = kvmexit("report", "--example", *args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "kvmexit report: error: no exit in the trace matches " + named


@needs_kvm_tracefs
def test_a_live_filter_naming_no_running_process_says_so():
    line = one_error_line(kvmexit("-p", "4194304", "-t", "4194303", "1"))
    assert line.startswith("kvmexit: error: no running process or thread matches -p 4194304 -t 4194303")


# -- signals and idle intervals ------------------------------------------------------------------


@needs_kvm_tracefs
@pytest.mark.parametrize("module", ["kvmexit", "kvmexit.commands.compat_aarch64"])
def test_sighup_ends_tracing_with_a_report(module):
    proc = start_tracing(module=module)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert any(line.split()[:2] == ["TGID", "TID"] for line in out.splitlines()), out
    assert "kvmexit: no KVM exits traced" in err + out


@needs_kvm_tracefs
def test_idle_intervals_say_why_once():
    proc = kvmexit("-i", "0.2", "-c", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 4
    assert proc.stderr.count("kvmexit: no KVM exits traced") == 1, proc.stderr


@needs_kvm_tracefs
def test_sub_reasons_are_traced_with_their_programs_and_detached():
    proc = start_tracing("--sub", "--json")
    listing = json.loads(subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, check=True).stdout)
    # this process's programs only (bpftool truncates names to 15 characters)
    sub_programs = [p["name"] for p in listing if p["id"] in proc.program_ids and p["name"].startswith("kvmexit_sub_")]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["by_sub"] is True and doc["schema"] == "kvmexit/2"
    assert sub_programs, "no kvmexit_sub_* program of this process"
    assert released(proc)


@needs_kvm_tracefs
def test_ebpf_with_sub_prints_the_sub_reason_defines():
    proc = kvmexit("--ebpf", "--sub")
    assert proc.returncode == 0
    flags = proc.stdout.splitlines()[0]
    assert "-DKVMEXIT_SUB" in flags and "-DSUB_KIND_SHIFT=56" in flags
    assert "int kvmexit_sub_mmio(" in proc.stdout


def test_sub_with_a_grouping_without_reason_is_a_usage_error():
    line = one_error_line(kvmexit("--sub", "--by", "vm", "1"))
    assert "no REASON to split" in line
