"""Typed errors. The core raises them; only the command line turns them into messages."""

from __future__ import annotations

from typing import Optional

__all__ = [
    "KvmexitError",
    "NotRoot",
    "BccMissing",
    "HeadersMissing",
    "TracepointsMissing",
    "UnsupportedArch",
    "UnsupportedLayout",
    "BadTrace",
    "UsageError",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]

#: Exit codes of every kvmexit command (documented in the man pages and the README).
EXIT_OK = 0  # done; a report was printed (also after SIGINT, SIGTERM or SIGHUP while tracing)
EXIT_ERROR = 1  # an error the message names: missing prerequisite, bad input, nothing matched
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_INTERRUPTED = 130  # Ctrl-C before tracing started (128 + SIGINT)


class KvmexitError(Exception):
    """A condition the user can act on: ``str(e)`` is one line, ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


class NotRoot(KvmexitError):
    pass


class BccMissing(KvmexitError):
    pass


class HeadersMissing(KvmexitError):
    pass


class TracepointsMissing(KvmexitError):
    pass


class UnsupportedArch(KvmexitError):
    pass


class UnsupportedLayout(KvmexitError):
    pass


class BadTrace(KvmexitError):
    """A trace file that holds nothing usable."""


class UsageError(KvmexitError):
    """Arguments that cannot work (argparse can only check them one by one)."""

    exit_code = EXIT_USAGE
