"""The daemon's log: lines on stdout for the journal, or JSON lines (``--log-json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, for an
exception, ``error``; one object per line, so ``journalctl -o cat | jq`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True)


class _Stdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a record comes, not the stream of the day it
    was made (a caller that swaps stdout, as an embedding program or a test does, never leaves
    the log writing to a closed file)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> object:
        return sys.stdout

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(json_lines: bool, level: int = logging.INFO) -> None:
    """Send every vmaccel log record at ``level`` or above to stdout (replacing handlers)."""
    handler = _Stdout()
    handler.setFormatter(
        JsonLines() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def configured(json_lines: bool, level: int = logging.INFO) -> Iterator[None]:
    """:func:`configure` for the length of the block; the root logger's handlers and level
    are as before afterwards (a command run inside a longer-lived program leaves its log as
    it found it)."""
    root = logging.getLogger()
    handlers, before = list(root.handlers), root.level
    configure(json_lines, level)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(before)
