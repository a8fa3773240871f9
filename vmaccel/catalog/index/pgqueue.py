"""The catalog database's side of the proxies' job queue: the few statements the queue needs
beyond procrastinate's own API (its tables created once, and the named lock under which one
proxy at a time takes over stalled jobs)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg

from vmaccel.catalog.index.pgconnection import NAMESPACE, lock_key, pg_error

_SCHEMA_LOCK = "queue-schema"


def ensure_queue_tables(url: str, table: str, schema_sql: str) -> bool:
    """Run ``schema_sql`` (the queue's DDL) unless ``table`` exists; True when it ran. Safe
    from many processes at once: a session advisory lock serialises the check and the DDL."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, lock_key(_SCHEMA_LOCK)))
            row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if row and row[0]:
                return False
            conn.execute(schema_sql.encode())
            return True
    except psycopg.Error as exc:
        raise pg_error(url, exc, "cannot hold the job queue") from exc


@contextlib.asynccontextmanager
async def try_named_lock(url: str, name: str) -> AsyncIterator[bool]:
    """Try the session advisory lock ``name`` without waiting; yields whether it is held.
    The lock ends with the block (its own connection closes), or with the process."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise pg_error(url, exc, "cannot be reached for a lock") from exc
    try:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                 (NAMESPACE, lock_key(name)))  # fmt: skip
        row = await cur.fetchone()
        yield bool(row and row[0])
    finally:
        await conn.close()
