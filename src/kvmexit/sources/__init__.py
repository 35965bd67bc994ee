"""Event sources, behind one interface (:class:`Source`): each gives :class:`kvmexit.model.Snapshot`
objects.

- :mod:`.live`: bcc/BPF, aggregation in the kernel (imports bcc lazily).
- :mod:`.trace`: recorded trace files, paired in Python by the same rules.
"""

from __future__ import annotations

import abc
from typing import Any

from ..model import Snapshot

__all__ = ["Source"]


class Source(abc.ABC):
    """What every source gives its consumers (views, the exporter, top): the cumulative state
    now, and an end. ``with source:`` closes it on the way out."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The cumulative statistics since the source started (exits still open as ``open``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the source holds (BPF programs, files); idempotent."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
