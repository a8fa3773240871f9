"""The durable outbox of notifications: ``<state dir>/notify-outbox.sqlite``.

A notice is written here (one row per channel) before anyone tries to deliver it, so a notice
survives a failing receiver and a restart of the daemon; a row leaves the outbox when it was
delivered, or when it was dropped after its last attempt. It is its own SQLite file, never the
catalog index: delivery must not contend for the catalog's locks, and losing this file loses
only undelivered notices.

Durability: :meth:`Outbox.put` returns after its transaction committed with
``synchronous=FULL``. Thread safety: every method takes the instance's lock, so the daemon's
threads and the delivery worker share one instance.

Tables: ``outbox(id, channel, notice JSON, attempts, next_at, created, last_error)`` and
``sent_keys(key, created)``, the dedupe keys of :meth:`Outbox.put`, kept ``KEY_DAYS`` days.
One process uses an outbox at a time (the daemon holds its repository's daemon lock); two
would each deliver the same rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmaccel.daemon.notice import Notice

logger = logging.getLogger(__name__)
FILE_NAME = "notify-outbox.sqlite"
KEY_DAYS = 31  # a dedupe key older than this is forgotten (a month-long problem alerts again)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    notice TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_next_at ON outbox(next_at);
CREATE TABLE IF NOT EXISTS sent_keys (key TEXT PRIMARY KEY, created REAL NOT NULL);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True)
class Entry:
    """One notice for one channel; ``attempts`` = failed tries so far; times in Unix seconds."""

    id: int
    channel: str
    notice: Notice
    attempts: int
    created: float


class Outbox:
    """The outbox file at ``state_dir / FILE_NAME`` (the directory is created, mode 0700)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, notice: Notice, channels: Sequence[str], now: float, once: str | None) -> bool:
        """Queue ``notice`` for each of ``channels``, due at ``now``, in one transaction.
        With a dedupe key ``once`` already recorded, nothing is queued and False returned."""
        body = json.dumps(notice.to_dict(), sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if once is not None:
                    self._db.execute(
                        "DELETE FROM sent_keys WHERE created < ?", (now - KEY_DAYS * 86400,)
                    )
                    inserted = self._db.execute(
                        "INSERT INTO sent_keys (key, created) VALUES (?, ?) "
                        "ON CONFLICT (key) DO NOTHING",
                        (once, now),
                    ).rowcount
                    if not inserted:
                        self._db.execute("ROLLBACK")
                        return False
                self._db.executemany(
                    "INSERT INTO outbox (channel, notice, next_at, created) VALUES (?, ?, ?, ?)",
                    [(name, body, now, now) for name in channels],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return True

    def due(self, now: float, limit: int = 50) -> list[Entry]:
        """Up to ``limit`` entries due at ``now``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, channel, notice, attempts, created FROM outbox "
                "WHERE next_at <= ? ORDER BY next_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
        entries = []
        for entry_id, channel, body, attempts, created in rows:
            try:
                notice = Notice.from_dict(json.loads(body))
            except (ValueError, KeyError, TypeError) as exc:  # a damaged row: drop, never loop
                logger.error("dropped unreadable outbox entry %d (%s): %s", entry_id, channel, exc)
                self.remove(entry_id)
                continue
            entries.append(Entry(entry_id, channel, notice, attempts, created))
        return entries

    def next_due(self) -> float | None:
        """When the earliest entry is due (Unix seconds); None when the outbox is empty."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM outbox").fetchone()
        return None if row[0] is None else float(row[0])

    def remove(self, entry_id: int) -> None:
        """The entry was delivered (or dropped): it leaves the outbox."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def postpone(self, entry_id: int, attempts: int, next_at: float, error: str) -> None:
        """Record a failed try: ``attempts`` failures so far, next try at ``next_at``."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                (attempts, next_at, error, entry_id),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
