"""What a new user touches besides the commands: version, man pages, completions, licence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)


@pytest.mark.parametrize(
    "module, args, prog",
    [
        ("kvmexit", (), "kvmexit"),
        ("kvmexit", ("report",), "kvmexit report"),
        ("kvmexit", ("record",), "kvmexit record"),
        ("kvmexit.commands.compat_aarch64", (), "kvmexit-aarch64"),
    ],
)
def test_version(module, args, prog):
    import kvmexit

    proc = run(sys.executable, "-m", module, *args, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "%s %s" % (prog, kvmexit.__version__)


def test_the_version_is_the_packages():
    import kvmexit

    assert re.search(r'^version = "%s"$' % re.escape(kvmexit.__version__), (ROOT / "pyproject.toml").read_text(), re.M)


def test_top_level_usage_names_every_command():
    usage = run(sys.executable, "-m", "kvmexit", "-h").stdout.split("\n\n")[0]
    for command in ("report", "record", "exporter", "diff"):
        assert "\n       kvmexit %s [-h] ..." % command in usage


def test_licence_is_the_gpl2_of_the_bpf_code():
    text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert "SPDX-License-Identifier: GPL-2.0" in (ROOT / "src/kvmexit/bpf/kvmexit.bpf.c").read_text()
    assert 'license = { text = "GPL-2.0-only" }' in (ROOT / "pyproject.toml").read_text()


def _generators_missing() -> str:
    bindir = Path(sys.executable).parent
    missing = [t for t in ("argparse-manpage", "shtab") if not (bindir / t).exists()]
    if missing and os.environ.get("CI") != "true":
        pytest.skip("%s not installed in this venv (scripts/setup.sh installs them)" % ", ".join(missing))
    return ", ".join(missing)


def test_man_pages_and_completions_are_generated_from_the_parsers():
    """scripts/gen-docs.py --check: the committed files are what the parsers give today."""
    missing = _generators_missing()
    assert not missing, "CI: %s missing" % missing
    proc = run(sys.executable, str(ROOT / "scripts/gen-docs.py"), "--check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_man_pages_document_exit_status_and_are_installed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for page in ("kvmexit", "kvmexit-report", "kvmexit-record", "kvmexit-exporter", "kvmexit-diff", "kvmexit-aarch64"):
        text = (ROOT / "man" / (page + ".8")).read_text()
        assert text.startswith('.TH %s "8"' % page.upper().replace("-", "\\-"))
        assert ".SH EXIT STATUS" in text and ".B 130" in text
        assert '"man/%s.8"' % page in pyproject
    assert '"share/bash-completion/completions" = ["completions/kvmexit"]' in pyproject


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
@pytest.mark.parametrize(
    "words, want",
    [
        (["kvmexit", "re"], ["report", "record"]),
        (["kvmexit", "--by", ""], ["reason", "sub", "thread", "vcpu", "vm"]),
        (["kvmexit", "report", "--form"], ["--format"]),
        (["kvmexit", "--max-"], ["--max-threads", "--max-keys", "--max-sub-keys"]),
    ],
)
def test_bash_completion(words, want):
    script = (
        "source %s; COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%s; COMP_POINT=${#COMP_LINE}; _shtab_kvmexit; "
        'printf "%%s\\n" "${COMPREPLY[@]}"'
        % (
            ROOT / "completions" / "kvmexit",
            " ".join("'%s'" % w for w in words),
            len(words) - 1,
            "'%s'" % " ".join(words),
        )
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == want, proc.stderr


def test_readme_tells_a_newcomer_what_happens():
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv --system-site-packages" in readme  # how users install, not just .venv/bin
    assert "about 1 GB" in readme and "takes minutes" in readme  # what scripts/test.sh builds first
    assert "says why on one line" in readme  # test_fallback_example_when_no_exit_occurs holds it to that
    assert not re.search(r"\bour\b", readme), "in-house wording"
