"""``kvmexit exporter``: serve the kernel's cumulative maps as Prometheus metrics.

Each scrape reads the maps (nothing is cleared, so no exit is lost between scrapes). Built on
``prometheus_client``, an optional dependency: ``pip install 'kvmexit[exporter]'`` or Debian's
``python3-prometheus-client``.
"""

from __future__ import annotations

import argparse
import platform
import signal
import socket
import sys
import threading
from typing import Any, Dict, Optional, Tuple

from ..errors import KvmexitError
from ..model import Snapshot
from ..sources import Source
from ..sources.live import LiveSource
from .common import add_filter_options
from .live import StopRequest, add_map_options, open_live_args

__all__ = ["DESCRIPTION", "EPILOG", "DEFAULT_LISTEN", "SharedSource", "parse_listen", "prepare_parser", "run", "serve"]

DEFAULT_LISTEN = "127.0.0.1:9479"

DESCRIPTION = (
    "Serve KVM exit counts, times and duration histograms per VM, vCPU and exit reason as Prometheus "
    "metrics, read from the kernel's cumulative maps at each scrape."
)
EPILOG = """\
examples:
  kvmexit exporter                          # http://127.0.0.1:9479/metrics
  kvmexit exporter --listen 0.0.0.0:9479    # reachable from other hosts: your decision (no auth, no TLS)
  kvmexit exporter --vm web01 --per-thread  # one guest, with tgid/tid labels
  kvmexit exporter --split                  # where exit time went, and time in the guest

metrics: kvmexit_exits_total, kvmexit_exit_seconds_total, kvmexit_halted_seconds_total and the
histogram kvmexit_exit_duration_seconds, labelled vm, vcpu, reason (and sub_reason with --sub);
with --guest, kvmexit_guest_seconds_total; with --split, kvmexit_exit_part_seconds_total{part}
(kernel, vmm, halt, preempt, blocked: parts this kernel cannot measure are absent); health counters
kvmexit_unpaired_entries_total, kvmexit_map_full_total, kvmexit_abandoned_exits_total,
kvmexit_unfinished_exits_total, kvmexit_lost_events_total; with --vm (VMs that start later are
learned), kvmexit_vm_filter_excluded_exits_total. See the README.
"""

MISSING_CLIENT = KvmexitError(
    "the exporter needs the prometheus_client Python module",
    hint="pip install 'kvmexit[exporter]', or apt-get install python3-prometheus-client",
)


def parse_listen(text: str) -> Tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:PORT`` for IPv6) into (address, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("expected ADDR:PORT, e.g. 127.0.0.1:9479: %r" % text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a port number: %r" % port_text) from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("port out of range 1-65535: %r" % port_text)
    return host, port


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        metavar="ADDR:PORT",
        help="where to serve /metrics (default: %s, this host only; widening it is your decision)" % DEFAULT_LISTEN,
    )
    parser.add_argument(
        "--per-thread",
        action="store_true",
        help="add tgid and tid labels (one series set per thread: grows with thread churn)",
    )
    parser.add_argument(
        "--sub",
        action="store_true",
        help="trace sub-reasons and add a sub_reason label (one series set per sub-reason seen: per MMIO address)",
    )
    parser.add_argument(
        "--guest",
        action="store_true",
        help="also measure time in the guest: kvmexit_guest_seconds_total (adds ~1-3%% to the cost of an exit: "
        "see README Overhead)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="split each exit's time by where it went (part: kernel, vmm, halt, preempt, blocked): "
        "kvmexit_exit_part_seconds_total, with --guest (traces sched_switch, which fires for every context switch of "
        "the host: see README Overhead)",
    )
    add_filter_options(parser, reasons=False, bcc=False, title="filters (applied in the kernel)")
    add_map_options(parser)


def require_prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        if e.name not in (None, "prometheus_client"):  # installed, but something it imports is not
            raise KvmexitError(
                "prometheus_client cannot be imported: %s" % e, hint="reinstall it with its dependencies"
            ) from None
        raise MISSING_CLIENT from None
    return prometheus_client


class SharedSource(Source):
    """The live source shared by the scrape threads and the main loop (bcc is not thread-safe)."""

    def __init__(self, source: LiveSource) -> None:
        self.source = source
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.source.snapshot()

    def close(self) -> None:
        with self._lock:
            self.source.close()

    def wait(self, seconds: float) -> None:
        with self._lock:
            self.source.wait(seconds)

    def sweep(self) -> None:
        with self._lock:
            self.source.sweep()

    def lost_events(self) -> int:
        return int(getattr(self.source, "lost_events", 0))

    def excluded(self) -> Dict[str, int]:
        """--vm: exits traced before a process's name was read, then left out, by why."""
        vf = getattr(self.source, "vm_filter", None)
        return dict(vf.excluded) if vf is not None else {}


def serve(
    source: Source,
    listen: Tuple[str, int],
    per_thread: bool = False,
    info: Optional[Dict[str, str]] = None,
    sub_reasons: bool = False,
) -> Any:
    """Start serving ``source`` (an opened live source, shared with the caller's loop through
    :class:`SharedSource`, or any other :class:`~kvmexit.sources.Source`, such as a trace) on a
    daemon thread; returns the registry."""
    client = require_prometheus_client()
    from ..reasons import label
    from ..reasons.subreasons import sub_label
    from ..views.prometheus import ExitCollector

    registry = client.CollectorRegistry(auto_describe=False)
    if isinstance(source, LiveSource):
        source = SharedSource(source)
    if isinstance(source, SharedSource):
        lost, excluded = source.lost_events, source.excluded
    else:
        lost, excluded = (lambda: 0), (lambda: {})
    collector = ExitCollector(
        source.snapshot,
        label,
        per_thread,
        lost,
        info,
        excluded,
        sub_label=sub_label if sub_reasons else None,
    )
    registry.register(collector)
    client.ProcessCollector(registry=registry)  # process_resident_memory_bytes: watch a long run
    addr, port = listen
    try:
        client.start_http_server(port, addr=addr, registry=registry)
    except (OSError, socket.gaierror) as e:
        raise KvmexitError(
            "cannot listen on %s:%d: %s" % (addr, port, e.strerror or e), hint="choose another --listen ADDR:PORT"
        ) from e
    return registry


def run(args: argparse.Namespace) -> int:
    require_prometheus_client()  # before compiling anything
    source = open_live_args(args, subreasons=args.sub, split=args.split, guest=args.guest)
    try:
        shared = SharedSource(source)
        info = {"arch": source.layout.arch, "layout": source.layout.name, "kernel": platform.release()}
        serve(shared, args.listen, args.per_thread, info, sub_reasons=args.sub)
        addr, port = args.listen
        shown = "[%s]" % addr if ":" in addr else addr
        print(
            "kvmexit exporter: tracing %s exits (layout %s), serving http://%s:%d/metrics"
            % (source.layout.arch, source.layout.name, shown, port),
            file=sys.stderr,
            flush=True,
        )
        for note in getattr(source, "notes", ()):  # what this kernel cannot measure (absent metrics)
            print("kvmexit exporter: %s" % note, file=sys.stderr, flush=True)
        with StopRequest() as stop:
            # A daemon has no terminal: a hang-up ends it cleanly too, instead of killing it.
            previous = signal.signal(signal.SIGHUP, lambda signum, frame: setattr(stop, "requested", True))
            try:
                stop.sleep_until(None, shared.sweep, shared.wait)
            finally:
                signal.signal(signal.SIGHUP, previous)
    finally:
        source.close()
    print("kvmexit exporter: stopped, programs detached", file=sys.stderr)
    return 0
