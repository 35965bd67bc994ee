"""``kvmexit exporter``: its errors, the command attached for real, and a real Prometheus server
scraping it while exits are driven through the kernel's programs (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Dict, Tuple

import pytest

from cli_checks import one_error_line, required_binary
from fake_kvm import ARM64_FORMATS, FakeVmm, prog_fds_of, program_ids_of, write_tracefs

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

EC_WFX, EC_HVC64, EC_SYS64, EC_DABT_LOW = 0x01, 0x16, 0x18, 0x24


def kvmexit(*args: str, env=ENV, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "kvmexit", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


# -- errors ---------------------------------------------------------------------------------------


def test_missing_prometheus_client_is_one_line(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join((str(shadow), ENV["PYTHONPATH"])))
    line = one_error_line(kvmexit("exporter", env=env))
    assert line == (
        "kvmexit exporter: error: the exporter needs the prometheus_client Python module "
        "(hint: pip install 'kvmexit[exporter]', or apt-get install python3-prometheus-client)"
    )


def test_prometheus_client_missing_a_dependency_names_it(tmp_path):
    """Debian's prometheus_client imports python3-decorator: name what is missing, not the client."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "prometheus_client.py").write_text("import no_such_dependency_here\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join((str(shadow), ENV["PYTHONPATH"])))
    line = one_error_line(kvmexit("exporter", env=env))
    assert line.startswith(
        "kvmexit exporter: error: prometheus_client cannot be imported: No module named 'no_such_dependency_here'"
    )


@pytest.mark.parametrize(
    "listen, why",
    [("9479", "expected ADDR:PORT"), ("127.0.0.1:http", "not a port number"), ("127.0.0.1:70000", "out of range")],
)
def test_bad_listen_address(listen, why):
    proc = kvmexit("exporter", "--listen", listen)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert why in proc.stderr


def test_listen_parsing():
    from kvmexit.commands.exporter import parse_listen

    assert parse_listen("127.0.0.1:9479") == ("127.0.0.1", 9479)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen("0.0.0.0:1") == ("0.0.0.0", 1)


# -- the command, attached ------------------------------------------------------------------------


class Exporter:
    """``kvmexit exporter`` on the arm64 programs (fake format files), attached as usual."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        tracefs = write_tracefs(tmp_path / "tracefs")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvmexit",
                "exporter",
                "--tracefs",
                str(tracefs),
                "--listen",
                "127.0.0.1:%d" % self.port,
                *extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        if "serving" not in line:
            self.proc.kill()
            raise AssertionError("exporter did not start: %r %s" % (line, self.proc.stderr.read()))
        self.fds = prog_fds_of(self.proc.pid)

    def metrics(self) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = http_get("http://127.0.0.1:%d/metrics" % self.port)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def stop(self, sig: int = signal.SIGTERM) -> Tuple[int, str]:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_command_serves_what_the_kernel_counted_and_detaches(tmp_path, sig):
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    exporter = Exporter(tmp_path)
    try:
        assert {"kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup"} <= set(exporter.fds)
        assert set(program_ids_of(exporter.proc.pid).values()) >= {"kvmexit_exit", "kvmexit_entry"}
        vmm = FakeVmm(exporter.fds, [(0, EC_HVC64, 13, 0, 0), (0, EC_WFX, 5, 1000, 0), (1, EC_SYS64, 7, 0, 0)], "web01")
        vmm.close()
        got = exporter.metrics()
        assert got["kvmexit_exits_total", (("reason", "HVC64"), ("vcpu", "0"), ("vm", "web01"))] == 13
        assert got["kvmexit_exits_total", (("reason", "WFx"), ("vcpu", "0"), ("vm", "web01"))] == 5
        assert got["kvmexit_exits_total", (("reason", "SYS64"), ("vcpu", "1"), ("vm", "web01"))] == 7
        assert got["kvmexit_halted_seconds_total", (("reason", "WFx"), ("vcpu", "0"), ("vm", "web01"))] == 5000 / 1e9
        assert (
            got["kvmexit_tracing_info", (("arch", "arm64"), ("kernel", os.uname().release), ("layout", "arm64"))] == 1
        )
    finally:
        rc, err = exporter.stop(sig)
    assert rc == 0, err
    assert "programs detached" in err and "Traceback" not in err
    assert exporter.proc.returncode is not None  # exited: its programs went with its fds


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
def test_split_and_guest_time_are_served_with_the_exit_time_labels(tmp_path):
    """--split attached for real (sched_switch host-wide, kvm_userspace_exit): a fake vCPU sleeps
    20 ms inside each HVC64 exit, so that exit time is off CPU, blocked outside a halt; the parts
    served add up to the exit time of the same labels, and guest time is served beside them."""
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    exporter = Exporter(tmp_path, "--split")
    try:
        vmm = FakeVmm(exporter.fds, [(0, EC_HVC64, 5, 0, 0.02), (1, EC_SYS64, 4, 0, 0)], "web01")
        vmm.close()
        got = exporter.metrics()
    finally:
        rc, err = exporter.stop()
    assert rc == 0, err
    hvc = (("reason", "HVC64"), ("vcpu", "0"), ("vm", "web01"))
    sys64 = (("reason", "SYS64"), ("vcpu", "1"), ("vm", "web01"))
    parts = {
        (tuple(lb for lb in labels if lb[0] != "part"), dict(labels)["part"]): v
        for (name, labels), v in got.items()
        if name == "kvmexit_exit_part_seconds_total"
    }
    # A part whose event this kernel lacks is absent (and said on stderr), and then so is the kernel's.
    notes = " ".join(ln.split(" unknown: ", 1)[0] for ln in err.splitlines() if " unknown: cannot attach" in ln)
    unknown = {p for p in ("vmm", "preempt", "blocked") if "%s_ns" % p in notes}
    expected = {"vmm", "halt", "preempt", "blocked"} - unknown | (set() if unknown else {"kernel"})
    assert {p for _, p in parts} == expected, err
    assert "blocked" in expected  # this test needs sched_switch: the hosts it runs on have it
    assert parts[hvc, "blocked"] >= 5 * 0.02 and parts[hvc, "halt"] == 0
    for labels in (hvc, sys64):
        total = got["kvmexit_exit_seconds_total", labels]
        assert total >= parts[labels, "blocked"]
        if "kernel" in expected:
            assert math.isclose(sum(v for (lb, _), v in parts.items() if lb == labels), total, rel_tol=1e-9)
        assert got["kvmexit_guest_seconds_total", labels] > 0  # each exit but the thread's first had guest time
    assert {labels for labels, _ in parts} == {
        labels for name, labels in got if name == "kvmexit_exit_seconds_total"
    }  # the same label sets


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
def test_guest_alone_serves_guest_time_and_no_parts(tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    exporter = Exporter(tmp_path, "--guest")
    try:
        vmm = FakeVmm(exporter.fds, [(0, EC_HVC64, 3, 0, 0)], "web01")
        vmm.close()
        got = exporter.metrics()
    finally:
        rc, err = exporter.stop()
    assert rc == 0, err
    labels = (("reason", "HVC64"), ("vcpu", "0"), ("vm", "web01"))
    assert got["kvmexit_exits_total", labels] == 3
    assert got["kvmexit_guest_seconds_total", labels] > 0
    assert not any(name == "kvmexit_exit_part_seconds_total" for name, _ in got)


def test_the_exporter_takes_the_common_task_filters():
    """-p/-t bounded as live's, and -T as bcc kvmexit's; no --reason (a scrape has no view to filter)."""
    from kvmexit.cli import exporter_parser

    args = exporter_parser().parse_args(["-p", "7", "-t", "8", "-T", "9,10", "--vm", "web01", "--split"])
    assert (args.pids, args.tids, args.vms, args.split, args.guest) == ([7], [8, 9, 10], ["web01"], True, False)
    proc = kvmexit("exporter", "-p", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument -p/--pid: 0: must be 1 to 4194304 (a process or thread id)" in proc.stderr


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
def test_address_in_use_is_one_line(tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = kvmexit("exporter", "--tracefs", str(write_tracefs(tmp_path)), "--listen", "127.0.0.1:%d" % port)
    line = one_error_line(proc)
    assert line.startswith("kvmexit exporter: error: cannot listen on 127.0.0.1:%d: " % port), line


# -- a real Prometheus server ---------------------------------------------------------------------


class Prometheus:
    """A Prometheus server on loopback with its own config and data directory, scraping one target."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: kvmexit\n    static_configs:\n      - targets: ['%s']\n" % target
        )
        self.port = free_port()
        self.log = open(tmp_path / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                required_binary("prometheus", "apt-get install prometheus"),
                "--config.file=%s" % config,
                "--storage.tsdb.path=%s" % (tmp_path / "data"),
                "--web.listen-address=127.0.0.1:%d" % self.port,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": promql}))
        doc = json.loads(http_get(url))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def wait_for_scrape_after(self, t: float, timeout: float = 60.0):
        """All kvmexit_* series of the first scrape that started after ``t``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: %s" % Path(self.log.name).read_text()[-2000:])
            try:
                up = self.query('timestamp(up{job="kvmexit"}) > %f and up{job="kvmexit"} == 1' % t)
            except OSError:
                up = []
            if up:
                return self.query('{__name__=~"kvmexit_.*"}')
            time.sleep(0.3)
        raise AssertionError("no scrape after %f: %s" % (t, Path(self.log.name).read_text()[-2000:]))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def expected_series(doc) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """The series kvmexit should expose, computed from its JSON report (schema kvmexit/2) alone."""
    from kvmexit.model import HIST_SLOTS, bucket_bounds

    per: Dict[Tuple[str, str, str], Dict[str, object]] = defaultdict(
        lambda: {"count": 0, "pairs": 0, "ns": 0, "halt": 0, "hist": []}
    )
    for row in doc["rows"]:
        vm = row["vm"] if row["vm"] is not None else "tgid-%d" % row["tgid"]
        key = (vm, "" if row["vcpu"] is None else str(row["vcpu"]), row["reason"])
        acc = per[key]
        acc["count"] += row["count"]  # type: ignore[operator]
        acc["pairs"] += row["pairs"]  # type: ignore[operator]
        acc["ns"] += row["total_ns"]  # type: ignore[operator]
        acc["halt"] += row["halt_ns"]  # type: ignore[operator]
        acc["hist"] += row["hist"]  # type: ignore[operator]
    edges = [*sorted({bucket_bounds(s)[1] for s in range(HIST_SLOTS - 1)}), math.inf]
    out = {}
    for (vm, vcpu, reason), acc in per.items():
        # Prometheus drops empty labels: a thread that is no vCPU has no vcpu label there.
        labels = tuple((k, v) for k, v in (("reason", reason), ("vcpu", vcpu), ("vm", vm)) if v)
        out["kvmexit_exits_total", labels] = float(acc["count"])  # type: ignore[arg-type]
        out["kvmexit_exit_seconds_total", labels] = acc["ns"] / 1e9  # type: ignore[operator]
        out["kvmexit_halted_seconds_total", labels] = acc["halt"] / 1e9  # type: ignore[operator]
        out["kvmexit_exit_duration_seconds_count", labels] = float(acc["pairs"])  # type: ignore[arg-type]
        out["kvmexit_exit_duration_seconds_sum", labels] = acc["ns"] / 1e9  # type: ignore[operator]
        for edge in edges:
            le = "+Inf" if edge == math.inf else repr(edge / 1e9)
            n = sum(c for lo, hi, c in acc["hist"] if hi <= edge)  # type: ignore[attr-defined]
            out["kvmexit_exit_duration_seconds_bucket", (("le", le), *labels)] = float(n)
    t = doc["totals"]
    out["kvmexit_unpaired_entries_total", ()] = float(t["unpaired_entries"])
    out["kvmexit_map_full_total", (("map", "start"),)] = float(t["start_map_full"])
    out["kvmexit_map_full_total", (("map", "stats"),)] = float(t["stats_map_full"])
    out["kvmexit_abandoned_exits_total", ()] = float(t["abandoned"])
    out["kvmexit_unfinished_exits_total", ()] = float(t["unfinished"])
    out["kvmexit_open_exits", ()] = float(t["open"])
    return out


def as_series(result) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    out = {}
    for s in result:
        m = dict(s["metric"])
        name = m.pop("__name__")
        m.pop("job"), m.pop("instance")
        if "le" in m and m["le"] != "+Inf":
            m["le"] = repr(float(m["le"]))
        out[name, tuple(sorted(m.items()))] = float(s["value"][1])
    return out


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
def test_real_prometheus_scrapes_exactly_the_json_report_of_the_same_maps(tmp_path):
    """The exporter serves an arm64 live source opened here (programs loaded, not attached);
    two fake VMMs and this process send exits through the programs; a real Prometheus scrapes;
    every series it stored equals what kvmexit's JSON report of the same maps says."""
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    from bpf_testrun import test_run_raw
    from kvmexit.commands.exporter import SharedSource, serve
    from kvmexit.layouts import detect
    from kvmexit.model import build_report
    from kvmexit.reasons import label
    from kvmexit.sources.live import LiveSource
    from kvmexit.views import report_document

    source = LiveSource(detect(dict(ARM64_FORMATS)), attach=False).open()
    prom = None
    try:
        raw = source.bpf.RAW_TRACEPOINT
        fds = {fn: source.bpf.load_func(fn, raw).fd for fn in ("kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup")}
        port = free_port()
        shared = SharedSource(source)
        serve(shared, ("127.0.0.1", port), info={"arch": "arm64"})
        web = FakeVmm(
            fds, [(0, EC_HVC64, 31, 0, 0), (0, EC_WFX, 7, 250_000, 0.002), (1, EC_DABT_LOW, 11, 0, 0)], "web01"
        )
        db = FakeVmm(fds, [(0, EC_SYS64, 17, 0, 0), (2, EC_WFX, 3, 0, 0.02)], "db02")

        def unnamed_thread():  # this process: no -name, no vCPU thread name
            test_run_raw(fds["kvmexit_entry"], 0x1000)  # unpaired
            test_run_raw(fds["kvmexit_exit"], 2, EC_SYS64, 0x1000)  # unfinished: another exit follows
            test_run_raw(fds["kvmexit_exit"], 2, EC_HVC64, 0x1000)
            test_run_raw(fds["kvmexit_entry"], 0x1000)

        t = threading.Thread(target=unnamed_thread)
        t.start()
        t.join()
        test_run_raw(fds["kvmexit_exit"], 2, EC_WFX, 0x1000)  # still open: a gauge, and in exits_total
        shared.wait(0.2)  # what the command's loop does: new VMs are named while they run
        for vmm in (web, db):
            vmm.close()

        doc = report_document(build_report(source.snapshot(), label, group_by="thread"), {"kind": "live"})
        expected = expected_series(doc)
        assert doc["totals"]["exits"] == 31 + 7 + 11 + 17 + 3 + 2 + 1
        assert doc["totals"]["unpaired_entries"] == 1 and doc["totals"]["open"] == 1

        prom = Prometheus(tmp_path, "127.0.0.1:%d" % port)
        got = as_series(prom.wait_for_scrape_after(time.time()))
        diff = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        assert diff == {}, sorted(diff.items())[:20]
        assert set(expected) <= set(got)
        extra = {name for name, _ in set(got) - set(expected)}
        assert extra == {"kvmexit_lost_events_total", "kvmexit_halt_traced", "kvmexit_tracing_info"}
        assert got["kvmexit_exits_total", (("reason", "WFx"), ("vcpu", "2"), ("vm", "db02"))] == 3
        assert got["kvmexit_lost_events_total", ()] == 0

        # Counters move with the kernel: more exits, a later scrape.
        more = FakeVmm(fds, [(0, EC_HVC64, 19, 0, 0)], "web01")
        shared.wait(0.2)
        more.close()
        got = as_series(prom.wait_for_scrape_after(time.time()))
        assert got["kvmexit_exits_total", (("reason", "HVC64"), ("vcpu", "0"), ("vm", "web01"))] == 31 + 19
    finally:
        if prom is not None:
            prom.close()
        source.close()


def test_any_source_can_be_served_a_trace_too():
    """serve() takes any Source: the shipped example trace, scraped, counts its 843 exits."""
    pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    from kvmexit.commands.exporter import serve
    from kvmexit.commands.report import EXAMPLE_NAMES, EXAMPLE_TRACE
    from kvmexit.sources.trace import TraceSource

    port = free_port()
    serve(TraceSource(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES), ("127.0.0.1", port), info={"arch": "arm64"})
    text = http_get("http://127.0.0.1:%d/metrics" % port)
    exits = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("kvmexit_exits_total{")]
    assert sum(exits) == 843
