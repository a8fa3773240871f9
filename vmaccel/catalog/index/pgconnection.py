"""The PostgreSQL connection of the index: the same contract as
:class:`~vmaccel.catalog.index.connection.Connection`, so the table modules (``chunks``,
``backups``, ...) run their statements unchanged on psycopg 3.

The dialect layer is this small: statements are written once with ``?`` marks and translated
once per statement (``?`` -> ``%s``, a literal ``%`` doubled; cached), the DDL is per dialect
(:mod:`.pgschema`), and a few hooks (file paths, lease ids, sequences after explicit ids)
differ. Nothing here runs on the SQLite path, so the embedded default does not pay for it.

Transactions: :meth:`writing` is one transaction that first takes the catalog's *write lock*,
a transaction-scoped advisory lock (``pg_advisory_xact_lock``). Write transactions are
therefore serial across every process and machine, exactly as ``BEGIN IMMEDIATE`` makes them
serial on SQLite; the condemn/absolve protocol of gc (catalog.condemn, docs/format.md) relies
on that and holds unchanged. Reads outside :meth:`writing` run in autocommit and see the last
commit (READ COMMITTED). Thread safety: one main connection guarded by a lock; batched chunk
lookups run on a pool of extra connections (:meth:`_read`), as on SQLite.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from vmaccel.catalog.index.connection import Connection
from vmaccel.catalog.index.pgschema import CREATE_TABLE, MIGRATIONS, REQUIRED_TABLES, SET, TABLE
from vmaccel.vocabulary.errors import (
    IndexCorrupt,
    IndexMissing,
    NoSpaceLeft,
    RepositoryError,
    RepositoryLocked,
    VmaccelError,
)

NAMESPACE = 0x766D6163  # "vmac": the first key of every advisory lock vmaccel takes
WRITE_LOCK = 1  # second key of the write lock (every writing() transaction)
_TEXT, _BLOB = b"\x00", b"\x01"  # file_entry.path form tags (see pgschema)


@functools.lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """``sql`` with psycopg's marks: every ``?`` becomes ``%s``, a literal ``%`` ``%%``
    (the catalog's statements hold no ``?`` inside string literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _marks(sql: str, params: Sequence[Any]) -> str:
    """``sql`` for psycopg: translated when it has values (without, psycopg runs it as is,
    several statements allowed)."""
    return pg_sql(sql) if params else sql


def lock_key(name: str) -> int:
    """The second advisory-lock key of a named lock (31 bits of CRC-32 of ``name``)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def redacted(url: str) -> str:
    """``url`` without a password (for messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable catalog URL>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})


def pg_error(url: str, exc: psycopg.Error, doing: str) -> VmaccelError:
    """The one translation of PostgreSQL errors: a full disk is :class:`NoSpaceLeft`, a lost
    or refused connection :class:`RepositoryError`, anything else :class:`IndexCorrupt`."""
    where = redacted(url)
    if isinstance(exc, pgerrors.DiskFull):
        return NoSpaceLeft(
            f"no space left for the catalog database {where} ({exc}); nothing was committed:"
            " free some space on the database server and retry"
        )
    if isinstance(exc, psycopg.OperationalError):
        return RepositoryError(
            f"the catalog database {where} {doing}: {exc}; check that the server runs and the"
            " password is in PGPASSWORD, ~/.pgpass or the service file"
        )
    return IndexCorrupt(f"the catalog database {where} {doing}: {exc}")


class PgConnection(Connection):
    """The catalog database of one repository on a PostgreSQL server (``url``: a libpq URL
    or connection string without password). ``create=False`` refuses a database without the
    catalog's tables (:class:`IndexMissing`), as the SQLite index refuses a missing file."""

    def __init__(self, url: str, create: bool = False) -> None:
        self.url = url
        self.path = Path(redacted(url))  # for messages only: there is no file
        self._pg = self._connect("cannot be opened")
        self._lock = threading.RLock()
        self._pool: list[psycopg.Connection[Any]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        if not create:
            try:
                self._check_schema()
            except BaseException:
                self._pg.close()
                raise

    def _connect(self, doing: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise pg_error(self.url, exc, doing) from exc

    def _tables(self) -> set[str]:
        rows = self._query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {str(r[0]) for r in rows}

    def holds_catalog(self) -> bool:
        """Whether the database holds any of the catalog's tables."""
        return bool(self._tables() & REQUIRED_TABLES)

    def _check_schema(self) -> None:
        tables = self._tables()
        if not tables & REQUIRED_TABLES:
            raise IndexMissing(
                f"the catalog database {self.path} holds no catalog (no tables): restore it"
                " from the database's own backup, or name the right database in catalog.json"
            )
        missing = sorted(REQUIRED_TABLES - tables)
        if missing:
            raise IndexCorrupt(f"the catalog database {self.path} lacks {', '.join(missing)}")

    # -- lifetime and schema ---------------------------------------------------------------

    def migrate(self) -> None:
        """Apply pending migrations, each in its own transaction under the write lock."""
        if not self.pending_migrations():
            return
        with self._lock:
            self._execute(CREATE_TABLE)
            for name, ddl in MIGRATIONS:
                with self.writing():
                    done = self._query(
                        f"SELECT 1 FROM {TABLE} WHERE migration_set = ? AND name = ?",  # noqa: S608 - constant table
                        (SET, name),
                    )
                    if done:
                        continue
                    self._execute(ddl)
                    self._execute(
                        f"INSERT INTO {TABLE} (migration_set, name, applied)"  # noqa: S608 - constant table
                        " VALUES (?, ?, extract(epoch from now()))",
                        (SET, name),
                    )

    def pending_migrations(self) -> bool:
        """Whether migrations are waiting to be applied (read-only)."""
        try:
            rows = self._query(f"SELECT name FROM {TABLE} WHERE migration_set = ?", (SET,))  # noqa: S608 - constant table
        except IndexCorrupt:
            return True
        return bool({name for name, _ in MIGRATIONS} - {str(r[0]) for r in rows})

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            for conn in self._pool:
                conn.close()
            self._pool.clear()
        with self._lock:
            self._pg.close()

    # -- transactions and statements -------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One write transaction under the catalog's write lock (see the module docstring);
        commits on success (durable as the server's ``synchronous_commit`` makes it), rolls
        back on any exception. Not reentrant (neither is SQLite's)."""
        with self._lock, self._errors("cannot be written"), self._pg.transaction():
            self._pg.execute("SELECT pg_advisory_xact_lock(%s, %s)", (NAMESPACE, WRITE_LOCK))
            yield

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise pg_error(self.url, exc, doing) from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._errors("cannot be read"):
            return self._pg.execute(_marks(sql, params), params or None).fetchall()

    def _scan(self, sql: str) -> Iterator[Any]:
        """The rows of ``sql`` one by one (single-row mode: constant memory), under the lock."""
        yield from self._stream(sql, ())

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        with self._lock, self._errors("cannot be read"):
            yield from self._pg.cursor().stream(_marks(sql, params), params or None)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock, self._errors("cannot be written"):
            return self._pg.execute(_marks(sql, params), params or None)

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        row = self._execute(sql, params).fetchone()
        return int(row[0])

    def _executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """``rowcount`` of the cursor is the sum over every row (psycopg >= 3.1)."""
        with self._lock, self._errors("cannot be written"):
            cur = self._pg.cursor()
            cur.executemany(pg_sql(sql), list(rows))
            return cur

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one query on an idle pooled connection (autocommit: sees the last commit)."""
        with self._readers_lock:
            conn = self._pool.pop() if self._pool else None
        try:
            if conn is None:
                conn = self._connect("cannot be opened")
            with self._errors("cannot be read"):
                return conn.execute(_marks(sql, params), params or None).fetchall()
        finally:
            if conn is not None:
                with self._readers_lock:
                    if self._closed or conn.closed:
                        conn.close()
                    else:
                        self._pool.append(conn)

    # -- dialect hooks of the table modules ------------------------------------------------

    def _bind_path(self, value: str | bytes) -> bytes:
        """A stored path (str: UTF-8 text, bytes: an undecodable name) as ``file_entry.path``."""
        if isinstance(value, str):
            return _TEXT + value.encode("utf-8")
        return _BLOB + value

    def _column_path(self, value: Any) -> str | bytes:
        """The inverse of :meth:`_bind_path`."""
        raw = bytes(value)
        return raw[1:].decode("utf-8") if raw[:1] == _TEXT else raw[1:]

    def _path_like(self) -> str:
        """SQLite's LIKE (ASCII case-insensitive, on the text form) spelled for BYTEA paths."""
        return (
            "get_byte(f.path, 0) = 0 AND translate(convert_from(substring(f.path from 2),"
            " 'UTF8'), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') LIKE"
            " translate(?, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
            " ESCAPE '\\'"
        )

    # -- advisory locks --------------------------------------------------------------------

    def session_lock(self, name: str, what: str, wait: float = 0.0) -> SessionLock:
        """A session-level advisory lock ``name`` on a connection of its own (not taken yet);
        see :class:`SessionLock`."""
        return SessionLock(self, name, what, wait)

    def lock_held(self, name: str) -> bool:
        """Whether some session (of any process, on any machine) holds the lock ``name``."""
        rows = self._query(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid"
            " FROM pg_database WHERE datname = current_database()) AND classid = ?::oid"
            " AND objid = ?::oid AND objsubid = 2 AND granted",
            (NAMESPACE, lock_key(name)),
        )
        return bool(rows)


class SessionLock:
    """A session-level advisory lock held on a dedicated connection: it lives exactly as long
    as that session, so it dies with its process (the server sees the socket close) wherever
    the process runs. ``wait``: seconds to wait for another holder (0: refuse at once with
    :class:`RepositoryLocked`). Use as a context manager, or :meth:`acquire`/:meth:`release`."""

    def __init__(self, index: PgConnection, name: str, what: str, wait: float) -> None:
        self.index, self.name, self.what, self.wait = index, name, what, wait
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        conn = self.index._connect("cannot be opened")
        key = (NAMESPACE, lock_key(self.name))
        try:
            if self.wait > 0:
                conn.execute(f"SET lock_timeout = {int(self.wait * 1000)}")
            try:
                if self.wait > 0:
                    conn.execute("SELECT pg_advisory_lock(%s, %s)", key)
                    got = True
                else:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
                    got = bool(row and row[0])
            except pgerrors.LockNotAvailable:
                got = False
            if not got:
                raise RepositoryLocked(
                    f"the repository is locked by another {self.what} (catalog lock"
                    f" {self.name!r}); wait for it to end, or retry with a longer wait"
                )
            conn.execute("SET lock_timeout = 0")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        """Drop the lock, then close its session. Idempotent. The unlock is explicit because
        the server ends a closed session's backend (and frees its locks) a moment after the
        client has gone: without it, a caller that released could still see its own lock
        held, and be refused it, for a few milliseconds."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:  # the session is gone already: so is its lock
            pass
        finally:
            conn.close()

    def __enter__(self) -> SessionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
