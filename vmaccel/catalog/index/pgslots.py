"""Counted slots on the PostgreSQL catalog: at most N holders of one name at once, across
every process on every machine that shares the catalog database.

The host-local limits (:mod:`vmaccel.service.limits`) are ``flock`` slots in the config
directory; backup proxies on several machines cannot see each other's files, so on a shared
catalog the same limits are session advisory locks: slot ``i`` of a name is the lock
``(SLOTS, crc31(scope, name, i))``, held on a connection of the holder's own. The server drops
a session's locks when its connection ends, so the slots of a killed proxy (kill -9, a lost
machine once TCP keepalive notices) come free without anyone cleaning up. Two names whose keys
collide share their slots (a stricter limit, never a looser one).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg

from vmaccel.catalog.index.pgconnection import NAMESPACE, lock_key, pg_error

SLOTS = NAMESPACE + 1  # first advisory-lock key of every slot (the named locks use NAMESPACE)


class PgSlots:
    """At most ``per_name`` holders per name of ``scope`` at once (e.g. scope
    ``datastore/VC``, names the datastores). ``checkpoint`` is called while waiting (every
    ``poll`` seconds) and may raise to give up. Same interface as
    :class:`~vmaccel.service.limits.DatastoreSlots`."""

    def __init__(
        self,
        url: str,
        scope: str,
        per_name: int,
        checkpoint: Callable[[], None] = lambda: None,
        poll: float = 0.2,
    ) -> None:
        if per_name < 1:
            raise ValueError("per_name must be at least 1")
        self.url, self.scope, self.per_name = url, scope, per_name
        self.checkpoint, self.poll = checkpoint, poll

    @contextlib.contextmanager
    def hold(self, names: Iterable[str]) -> Iterator[None]:
        """One slot of each of ``names`` (taken in sorted order, so two holders never wait
        for each other crosswise), held until the block ends."""
        wanted = sorted(set(names))
        if not wanted:
            yield
            return
        conn = self._connect()
        try:
            for name in wanted:
                self._acquire(conn, name)
            yield
        finally:
            conn.close()  # ends the session: every slot it holds is free

    def _connect(self) -> psycopg.Connection[Any]:
        # TCP keepalive: a vanished holder's session (and its slots) ends in about a minute.
        try:
            conninfo = psycopg.conninfo.make_conninfo(self.url, keepalives=1, keepalives_idle=30,
                                                      keepalives_interval=10,
                                                      keepalives_count=3)  # fmt: skip
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise pg_error(self.url, exc, "cannot be reached for a limit slot") from exc

    def _acquire(self, conn: psycopg.Connection[Any], name: str) -> None:
        keys = [lock_key(f"{self.scope}\0{name}\0{i}") for i in range(self.per_name)]
        while True:
            for key in keys:
                try:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (SLOTS, key))
                    got = row.fetchone()
                except psycopg.Error as exc:
                    raise pg_error(self.url, exc, "lost its limit slot session") from exc
                if got and got[0]:
                    return
            self.checkpoint()
            time.sleep(self.poll)
