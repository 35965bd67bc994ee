#!/usr/bin/env bash
# Install what kvmexit needs on Debian 12 (run as root), idempotently:
#  - the distro's bcc (python3-bpfcc), bpftool, and test tools from apt;
#  - kernel headers for bcc: the running kernel's package, or, where the kernel has none (as on
#    custom/cloud kernels), a substitute: Debian's newest linux-headers-*-<arch> linked as
#    /lib/modules/$(uname -r)/build and .../source. bcc compiles kvmexit's small program against
#    them; it only uses stable UAPI-level definitions, and the verifier checks the result;
#  - tracefs and debugfs mounts;
#  - .venv: a virtualenv over /usr/bin/python3 with system site packages (so bcc is visible),
#    with kvmexit installed editable and the lint/type/compat tools.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "run as root (apt, mounts, /lib/modules)"; exit 1
fi

arch=$(dpkg --print-architecture)
release=$(uname -r)
export DEBIAN_FRONTEND=noninteractive

pkgs=(python3-bpfcc bpfcc-tools bpftool python3-venv python3-pip python3-pytest python3-hypothesis
      python3-jsonschema procps xz-utils gzip trace-cmd
      python3-prometheus-client prometheus tmux
      python3-matplotlib chromium)  # --html plots, and the headless browser its test renders the page in
if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
    pkgs+=("linux-headers-$release")
else
    pkgs+=("linux-headers-$arch")
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

build=/lib/modules/$release/build
if [ ! -e "$build/include" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    sub=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$sub" ]; then
        say "no kernel headers for $release and no linux-headers-*-$arch to substitute"; exit 1
    fi
    common=${sub%-"$arch"}-common
    say "no headers package for kernel $release: substituting $sub (see README, 'Kernel headers')"
    mkdir -p "/lib/modules/$release"
    ln -sfn "$sub" "$build"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$release/source"
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import kvmexit, ruff, mypy, vermin, argparse_manpage, shtab' 2>/dev/null; then
    say "pip install -e . and dev tools into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e . ruff mypy vermin argparse-manpage shtab
fi
say "ready: .venv/bin/kvmexit"
