"""Headless Chromium for the HTML page tests: render a file, collect its console messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Tuple

import pytest


def require(what: str, why: str) -> None:
    """Skip where the page's tools are missing; fail instead in CI (KVMEXIT_REQUIRE_HTML=1)."""
    if os.environ.get("KVMEXIT_REQUIRE_HTML") == "1":
        pytest.fail("KVMEXIT_REQUIRE_HTML=1 but %s is missing: %s" % (what, why))
    pytest.skip("needs %s (scripts/setup.sh installs it): %s" % (what, why))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    require("chromium", "no chromium on PATH")
    return ""


def render(page: Path, *mode: str) -> Tuple[str, List[str]]:
    """Headless Chromium on a file (``--dump-dom``, ``--screenshot=...``): (stdout, console lines)."""
    profile = tempfile.mkdtemp(prefix="kvmexit-chromium-")
    try:
        proc = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--user-data-dir=" + profile,
                "--enable-logging=stderr",
                "--v=0",
                *mode,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
