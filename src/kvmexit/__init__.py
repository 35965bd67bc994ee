"""kvmexit: why do my VMs exit, how often, and what does each exit cost?

The public API is small: sources produce :class:`Snapshot` objects, :func:`build_report` groups
them, and views format the result. Importing the package reads nothing and loads no BPF.
"""

from __future__ import annotations

from .errors import KvmexitError
from .model import ExitKey, ExitStats, Health, Report, Row, Snapshot, ThreadInfo, build_report, delta
from .reasons import label

__all__ = [
    "ExitKey",
    "ExitStats",
    "Health",
    "KvmexitError",
    "Report",
    "Row",
    "Snapshot",
    "ThreadInfo",
    "build_report",
    "delta",
    "label",
]

__version__ = "0.1.0"
