"""How commands print: human text through rich, or JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol

from rich.console import Console

# Not a terminal (a pipe, a log): do not wrap tables at 80 columns; lines stay greppable.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


class Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> list[str]: ...


def emit(report: Report, as_json: bool) -> None:
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        for line in report.summary():
            # soft_wrap: one report line stays one line in logs (no wrapping at 80 columns)
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def say(line: str) -> None:
    """One line for people on stdout, printed as is (no markup, no wrapping)."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def warn(line: str) -> None:
    """One line for people on stderr, printed as is (no markup, no wrapping)."""
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)
