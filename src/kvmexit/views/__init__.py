"""Views: thin layers that turn a :class:`kvmexit.model.Report` into text, JSON or CSV."""

from __future__ import annotations

from .csv import CSV_COLUMNS, format_csv
from .json import SCHEMA_VERSION, report_document
from .text import format_duration, format_health, format_hist, format_table, printable

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_VERSION",
    "format_csv",
    "format_duration",
    "format_health",
    "format_hist",
    "format_table",
    "printable",
    "report_document",
]
