"""The daemon's log: lines on stdout for the journal, or JSON lines (``--log-json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, for an
exception, ``error``; one object per line, so ``journalctl -o cat | jq`` reads it.
"""

from __future__ import annotations

import json
import logging
import sys
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


def configure(json_lines: bool, level: int = logging.INFO) -> None:
    """Send every vmaccel log record at ``level`` or above to stdout (replacing handlers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonLines() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
