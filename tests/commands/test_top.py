"""``kvmexit top`` as a person uses it: in a terminal (tmux), keys sent with send-keys, the
screen read with capture-pane. The command attaches kvmexit's arm64 programs as usual (fake
format files); fake VMMs send exits through those very programs (BPF_PROG_TEST_RUN, by id);
the rows on screen are compared with the kernel's stats map of the top process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from cli_checks import required_binary
from fake_kvm import FakeVmm, prog_fds_of, write_tracefs

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

ROOT = Path(__file__).resolve().parents[2]
EC_WFX, EC_HVC64, EC_SYS64, EC_DABT_LOW = 0x01, 0x16, 0x18, 0x24


class Terminal:
    """``kvmexit top`` in a private tmux server (its own socket), 150x30, started by a shell
    that prints top's exit status when it ends (the shell reaps it, not tmux)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmux = required_binary("tmux", "apt-get install tmux")
        # One server per terminal: a socket name reused right after kill-server can meet the
        # old server on its way out ("server exited unexpectedly").
        self.socket = "kvmexit-test-%d-%s" % (os.getpid(), os.urandom(4).hex())
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g status off\n")
        tracefs = write_tracefs(tmp_path / "tracefs")
        cmd = [sys.executable, "-m", "kvmexit", "top", "--tracefs", str(tracefs), *args]
        shell = '"$@"; echo "top exited with status $?"; exec sleep 600'
        self.run(
            "-f", str(conf), "new-session", "-d", "-x", "150", "-y", "30",
            "-e", "PYTHONPATH=%s" % (ROOT / "src"), "-e", "TERM=xterm", "sh", "-c", shell, "sh", *cmd,
        )  # fmt: skip
        shell_pid = int(self.run("display", "-p", "#{pane_pid}").strip())
        self.wait_for(lambda s: "kvmexit top:" in s, timeout=120)
        children = Path("/proc/%d/task/%d/children" % (shell_pid, shell_pid)).read_text().split()
        self.pid = int(children[0])

    def run(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        for k in keys:
            self.run("send-keys", k)
            time.sleep(0.2)  # one key per read, like a person

    def wait_for(self, cond: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if cond(s):
                return s
            if (self.exited_in(s) and not cond(s)) or time.monotonic() > deadline:
                raise AssertionError("screen never matched:\n" + s)
            time.sleep(0.2)

    def exited(self) -> bool:
        return "top exited with status" in self.screen()

    def exit_status(self, timeout: float = 30.0) -> int:
        """top's exit status as its shell saw it (128+N: killed by signal N)."""
        screen = self.wait_for(self.exited_in, timeout)
        return int(screen.split("top exited with status ", 1)[1].split()[0])

    @staticmethod
    def exited_in(screen: str) -> bool:
        return "top exited with status" in screen

    def close(self) -> None:
        path = subprocess.run(
            [self.tmux, "-L", self.socket, "display", "-p", "#{socket_path}"], capture_output=True, text=True
        ).stdout.strip()
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)
        if path.endswith(self.socket):  # tmux 3.3 leaves the socket file of a killed server
            try:
                os.unlink(path)
            except OSError:
                pass


def rows(screen: str, header: str) -> List[List[str]]:
    """The table under the header line starting with ``header``, split into cells."""
    lines = screen.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    out = []
    for ln in lines[start + 1 :]:
        if not ln.strip() or ln.startswith("q quit"):
            break
        out.append(ln.split())
    return out


def by(counts: Counter, field: Callable[[Tuple[int, ...]], object]) -> Dict[object, int]:
    out: Dict[object, int] = {}
    for key, n in counts.items():
        out[field(key)] = out.get(field(key), 0) + n
    return out


@pytest.fixture
def top(tmp_path):
    term = Terminal(tmp_path, "-d", "0.5")
    yield term
    term.close()


def test_rows_match_the_kernel_maps_through_drill_filter_group_and_pause(top):
    fds = prog_fds_of(top.pid)
    web = FakeVmm(fds, [(0, EC_HVC64, 30, 0, 0), (1, EC_WFX, 5, 400_000, 0.002), (1, EC_SYS64, 4, 0, 0)], "web01")
    db = FakeVmm(fds, [(0, EC_DABT_LOW, 12, 0, 0)], "db02")
    time.sleep(1.0)  # top names VMs while they run (its loop polls every 50 ms)
    web.close()
    db.close()
    # The truth is the plan sent (39 and 12 exits): the kernel maps cannot be read for it, since
    # a refresh folds the slots of exited vCPU threads into top's user-space totals and frees them.

    top.keys("c")  # totals since start: what the maps hold, whatever the refresh timing
    screen = top.wait_for(lambda s: "totals since start" in s and "db02" in s and " 39" in s)
    table = rows(screen, "VM ")
    assert [(r[0], int(r[1]), int(r[-1])) for r in table] == [("web01", web.pid, 39), ("db02", db.pid, 12)]
    assert [r[3] for r in table] == ["%.1f" % (100 * 39 / 51), "%.1f" % (100 * 12 / 51)]  # %EXITS
    assert "51 exits: 51 paired, 0 open, 0 unfinished" in screen

    top.keys("Enter")  # into web01: its vCPUs
    screen = top.wait_for(lambda s: "view: all > web01" in s)
    table = rows(screen, "VM ")
    assert sorted((r[0], int(r[1]), int(r[-1])) for r in table) == [("web01", 0, 30), ("web01", 1, 9)]
    assert len({int(r[2]) for r in table}) == 2  # two threads

    top.keys("Down", "Enter")  # into vCPU 1: its reasons
    screen = top.wait_for(lambda s: "view: all > web01 > vCPU 1" in s)
    table = {r[0]: r for r in rows(screen, "REASON")}
    assert {name: int(r[-1]) for name, r in table.items()} == {"WFx": 5, "SYS64": 4}
    assert table["WFx"][6].endswith("%") and int(table["WFx"][6][:-1]) > 0  # HALT%: halts were reported
    assert table["SYS64"][6] == "0%"

    top.keys("BSpace", "BSpace")  # back to all VMs
    top.wait_for(lambda s: "view: all\n" in s + "\n" or "view: all " in s)
    top.keys("r", "W", "F", "x", "Enter")  # filter by reason
    screen = top.wait_for(lambda s: "filter: reason=WFx" in s)
    assert [(r[0], int(r[-1])) for r in rows(screen, "VM ")] == [("web01", 5)]
    top.keys("x", "4")  # clear filters, group by reason
    screen = top.wait_for(lambda s: "by reason" in s and "filter:" not in s)
    per_reason = {r[0]: int(r[-1]) for r in rows(screen, "REASON")}
    assert per_reason == {"HVC64": 30, "DABT_LOW": 12, "WFx": 5, "SYS64": 4}

    top.keys("Space")  # pause: the screen keeps its numbers while exits go on
    top.wait_for(lambda s: "[PAUSED]" in s)
    more = FakeVmm(fds, [(0, EC_HVC64, 7, 0, 0)], "web01")
    more.close()
    time.sleep(1.5)  # three refresh periods
    assert {r[0]: int(r[-1]) for r in rows(top.screen(), "REASON")}["HVC64"] == 30
    top.keys("Space")
    screen = top.wait_for(lambda s: "[PAUSED]" not in s and " 37" in s)
    assert {r[0]: int(r[-1]) for r in rows(screen, "REASON")}["HVC64"] == 37

    top.keys("q")
    assert top.exit_status() == 0
    assert top.run("display", "-p", "#{alternate_on}").strip() == "0"  # terminal restored


def test_interval_mode_shows_rates(tmp_path):
    """EXITS/S x the interval's length is the exits sent in it (a burst may straddle two)."""
    term = Terminal(tmp_path, "-d", "2")
    try:
        fds = prog_fds_of(term.pid)
        vmm = FakeVmm(fds, [(0, EC_HVC64, 20, 0, 0)], "web01")
        time.sleep(0.3)
        vmm.close()
        seen: Dict[str, float] = {}  # header (time and length of the interval) -> exits in it
        deadline = time.monotonic() + 30
        while sum(seen.values()) < 19.5 and time.monotonic() < deadline:
            screen = term.screen()
            row = next((r for r in rows(screen, "VM ") if r[0] == "web01"), None)
            if row is not None and row[2] != "0.0":
                seconds = float(screen.split("last ", 1)[1].split("s", 1)[0])
                assert row[3] == "100.0"
                seen[screen.splitlines()[0]] = float(row[2]) * seconds
            time.sleep(0.2)
        assert 1 <= len(seen) <= 2
        assert all(abs(n - round(n)) < 0.2 for n in seen.values()), seen  # whole exits, within rounding
        assert sum(round(n) for n in seen.values()) == 20
    finally:
        term.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_and_resize_leave_cleanly(top, sig):
    top.run("resize-window", "-x", "90", "-y", "16")
    screen = top.wait_for(lambda s: len(s.splitlines()) == 16 and s.splitlines()[-1].startswith("q quit"))
    assert max(len(ln) for ln in screen.splitlines()) <= 90
    assert not top.exited()
    os.kill(top.pid, sig)
    assert top.exit_status() == 0
    assert top.run("display", "-p", "#{alternate_on}").strip() == "0"
    assert "Traceback" not in top.screen()


def test_without_a_terminal_it_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kvmexit", "top"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "kvmexit top: error: top needs a terminal (hint: use `kvmexit -i SECS` for a scrolling or logged view)"
    )


def test_split_guest_and_sub_columns_from_the_kernel_and_on_eighty_columns(tmp_path):
    """``top --split --sub`` attached for real (sched_switch host-wide): a fake vCPU sleeps 20 ms
    inside each HVC64 exit, so nearly all of that time is BLOCKED% (off CPU asleep, not halted);
    EXIT% is there; u unfolds a SUB column (these exits have no sub-reason event: '-'); on 80
    columns the table still fits, with its identity and the split kept."""
    term = Terminal(tmp_path, "-d", "0.5", "--split", "--sub", "--by", "reason")
    try:
        fds = prog_fds_of(term.pid)
        vmm = FakeVmm(fds, [(0, EC_HVC64, 5, 0, 0.02), (1, EC_SYS64, 4, 0, 0)], "web01")
        vmm.close()
        term.keys("c")
        screen = term.wait_for(lambda s: "totals since start" in s and "HVC64" in s and "SYS64" in s)
        head = next(ln for ln in screen.splitlines() if ln.startswith("REASON"))
        assert head.split()[:2] == ["REASON", "SUB"]  # --sub: unfolded from the start
        assert head.split()[-7:] == ["HALT%", "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%", "TOTAL"]
        table = {r[0]: dict(zip(head.split(), r)) for r in rows(screen, "REASON")}
        assert table["HVC64"]["SUB"] == "-" and table["HVC64"]["TOTAL"] == "5"
        assert int(table["HVC64"]["BLOCKED%"][:-1]) >= 90, screen  # 20 ms asleep in each exit of ~20 ms
        assert table["HVC64"]["HALT%"] == "0%" and table["HVC64"]["EXIT%"].endswith("%")
        term.keys("u")  # folded: no SUB column
        screen = term.wait_for(lambda s: any(ln.startswith("REASON ") and " SUB " not in ln for ln in s.splitlines()))
        term.run("resize-window", "-x", "80", "-y", "24")
        term.keys("u", "3")  # by thread, sub-reasons unfolded: the widest table
        screen = term.wait_for(lambda s: "by thread + sub" in s and len(s.splitlines()[0]) <= 80)
        lines = screen.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("VM "))
        assert all(len(ln) <= 79 for ln in lines[start:] if not ln.startswith("q quit"))
        head = lines[start].split()
        assert head[:4] == ["VM", "VCPU", "REASON", "SUB"]
        assert head[-6:] == ["HALT%", "KERN%", "VMM%", "PRE%", "BLK%", "EXIT%"]
        term.keys("q")
        assert term.exit_status() == 0
    finally:
        term.close()
