"""``kvmexit top``: a full-screen live view (curses), refreshed in place."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any, Dict, List

from ..model import GROUPINGS, SORT_KEYS, paused_gc
from ..sources.live import LiveSource
from ..views.top import DROP_ORDER
from .common import add_filter_options, check_reasons, positive_float
from .live import SWEEP_SECONDS, add_map_options, check_machine, open_live_args

__all__ = ["DESCRIPTION", "EPILOG", "prepare_parser", "run"]

DESCRIPTION = "A full-screen live view of KVM exits per VM, vCPU, thread or reason, refreshed in place."
EPILOG = """\
examples:
  kvmexit top                   # per VM, every 2 seconds
  kvmexit top -d 1 --by reason  # per exit reason, every second
  kvmexit top --vm web01        # one guest (filtered in the kernel)
  kvmexit top --sub --by reason # per reason, each unfolded into its sub-reasons (u folds them)
  kvmexit top --split           # where exit time went (KERN% VMM% HALT% PREEMPT% BLOCKED%), EXIT%

keys: q quit, 1-5 group by vm/vcpu/thread/reason/sub-reason, s sort, enter drill into a VM, then a
vCPU, then (--sub) a reason, backspace back, u fold/unfold sub-reasons, t show/hide the split,
g show/hide EXIT%, f/r filter by VM/reason, x clear filters, space pause, c totals/interval, ? help.
On a narrow terminal, PREEMPT% and BLOCKED% become PRE% and BLK%, gaps one space, then columns go in
this order: DROP_ORDER.
""".replace("DROP_ORDER", ", ".join(DROP_ORDER))

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-d", "--delay", type=positive_float, default=2.0, metavar="SECS", help="refresh every SECS (default: 2)"
    )
    parser.add_argument(
        "--by", choices=sorted(GROUPINGS), default="vm", help="first grouping (default: vm); sub: implies --sub"
    )
    parser.add_argument("--sort", choices=sorted(SORT_KEYS), default="count", help="first sort order (default: count)")
    parser.add_argument(
        "--sub",
        action="store_true",
        help="trace sub-reasons and start with them unfolded under each reason (a SUB column; key u folds them)",
    )
    parser.add_argument(
        "--guest",
        action="store_true",
        help="also measure time in the guest: an EXIT%% column, exit time / (exit + guest time) (adds ~1-3%% to the "
        "cost of an exit: see README Overhead)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="split each exit's time: KERN%%, VMM%%, PREEMPT%%, BLOCKED%% beside HALT%%, with --guest (traces "
        "sched_switch, which fires for every context switch of the host: see README Overhead)",
    )
    add_filter_options(parser, bcc=False)
    add_map_options(parser)


def run(args: argparse.Namespace) -> int:
    import curses

    from ..reasons import label
    from ..views.top import TopView

    if not sys.stdout.isatty():
        from ..errors import KvmexitError

        raise KvmexitError("top needs a terminal", hint="use `kvmexit -i SECS` for a scrolling or logged view")
    from ..reasons.subreasons import sub_label

    check_reasons(check_machine(), args.reasons)
    subs = args.sub or args.by == "sub"
    source = open_live_args(args, subreasons=subs, split=args.split, guest=args.guest)
    stop: List[int] = []
    saved: Dict[signal.Signals, Any] = {}
    try:
        for sig in _SIGNALS:
            saved[sig] = signal.signal(sig, lambda signum, frame: stop.append(signum))
        title = "kvmexit top: %s (%s)" % (source.layout.arch, source.layout.name)
        view = TopView(
            label,
            args.by,
            args.sort,
            vms=args.vms,
            reasons=args.reasons,
            title=title,
            interval=args.delay,
            sub_label=sub_label if subs else None,
            show_sub=subs,
        )
        curses.wrapper(_loop, source, view, args.delay, stop)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        source.close()
    return 0


def _loop(screen: Any, source: LiveSource, view: Any, delay: float, stop: List[int]) -> None:
    import curses

    curses.curs_set(0)
    screen.timeout(50)  # getch waits at most 50 ms: signals and refreshes are seen promptly
    styles = {"": 0, "header": curses.A_BOLD, "selected": curses.A_REVERSE, "status": curses.A_REVERSE}
    next_refresh = 0.0
    next_sweep = time.monotonic() + SWEEP_SECONDS
    dirty = True
    while not stop:
        now = time.monotonic()
        if now >= next_refresh:
            with paused_gc():
                view.update(source.snapshot())
            next_refresh = now + delay
            dirty = True
        elif now >= next_sweep:
            source.sweep()
            next_sweep = now + SWEEP_SECONDS
        else:
            source.poll(0)  # name new VMs while they run
        if dirty:
            _draw(screen, view, styles)
            dirty = False
        try:
            k = screen.getkey()
        except curses.error:  # no key within the timeout
            continue
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled; belt and braces
            break
        if k == "KEY_RESIZE":
            curses.update_lines_cols()
        elif not view.key(k):
            break
        dirty = True


def _draw(screen: Any, view: Any, styles: Dict[str, int]) -> None:
    import curses

    height, width = screen.getmaxyx()
    screen.erase()
    for y, (text, style) in enumerate(view.lines(width, height)):
        try:
            screen.addstr(y, 0, text[: max(0, width - 1)], styles.get(style, 0))
        except curses.error:
            pass  # the last cell of the screen cannot be written; a shrinking terminal
    screen.refresh()
