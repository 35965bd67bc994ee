"""``kvmexit --vm NAME`` as a person runs it, before the VM starts: the real command, with exits
driven through its attached programs by fake VMMs (tests/fake_kvm.py) that start afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_kvm import FakeVmm, prog_fds_of, write_tracefs

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
EC_WFX, EC_HVC64, EC_SYS64 = 0x01, 0x16, 0x18
#: Names no other test on this machine uses (others run fake VMMs named web01 meanwhile).
WEB, DB = "web-%d" % os.getpid(), "db-%d" % os.getpid()

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]


def test_vm_started_after_kvmexit_is_reported_and_another_is_left_out(tmp_path):
    tracefs = write_tracefs(tmp_path / "tracefs")
    cmd = [sys.executable, "-m", "kvmexit", "--tracefs", str(tracefs), "--vm", WEB, "--json", "--by", "thread"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first == "kvmexit: no VM named %s runs yet: traced from its first exit when it starts\n" % WEB
        assert proc.stderr.readline().startswith("kvmexit: tracing")
        fds = prog_fds_of(proc.pid)
        other = FakeVmm(fds, [(0, EC_WFX, 4, 0, 0)], DB)
        web = FakeVmm(fds, [(0, EC_HVC64, 7, 0, 0), (1, EC_SYS64, 3, 0, 0)], WEB)
        time.sleep(0.5)  # the loop handles the notifications
        web.again()
        other.again()
        for vmm in (web, other):
            vmm.close()
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = json.loads(out)["rows"]
    got: dict = {}
    for r in rows:  # each round's vCPUs are new threads: one row each
        got[r["vm"], r["vcpu"], r["reason"]] = got.get((r["vm"], r["vcpu"], r["reason"]), 0) + r["count"]
    assert got == {(WEB, 0, "HVC64"): 14, (WEB, 1, "SYS64"): 6}
    assert {r["tgid"] for r in rows} == {web.pid}
    # The other's first exit always comes before its verdict (traced, then removed and counted); the
    # rest of its first round may too, depending on when the loop handled the notification; its
    # second round comes after (never traced).
    m = re.search(r"kvmexit: --vm: left out (\d+) exits of other VMs and 0 of processes that ended before", err)
    assert m and 1 <= int(m.group(1)) <= 4, err
