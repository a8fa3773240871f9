"""Opening the catalog's SQLite file, and what its errors mean to a user.

Only ``repo init`` and ``repo rebuild-index`` create an index. Every other open must find one
with its schema: SQLite would otherwise create a missing file, and the migrations would build
empty tables in a 0-byte one, and that fresh index would hide every backup, reuse their ids,
and make gc take their packs for garbage. So :func:`open_index` opens with ``mode=rw`` (never
creating) and checks the tables of the first migration before it changes anything (even the
journal mode): a refused open leaves the file exactly as it was.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from vmaccel.vocabulary.errors import IndexCorrupt, IndexMissing, NoSpaceLeft, VmaccelError

REQUIRED_TABLES = frozenset({"_sqlite_migrations", "pack", "chunk", "backup", "image"})
REBUILD = "run `vmaccel repo rebuild-index` to recreate it from the packs and manifests"


def open_index(path: Path, create: bool) -> sqlite3.Connection:
    """A connection to the index at ``path`` in WAL mode, ``synchronous=FULL``, foreign keys
    on. ``create=False``: a missing file, or one without tables (0 bytes, or SQLite with no
    schema), raises :class:`IndexMissing`; an unreadable one :class:`IndexCorrupt`; a full
    disk :class:`NoSpaceLeft`."""
    try:
        conn = _connect(path, create)
        try:
            if not create:
                _check_schema(conn, path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise database_error(path, exc, "cannot be opened") from exc
    return conn


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    if create:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    if not path.is_file():
        raise IndexMissing(f"the catalog index {path} is missing; {REBUILD}")
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw",  # rw: never create the file
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=30,
    )


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse an index without the first migration's tables (empty or foreign file)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = {str(r[0]) for r in rows}
    if not tables:
        raise IndexMissing(f"the catalog index {path} is empty (no tables); {REBUILD}")
    missing = sorted(REQUIRED_TABLES - tables)
    if missing:
        raise IndexCorrupt(
            f"the catalog index {path} lacks the tables {', '.join(missing)}; {REBUILD}"
        )


def database_error(path: Path, exc: sqlite3.DatabaseError, doing: str) -> VmaccelError:
    """The one translation of SQLite errors: a full disk is :class:`NoSpaceLeft`, anything
    else that makes the file unusable is :class:`IndexCorrupt` (``doing``: "cannot be
    opened", "cannot be written", ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or (code is not None and _full_disk(path, code)):
        return NoSpaceLeft(
            f"no space left on the filesystem of the catalog index {path} ({exc}); nothing "
            "was committed: free some space and retry"
        )
    return IndexCorrupt(f"the catalog index {path} {doing}: {exc}; {REBUILD}")


def _full_disk(path: Path, code: int) -> bool:
    """An I/O error (SQLite opens its ``-shm`` file by writing to it) on a full disk."""
    if code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False
