"""The ``kvmexit`` command: ``kvmexit [live options]``, ``kvmexit report``, ``kvmexit record``,
``kvmexit exporter``, ``kvmexit top``, ``kvmexit diff``; and ``kvmexit-aarch64``.

Typed errors from the core become one line and an exit code here, nowhere else. The parsers are
built here too, so the man pages and shell completions are generated from the same ones
(scripts/gen-docs.py).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Callable, List, Optional

from . import __version__, streams
from .errors import EXIT_INTERRUPTED, EXIT_OK, KvmexitError

__all__ = [
    "main",
    "fail",
    "build_parser",
    "run_command",
    "live_parser",
    "report_parser",
    "record_parser",
    "exporter_parser",
    "top_parser",
    "diff_parser",
    "aarch64_parser",
    "completion_parser",
]

SUBCOMMANDS = ("report", "record", "exporter", "top", "diff")
#: command -> (module with DESCRIPTION, EPILOG, prepare_parser and run; program name)
COMMANDS = {
    "live": ("kvmexit.commands.live", "kvmexit"),
    "report": ("kvmexit.commands.report", "kvmexit report"),
    "record": ("kvmexit.commands.record", "kvmexit record"),
    "exporter": ("kvmexit.commands.exporter", "kvmexit exporter"),
    "top": ("kvmexit.commands.top", "kvmexit top"),
    "diff": ("kvmexit.commands.diff", "kvmexit diff"),
    "aarch64": ("kvmexit.commands.compat_aarch64", "kvmexit-aarch64"),
}


def fail(error: KvmexitError, prog: str = "kvmexit") -> int:
    msg = "%s: error: %s" % (prog, error)
    if error.hint:
        msg += " (hint: %s)" % error.hint
    print(msg, file=sys.stderr)
    return error.exit_code


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command (a key of :data:`COMMANDS`)."""
    module, prog = COMMANDS[command]
    mod = import_module(module)
    parser = argparse.ArgumentParser(
        prog=prog, description=mod.DESCRIPTION, epilog=mod.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mod.prepare_parser(parser)
    parser.add_argument(
        "--version",
        action="version",
        version="%(prog)s " + __version__,
        # kvmexit-aarch64 keeps the original script's usage line
        help=argparse.SUPPRESS if command == "aarch64" else "print the version and exit",
    )
    if command == "live":  # the usage names the other commands
        usage = parser.format_usage()[len("usage: ") :].rstrip("\n")
        parser.usage = usage + "".join("\n       kvmexit %s [-h] ..." % name for name in SUBCOMMANDS)
    return parser


def live_parser() -> argparse.ArgumentParser:
    return build_parser("live")


def report_parser() -> argparse.ArgumentParser:
    return build_parser("report")


def record_parser() -> argparse.ArgumentParser:
    return build_parser("record")


def exporter_parser() -> argparse.ArgumentParser:
    return build_parser("exporter")


def top_parser() -> argparse.ArgumentParser:
    return build_parser("top")


def diff_parser() -> argparse.ArgumentParser:
    return build_parser("diff")


def aarch64_parser() -> argparse.ArgumentParser:
    return build_parser("aarch64")


def completion_parser() -> argparse.ArgumentParser:
    """The live options with the other commands as subcommands, for shell completion (dispatch
    looks at the first word instead, since the live command takes a positional duration). The
    subcommands come first, so the first word completes to their names."""
    parser = argparse.ArgumentParser(prog="kvmexit")
    commands = parser.add_subparsers(dest="command", title="commands")
    for name in SUBCOMMANDS:
        mod = import_module(COMMANDS[name][0])
        mod.prepare_parser(commands.add_parser(name, help=mod.DESCRIPTION, description=mod.DESCRIPTION))
    import_module(COMMANDS["live"][0]).prepare_parser(parser)
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: List[str]) -> int:
    with streams.guarded():
        args = parser.parse_args(argv)
        args.command_line = " ".join([parser.prog, *argv])  # for provenance (the --html page)
        try:
            code = run(args)
            sys.stdout.flush()  # a full disk shows at the last flush: say so here, not at exit
            return code
        except streams.OutputError as e:
            streams.silence_stdout()
            return fail(e, parser.prog)
        except KvmexitError as e:
            return fail(e, parser.prog)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader stopped early (`| head`): nothing went wrong
            streams.silence_stdout()
            return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "live"
    if command != "live":
        argv = argv[1:]
    return run_command(build_parser(command), import_module(COMMANDS[command][0]).run, argv)
