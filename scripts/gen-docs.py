#!/usr/bin/env python3
"""Generate the man pages (argparse-manpage) and shell completions (shtab) from kvmexit's own
argparse parsers, into man/ and completions/. Run it after changing an option or a help text;
tests/test_docs.py fails while the committed files differ from what this produces.

    .venv/bin/python scripts/gen-docs.py [--check]
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
#: The date printed in the pages (argparse-manpage honours SOURCE_DATE_EPOCH): fixed, so the
#: output depends on the parsers only. 2026-12-01.
DATE_EPOCH = "1796083200"

#: (page, parser function in kvmexit.cli, one-line description for NAME)
PAGES = (
    ("kvmexit", "live_parser", "trace KVM VM exits with eBPF and report why, how often and how long"),
    ("kvmexit-report", "report_parser", "report KVM exits from a recorded trace, offline"),
    ("kvmexit-record", "record_parser", "record KVM exits with tracefs alone, for kvmexit report"),
    ("kvmexit-exporter", "exporter_parser", "serve KVM exit statistics as Prometheus metrics"),
    ("kvmexit-top", "top_parser", "a full-screen live view of KVM exits"),
    ("kvmexit-diff", "diff_parser", "compare two KVM exit reports (A/B)"),
    ("kvmexit-aarch64", "aarch64_parser", "count KVM exits per thread and reason (kvmexit-aarch64.py compatible)"),
)
SHELLS = (("bash", "kvmexit"), ("zsh", "_kvmexit"))


def generate() -> dict:
    """{relative path: text} of every generated file."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=DATE_EPOCH, PYTHONPATH=os.path.join(ROOT, "src"))
    include = os.path.join(ROOT, "man", "kvmexit.include")
    out = {}
    for page, function, description in PAGES:
        cmd = [os.path.join(BIN, "argparse-manpage"), "--module", "kvmexit.cli", "--function", function]
        cmd += ["--prog", page, "--manual-section", "8", "--manual-title", "kvmexit", "--project-name", "kvmexit"]
        cmd += ["--description", description, "--include", include]
        text = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        # Title and NAME of a subcommand's page are its page name (kvmexit-report), as git's are.
        groff_name = page.replace("-", "\\-")
        text = re.sub(r"^\.TH .*? \"8\"", lambda m: '.TH %s "8"' % groff_name.upper(), text, count=1, flags=re.M)
        text = re.sub(
            r"^(\.SH NAME\n)\S.*? \\- ", lambda m: "%s%s \\- " % (m.group(1), groff_name), text, count=1, flags=re.M
        )
        out["man/%s.8" % page] = text
    for shell, name in SHELLS:
        cmd = [os.path.join(BIN, "shtab"), "--shell", shell, "--prog", "kvmexit", "kvmexit.cli.completion_parser"]
        out["completions/%s" % name] = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return out


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    stale = []
    for rel, text in sorted(generate().items()):
        path = os.path.join(ROOT, rel)
        try:
            with open(path) as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current == text:
            continue
        stale.append(rel)
        if check:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), rel, rel))
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            print("gen-docs: wrote %s" % rel)
    if check and stale:
        print("gen-docs: out of date: %s (run scripts/gen-docs.py)" % ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
