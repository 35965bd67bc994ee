"""``--log FILE``: a log kept for days, like ``kvm_stat -L``.

Lines are appended (a log is never clobbered), each flushed as it is written; the CSV header is
written only at the start of an empty file, so restarts that append to a log do not repeat it;
SIGHUP reopens the file by name, so logrotate can move it away (its ``create`` or
``postrotate`` then sends SIGHUP) and the next report starts the new file, with its header.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from ..errors import KvmexitError

__all__ = ["LogFile"]


class LogFile:
    """A text stream appending to ``path``; :meth:`request_reopen` is safe in a signal handler."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: Optional[Any] = None
        self._reopen = False
        self._open()

    def _open(self) -> None:
        # O_NOFOLLOW: a log in a shared directory must not be redirected through a symlink.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise KvmexitError("cannot open log %s: %s" % (self.path, e.strerror), hint="check --log FILE") from e
        if self._file is not None:
            self._file.close()
        self._file = os.fdopen(fd, "a", encoding="utf-8", newline="")

    @property
    def at_start(self) -> bool:
        """True while the file is empty (a new log needs its header)."""
        self._reopen_if_requested()
        assert self._file is not None
        return os.fstat(self._file.fileno()).st_size == 0

    def request_reopen(self, signum: int = 0, frame: object = None) -> None:
        self._reopen = True

    def _reopen_if_requested(self) -> None:
        if self._reopen:
            self._reopen = False
            self._open()

    def write(self, text: str) -> int:
        self._reopen_if_requested()
        assert self._file is not None
        n = 0
        for line in text.splitlines(keepends=True):  # each line complete on disk as it is written
            n += self._file.write(line)
            self._file.flush()
        return n

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def reopen_on_sighup(self) -> Any:
        """Install the SIGHUP handler; returns the previous one."""
        return signal.signal(signal.SIGHUP, self.request_reopen)
