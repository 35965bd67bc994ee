"""Checks shared by the CLI tests: one-line errors, and the outside tools a test needs."""

from __future__ import annotations

import os
import shutil

import pytest


def one_error_line(proc) -> str:
    """The single stderr line of a failed command (no traceback), for the tests to read."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def required_binary(name: str, hint: str) -> str:
    """The path of ``name``; skip without it, or fail in CI (KVMEXIT_REQUIRE_BPF=1)."""
    found = shutil.which(name)
    if not found:
        if os.environ.get("KVMEXIT_REQUIRE_BPF") == "1":
            pytest.fail("KVMEXIT_REQUIRE_BPF=1 but %s is not installed (scripts/setup.sh)" % name)
        pytest.skip("%s is not installed (%s)" % (name, hint))
    return found
