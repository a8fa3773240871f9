"""rebuild-index on a PostgreSQL catalog: build the new catalog beside the old one, in the
same database, and switch them in one transaction.

What ``index.db.rebuilding`` and the rename are on SQLite (catalog.rebuild), two schemas are
here: the new catalog is built in the schema :data:`BUILDING` (dropped first: what an
interrupted rebuild left is never user data), by a :class:`PgIndex` whose connections search
that schema only. The switch then moves, in one transaction, every catalog table of the live
schema into ``vmaccel_broken_<UTC time>`` (kept: it is user data, and evidence) and every
table of :data:`BUILDING` into the live schema; identity sequences and indexes move with their
tables. A crash before the commit leaves the old catalog live; after it, the new one. Tables
that are not the catalog's (the job queue's) stay where they are.

Nobody else may use the catalog meanwhile: :func:`others_hold_locks` finds any vmaccel
advisory lock held by another session (a backup's lease or VM lock, a maintenance holder, a
write transaction) and the rebuild refuses then. Readers hold no lock: stop mounts and
restores on other machines first (they would keep reading the old tables until they reconnect).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from vmaccel.catalog.index.pgconnection import NAMESPACE, lock_key, pg_error
from vmaccel.vocabulary.errors import RepositoryLocked

BUILDING = "vmaccel_rebuild"


def in_schema(url: str, schema: str) -> str:
    """``url`` with every statement resolving names in ``schema`` only."""
    return psycopg.conninfo.make_conninfo(url, options=f"-c search_path={schema}")


def _connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise pg_error(url, exc, "cannot be opened for rebuild-index") from exc


class MaintenanceLock:
    """The catalog's ``maintenance`` session lock for the rebuild (refused at once when held:
    :class:`RepositoryLocked`), on a connection of its own; ``pid`` its backend."""

    def __init__(self, url: str) -> None:
        self.conn = _connect(url)
        key = (NAMESPACE, lock_key("maintenance"))
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
        if not (row and row[0]):
            self.conn.close()
            raise RepositoryLocked(
                "the repository is locked by another maintenance run on another machine"
                " (catalog lock 'maintenance'); wait for it to end"
            )
        self.pid = int(self.conn.info.backend_pid)

    def __enter__(self) -> MaintenanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def others_hold_locks(url: str, own: int | None = None) -> bool:
    """Whether a session other than this one (and the one with backend pid ``own``) holds
    or waits for a vmaccel advisory lock on the catalog's database."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.classid IN (%s, %s)"
            " AND d.datname = current_database() AND l.pid <> pg_backend_pid()"
            " AND l.pid IS DISTINCT FROM %s",
            (NAMESPACE, NAMESPACE + 1, own),
        ).fetchone()
    return bool(row and row[0])


def prepare(url: str) -> str:
    """An empty :data:`BUILDING` schema (a previous one dropped); returns ``url`` searching
    it, for the :class:`PgIndex` that builds the new catalog."""
    try:
        with _connect(url) as conn, conn.transaction():
            conn.execute(f"DROP SCHEMA IF EXISTS {BUILDING} CASCADE")
            conn.execute(f"CREATE SCHEMA {BUILDING}")
    except psycopg.Error as exc:
        raise pg_error(url, exc, "cannot hold a schema for rebuild-index") from exc
    return in_schema(url, BUILDING)


def switch(url: str) -> str:
    """Put the catalog built in :data:`BUILDING` in place of the live one (see the module
    docstring); returns the schema the old catalog tables were moved to."""
    aside = "vmaccel_broken_" + time.strftime("%Y%m%dt%H%M%Sz", time.gmtime()).lower()
    try:
        with _connect(url) as conn, conn.transaction():
            live = str(conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
            built = _tables(conn, BUILDING)
            old = [t for t in _tables(conn, live) if t in set(built)]
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(aside)))
            for schema, tables, target in ((live, old, aside), (BUILDING, built, live)):
                for table in tables:
                    conn.execute(
                        sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(target)
                        )
                    )
            conn.execute(f"DROP SCHEMA {BUILDING}")
    except psycopg.Error as exc:
        raise pg_error(url, exc, "could not switch to the rebuilt catalog") from exc
    return aside


def _tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
        " AND table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    ).fetchall()
    return [str(r[0]) for r in rows]
