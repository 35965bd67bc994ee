"""bench/churn.py in the test command: a short run through the real programs must account for
every exit sent exactly once (pairs, or refused by a full map and counted), and sweep every start
slot of the exited threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "churn.py"


def test_churn_accounts_for_every_exit_and_sweeps_start_slots():
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--threads", "3000", "--batch", "500", "--max-keys", "1024"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary, accounting = proc.stdout.strip().splitlines()[-2:]
    assert "peak start-map entries 0," in summary
    # 3000 threads and a 1024-key map: whatever does not fit is refused and counted, never lost.
    assert accounting.startswith("exits sent 3000 = counted ") and accounting.endswith(": exact")
    counted, refused = (int(accounting.split(" = counted ")[1].split()[0]), int(accounting.split(" + ")[1].split()[0]))
    assert counted + refused == 3000
