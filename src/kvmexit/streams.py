"""Standard streams that fail with one line instead of a traceback.

A command may start with a standard stream closed (``kvmexit 2 >&-``) or writing to a device that
refuses data (``> /dev/full``). :func:`guarded` replaces the streams for the length of a command:
writing to a closed or failing standard output raises :class:`OutputError`, reading a closed
standard input raises :class:`InputError`, and a failing standard error is dropped (there is
nowhere left to say anything; the exit code still says it).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO, cast

from .errors import KvmexitError

__all__ = ["InputError", "OutputError", "guarded", "stdin_is_closed", "stdout_is_closed", "silence_stdout"]


class OutputError(KvmexitError):
    """Standard output is closed or refuses data."""


class InputError(KvmexitError):
    """Standard input is closed."""


class _Closed:
    """Stands for a standard stream the command was started without."""

    def __init__(self, name: str, error: type) -> None:
        self._name = name
        self._error = error

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error("%s is closed" % self._name, hint="redirect it to a file or a pipe")

    write = read = readline = readlines = fileno = __iter__ = _fail

    @property
    def buffer(self) -> Any:
        return self._fail()

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Guarded:
    """Delegates to a real stream; turns a failed write into :class:`OutputError`."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BrokenPipeError:
            raise  # a reader that stopped early (`| head`): not an error
        except OSError as e:
            raise OutputError("cannot write to %s: %s" % (self._name, e.strerror or e)) from e

    def write(self, data: Any) -> Any:
        return self._guard(self._stream.write, data)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    @property
    def buffer(self) -> Any:
        return _Guarded(self._stream.buffer, self._name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Discard:
    """Standard error that was closed: what is written is dropped."""

    def write(self, data: Any) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Quiet(_Guarded):
    """Standard error: if it fails there is no one to tell."""

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError:
            return None


def stdout_is_closed() -> bool:
    return sys.stdout is None or isinstance(sys.stdout, _Closed)


def stdin_is_closed() -> bool:
    return sys.stdin is None or isinstance(sys.stdin, _Closed)


def silence_stdout() -> None:
    """After a write error, point file descriptor 1 at /dev/null so the interpreter's last flush
    of what is still buffered cannot fail again on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def _fill_closed_descriptors() -> None:
    """Open /dev/null on closed descriptors 0-2, so no file opened later (an output file, a BPF
    map) lands on them and receives what C libraries print to "stderr"."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


@contextmanager
def guarded() -> Iterator[None]:
    _fill_closed_descriptors()
    saved = sys.stdin, sys.stdout, sys.stderr
    if sys.stdin is None:
        sys.stdin = cast(TextIO, _Closed("standard input", InputError))
    sys.stdout = cast(
        TextIO,
        _Closed("standard output", OutputError) if sys.stdout is None else _Guarded(sys.stdout, "standard output"),
    )
    sys.stderr = cast(TextIO, _Quiet(sys.stderr, "standard error") if sys.stderr is not None else _Discard())
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
