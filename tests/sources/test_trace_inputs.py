"""Inputs: plain, gzip and xz files and stdin (by magic bytes), bad files, names side files."""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from kvmexit.errors import BadTrace
from kvmexit.sources.trace import read_trace

TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"
SRC = Path(__file__).resolve().parent.parent.parent / "src"
ARM = TRACES / "arm64-upstream.synthetic.trace"


def numbers(r):
    return {(k.tid, k.code, k.detail): v for k, v in r.snapshot.stats.items()}


@pytest.mark.parametrize("compress,kind", [(gzip.compress, "gzip"), (lzma.compress, "xz")])
def test_compressed_files(tmp_path, compress, kind):
    plain = read_trace(str(ARM))
    p = tmp_path / "t.bin"  # no telling suffix: detected by magic bytes
    p.write_bytes(compress(ARM.read_bytes()))
    r = read_trace(str(p))
    assert r.info.compression == kind
    assert numbers(r) == numbers(plain)


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, lzma.compress])
def test_stdin(compress):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from kvmexit.sources.trace import read_trace\n"
        "r = read_trace('-'); print(sum(s.exits for s in r.snapshot.stats.values()), r.info.format)\n" % str(SRC)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=compress(ARM.read_bytes()), capture_output=True, check=True
    )
    assert out.stdout.split() == [b"26", b"ftrace"]


def test_truncated_last_line_is_counted_not_fatal(tmp_path):
    text = ARM.read_bytes()
    p = tmp_path / "t"
    p.write_bytes(text[:-40])  # cut inside the last line
    r = read_trace(str(p))
    assert r.health.lines == r.health.accounted
    assert r.health.malformed + r.health.events + r.health.other_events + r.health.ignored == r.health.lines


@pytest.mark.parametrize("content", [b"", b"hello\nworld\n", b"# tracer: nop\n#\n"])
def test_no_kvm_events_is_an_error(tmp_path, content):
    p = tmp_path / "t"
    p.write_bytes(content)
    with pytest.raises(BadTrace, match="no KVM exit/entry events"):
        read_trace(str(p))


def test_missing_file():
    with pytest.raises(BadTrace, match="cannot open"):
        read_trace("/nonexistent/trace")


def test_names_side_file(tmp_path):
    """ftrace text without tgids + the names file of kvmexit record: VM names and tgids."""
    src = (TRACES / "arm64-4.19.synthetic.trace").read_bytes()
    p = tmp_path / "vm.trace"
    p.write_bytes(src)
    (tmp_path / "vm.trace.names.json").write_text(
        json.dumps(
            {
                "kvmexit_names": 1,
                "layout": "arm64-4.19",
                "vms": {"1200": "web", "1300": "db"},
                "threads": {
                    "1201": {"tgid": 1200, "comm": "CPU 0/KVM", "vcpu": 0},
                    "1202": {"tgid": 1200, "comm": "CPU 1/KVM", "vcpu": 1},
                    "1301": {"tgid": 1300, "comm": "CPU 0/KVM", "vcpu": 0},
                },
            }
        )
    )
    r = read_trace(str(p))
    assert r.info.names_file == str(p) + ".names.json"
    assert {k.tid: k.tgid for k in r.snapshot.stats} == {1201: 1200, 1202: 1200, 1301: 1300}
    assert {t: i.vm for t, i in r.snapshot.threads.items()} == {1201: "web", 1202: "web", 1301: "db"}
    r = read_trace(str(p), use_names=False)
    assert {k.tgid for k in r.snapshot.stats} == {None}
    # gzip -9 vm.trace: the side file keeps its name and is still found.
    gz = tmp_path / "vm.trace.gz"
    gz.write_bytes(gzip.compress(src))
    p.unlink()
    r = read_trace(str(gz))
    assert r.info.names_file == str(p) + ".names.json"
    assert {t: i.vm for t, i in r.snapshot.threads.items()} == {1201: "web", 1202: "web", 1301: "db"}


def test_names_file_lost_counts(tmp_path, capsys):
    from kvmexit.cli import main

    p = tmp_path / "t"
    p.write_bytes(ARM.read_bytes())
    (tmp_path / "t.names.json").write_text(json.dumps({"lost": {"1": {"overrun": 7, "dropped events": 0}}}))
    assert read_trace(str(p)).health.recorded_lost == {1: 7}
    assert main(["report", str(p)]) == 0
    err = capsys.readouterr().err
    assert "the recording lost events (ring-buffer overrun): CPU 1: 7" in err


def test_names_file_layout_from_format_files(tmp_path):
    """A names file with the kvm format files decides the layout (here 4.19: "TRAP" is code 1)."""
    fmt_dir = TRACES.parent / "formats" / "arm64-4.19"
    if not fmt_dir.is_dir():
        pytest.skip("no arm64-4.19 format files in tests/data/formats")
    formats = {ev: (fmt_dir / ev / "format").read_text() for ev in ("kvm_exit", "kvm_entry")}
    p = tmp_path / "t"
    p.write_bytes(b"  a-1 [000] d..1. 1.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1\n")
    (tmp_path / "t.names.json").write_text(json.dumps({"formats": formats}))
    r = read_trace(str(p))
    assert r.info.layout == "arm64-4.19"
    (key,) = r.snapshot.stats
    assert key.code == 1


def test_layout_from_the_record_header():
    import io

    from kvmexit.sources.trace import read_stream

    text = (
        b"# kvmexit record: layout=arm64-4.19 kernel=4.19.0 events=kvm_exit,kvm_entry instance=x\n"
        b"  a-1 [000] d..1. 1.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1\n"
    )
    r = read_stream(io.BytesIO(text))
    assert r.info.layout == "arm64-4.19"
    assert [k.code for k in r.snapshot.stats] == [1]


def test_tgid_learnt_from_a_later_line():
    import io

    from kvmexit.sources.trace import read_stream

    text = (
        b"  a-5 (-------) [000] d..1. 1.000001: kvm_exit: IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1\n"
        b"  a-5 (      4) [000] d..1. 1.000002: kvm_entry: PC: 0x1\n"
        b"  a-5 (      4) [000] d..1. 1.000003: kvm_exit: IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1\n"
    )
    r = read_stream(io.BytesIO(text))
    assert {k.tgid for k in r.snapshot.stats} == {4}


def test_bad_names_file(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(ARM.read_bytes())
    (tmp_path / "t.names.json").write_text("{not json")
    with pytest.raises(BadTrace, match="names file"):
        read_trace(str(p))


def test_a_padded_trace_cmd_payload_reads_the_same_from_a_cached_prefix(tmp_path):
    """trace-cmd pads the payload after the event name: the fast path (a prefix seen before) strips
    it as the grammar does, so a kvm_userspace_exit is a sub-reason event on every line, not only
    on the first of its thread."""
    line = "       CPU 0/KVM-301   [000]  1000.%06d: %s:%s%s"
    lines = ["cpus=2"]
    for i, (name, payload) in enumerate(
        [
            ("kvm_exit", "TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0xffff800008001234"),
            ("kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)"),
            ("kvm_entry", "PC: 0xffff800008001238"),
            ("kvm_exit", "TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0xffff800008001234"),
            ("kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)"),
            ("kvm_entry", "PC: 0xffff800008001238"),
        ]
    ):
        lines.append(line % (i, name, " " * max(1, 21 - len(name)), payload))
    path = tmp_path / "t.trace-cmd"
    path.write_text("\n".join(lines) + "\n")
    r = read_trace(str(path))
    assert r.health.malformed == 0
    assert r.health.other_events == 2
    assert r.snapshot.subs_known
