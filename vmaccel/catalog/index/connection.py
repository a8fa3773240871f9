"""The SQLite connection of the index: locking, transactions, read-only lookup connections.

The index is kept in SQLite in WAL mode with ``synchronous=FULL`` so that a commit that
returned is durable. Table modules (``chunks``, ``backups``, ``files``) build on
:class:`Connection`; nothing outside this package sees a cursor or a statement.

Thread safety: one connection guarded by a lock; every method may be called from any thread.
Batched chunk lookups run on a small pool of read-only connections (:meth:`Connection._read`)
so image writer workers and image readers never wait for a write transaction (WAL: readers
see the last commit).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vmaccel.catalog.index.opening import database_error, open_index
from vmaccel.vocabulary.errors import IndexCorrupt

if TYPE_CHECKING:
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

MIGRATION_SET = "vmaccel.catalog"  # schema.migrations' set in sqlite-utils' table
NEWEST_MIGRATION = "0011_proxies"  # the last of schema.migrations (a test keeps them equal)
ID_BATCH = 500  # ids per IN (...) query: under every engine's bound-parameter limit


class Result(Protocol):
    """What a statement returns to the table modules (a cursor of either dialect)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...


def marks(n: int) -> str:
    """``n`` bound-parameter marks for an ``IN (...)`` list."""
    return ", ".join("?" * n)


class Connection:
    """The catalog database file of one repository.

    ``create=False`` (every command but ``repo init`` and ``repo rebuild-index``) opens an
    existing index and never creates one (see :func:`~vmaccel.catalog.index.opening.open_index`).
    """

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        self._conn = open_index(path, create)
        self._lock = threading.RLock()
        self._readers: list[sqlite3.Connection] = []  # idle read-only connections (lookups)
        self._readers_lock = threading.Lock()
        self._closed = False

    def migrate(self) -> None:
        """Apply pending schema migrations (each in its own transaction)."""
        with self._lock:
            if self._up_to_date():
                return
            db, migrations = self._schema()
            try:
                migrations.apply(db)
            except sqlite3.DatabaseError as exc:
                raise database_error(self.path, exc, "cannot be migrated") from exc

    def pending_migrations(self) -> bool:
        """Whether schema migrations are waiting to be applied (read-only)."""
        with self._lock:
            if self._up_to_date():
                return False
            db, migrations = self._schema()
            try:
                return bool(migrations.pending(db))
            except sqlite3.DatabaseError as exc:
                raise database_error(self.path, exc, "cannot be read") from exc

    def _schema(self) -> tuple[sqlite_utils.Database, Migrations]:
        """sqlite-utils over this connection, and the schema's migrations (loaded here, on the
        rare opening that has migrations to apply or check: see :meth:`_up_to_date`)."""
        import sqlite_utils

        from vmaccel.catalog.index.schema import migrations

        return sqlite_utils.Database(self._conn), migrations

    def _up_to_date(self) -> bool:
        """Whether the newest migration is recorded: then none is pending (they are applied
        in order). One query, so that opening an index that is up to date does not load
        sqlite-utils and the schema (~37 ms of every command's start-up)."""
        try:
            row = self._conn.execute(
                "SELECT 1 FROM _sqlite_migrations WHERE migration_set = ? AND name = ?",
                (MIGRATION_SET, NEWEST_MIGRATION),
            ).fetchone()
        except sqlite3.OperationalError:  # no migrations table: a new index
            return False
        except sqlite3.DatabaseError as exc:
            raise database_error(self.path, exc, "cannot be read") from exc
        return row is not None

    def close(self) -> None:
        # Readers first: the last connection to close checkpoints the WAL into the database.
        with self._readers_lock:
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One write transaction; commits (durably) on success, rolls back on any exception.

        Holds the connection's lock for its whole length (other threads' statements wait).
        A full disk (SQLite's SQLITE_FULL) becomes :class:`NoSpaceLeft`, with nothing committed.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back already
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise database_error(self.path, exc, "cannot be written") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"catalog query failed: {exc}") from exc

    def _scan(self, sql: str) -> Iterator[Any]:
        """The rows of ``sql`` one by one, under the lock (for scans too big for a list)."""
        with self._lock:
            try:
                yield from self._conn.execute(sql)
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"catalog query failed: {exc}") from exc

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        """The rows of ``sql`` one by one, under the lock until exhausted or closed."""
        with self._lock:
            try:
                yield from self._conn.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise IndexCorrupt(f"catalog query failed: {exc}") from exc

    # Dialect hooks (PostgreSQL overrides them, catalog.index.pgconnection): a file path as
    # stored (str: text, bytes: an undecodable name) as the engine binds and returns it, and
    # the engine's spelling of SQLite's LIKE on ``f.path`` (one bound pattern, ``\`` escapes).

    def _bind_path(self, value: str | bytes) -> str | bytes:
        return value

    def _column_path(self, value: Any) -> str | bytes:
        return value  # type: ignore[no-any-return]

    def _path_like(self) -> str:
        return "f.path LIKE ? ESCAPE '\\'"

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._lock:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise database_error(self.path, exc, "cannot be written") from exc

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an ``INSERT ... RETURNING id``; returns the id."""
        return int(self._execute(sql, params).fetchone()[0])

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Result:
        """``rowcount`` of the cursor is the sum over every row."""
        with self._lock:
            try:
                return self._conn.executemany(sql, rows)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise database_error(self.path, exc, "cannot be written") from exc

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one query on an idle read-only connection (opened on demand, kept for reuse).

        WAL lets these readers run beside the writer; each statement sees the last commit,
        never the writer's open transaction. At most one connection per concurrent caller.
        """
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                )
            return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise IndexCorrupt(f"catalog query failed: {exc}") from exc
        finally:
            if conn is not None:
                with self._readers_lock:
                    if self._closed:  # closed meanwhile: do not keep it
                        conn.close()
                    else:
                        self._readers.append(conn)
