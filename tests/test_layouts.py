from __future__ import annotations

import pytest

from kvmexit.errors import TracepointsMissing, UnsupportedLayout
from kvmexit.layouts import detect, parse_format, read_formats

# layout fixture directory -> (detected name, arch, defines that decide the BPF variant)
EXPECTED = {
    "arm64-6.1": ("arm64", "arm64", ("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1")),
    "arm64-5.10": ("arm64", "arm64", ("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1")),
    "arm64-4.19": ("arm64-4.19", "arm64", ("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1")),
    "arm64-openeuler-4.19": ("arm64-openeuler-4.19", "arm64", ("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1")),
    "arm64-openeuler-5.10": (
        "arm64-openeuler-5.10",
        "arm64",
        ("LAYOUT_ARM64", "EXIT_RET_ARG=1", "EXIT_EC_ARG=-1", "TRAP_EC_ARG=1"),
    ),
    "x86-4.19": ("x86", "x86", ("LAYOUT_X86", "X86_REASON_OFF=8", "X86_ISA_OFF=24")),
    "x86-6.18": ("x86", "x86", ("LAYOUT_X86", "X86_REASON_OFF=8", "X86_ISA_OFF=24")),
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_every_known_layout_is_detected_from_its_format_files(data_dir, fixture):
    root = data_dir / "formats" / fixture
    formats = {}
    for event_dir in root.iterdir():
        formats[event_dir.name] = (event_dir / "format").read_text()
    layout = detect(formats)
    name, arch, defines = EXPECTED[fixture]
    assert (layout.name, layout.arch, layout.defines) == (name, arch, defines)


def test_format_parser_reads_names_offsets_and_sizes(data_dir):
    fields = parse_format((data_dir / "formats/x86-6.18/kvm_exit/format").read_text())
    assert [(f.name, f.offset, f.size) for f in fields[:3]] == [
        ("exit_reason", 8, 4),
        ("guest_rip", 16, 8),
        ("isa", 24, 4),
    ]


def test_read_formats_takes_what_exists(tmp_path, data_dir):
    d = tmp_path / "events/kvm/kvm_exit"
    d.mkdir(parents=True)
    (d / "format").write_text((data_dir / "formats/x86-6.18/kvm_exit/format").read_text())
    assert set(read_formats(str(tmp_path))) == {"kvm_exit"}


def test_missing_entry_event_is_reported():
    with pytest.raises(TracepointsMissing):
        detect({"kvm_exit": "format:\n"})


def test_openeuler_510_without_trap_enter_is_unsupported(data_dir):
    root = data_dir / "formats/arm64-openeuler-5.10"
    formats = {e: (root / e / "format").read_text() for e in ("kvm_exit", "kvm_entry")}
    with pytest.raises(UnsupportedLayout, match="kvm_trap_enter"):
        detect(formats)
