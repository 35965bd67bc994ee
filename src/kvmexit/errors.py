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
]


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
