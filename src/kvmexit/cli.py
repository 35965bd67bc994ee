"""The ``kvmexit`` command: ``kvmexit [live options]``, ``kvmexit report``, ``kvmexit record``,
``kvmexit exporter``.

Typed errors from the core become one line and an exit code here, nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from .errors import KvmexitError

__all__ = ["main", "fail"]

SUBCOMMANDS = ("report", "record", "exporter", "diff")


def fail(error: KvmexitError, prog: str = "kvmexit") -> int:
    msg = "%s: error: %s" % (prog, error)
    if error.hint:
        msg += " (hint: %s)" % error.hint
    print(msg, file=sys.stderr)
    return error.exit_code


def run_command(
    prepare: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: List[str],
    prog: str,
    description: str,
    epilog: str = "",
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    prepare(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KvmexitError as e:
        return fail(e, prog)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from importlib import import_module

        mod = import_module("kvmexit.commands." + argv[0])
        return run_command(mod.prepare_parser, mod.run, argv[1:], "kvmexit " + argv[0], mod.DESCRIPTION, mod.EPILOG)
    from .commands import live

    return run_command(live.prepare_parser, live.run, argv, "kvmexit", live.DESCRIPTION, live.EPILOG)
