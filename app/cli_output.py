"""What the command line prints: tables, JSON, times and sizes, and a command's error.

Shared by the server commands (`app.cli`) and the client commands (`app.cli_client`).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any


class CommandError(RuntimeError):
    """A command that cannot go on: its one-line message, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def table(columns: list[str], rows: list[list[str]], *, empty: str) -> None:
    """A table on stdout: rich's on a terminal; elsewhere plain columns, two spaces apart
    and never cut, for grep, awk and logs."""
    if not rows:
        # On stderr: stdout stays what a script reads (nothing).
        sys.stderr.write(empty + "\n")
        return
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # On a narrow terminal the first column (an id or prefix that other commands
        # take) stays whole; the others wrap, or are cut short ("CANCELL...").
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column(columns[0], no_wrap=True, min_width=widths[0])
        for name in columns[1:]:
            table.add_column(name)
        for row in rows:
            # Text: a job name with [brackets] is not rich markup.
            table.add_row(*(Text(cell) for cell in row))
        Console().print(table)
        return
    for row in [columns, *rows]:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def more_hint(what: str, limit: int, token: str | None) -> None:
    if token:
        sys.stderr.write(f"more {what}: raise --limit (now {limit}) or pass --page-token {token}\n")


def when_text(value: str | None) -> str | None:
    """An API time as "2025-06-01 12:03Z" (UTC, to the minute)."""
    if not value:
        return None
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def age_text(value: str) -> str:
    """How long ago: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, (datetime.now(UTC) - datetime.fromisoformat(value)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def count_text(n: int) -> str:
    """Parameters: 1.23M, 45.6k, 980."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def size_text(n: int) -> str:
    """Sizes in binary units: 4.7 MiB, 312 KiB."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
