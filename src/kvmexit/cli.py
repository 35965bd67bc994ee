"""The ``kvmexit`` command: ``kvmexit [live options]``, ``kvmexit report``, ``kvmexit record``,
``kvmexit exporter``.

Typed errors from the core become one line and an exit code here, nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from . import streams
from .errors import EXIT_INTERRUPTED, EXIT_OK, KvmexitError

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
    with streams.guarded():
        args = parser.parse_args(argv)
        try:
            code = run(args)
            sys.stdout.flush()  # a full disk shows at the last flush: say so here, not at exit
            return code
        except streams.OutputError as e:
            streams.silence_stdout()
            return fail(e, prog)
        except KvmexitError as e:
            return fail(e, prog)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader stopped early (`| head`): nothing went wrong
            streams.silence_stdout()
            return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from importlib import import_module

        mod = import_module("kvmexit.commands." + argv[0])
        return run_command(mod.prepare_parser, mod.run, argv[1:], "kvmexit " + argv[0], mod.DESCRIPTION, mod.EPILOG)
    from .commands import live

    return run_command(live.prepare_parser, live.run, argv, "kvmexit", live.DESCRIPTION, live.EPILOG)
