"""Backup proxies: the ``proxy`` table (migration ``0011_proxies``).

One row per start of a backup proxy (``vmaccel worker``): its ``name``, where it runs
(``host``, ``pid``), what it serves (``datastores``, JSON list; empty: every queue), how many
VMs at once (``max_jobs``), its procrastinate worker id (``worker_id``; NULL until its worker
registered), ``stalled_after`` (seconds of silence after which it counts as stalled) and
``started``, ``last_seen`` (refreshed with every heartbeat), ``stopped`` (NULL while it runs).
Times are UNIX seconds of the catalog database's clock (:meth:`SqliteProxies.clock`), so that
proxies on machines whose clocks differ are judged by one clock.

A name is unique among *live* rows (not stopped, last seen within their ``stalled_after``):
:meth:`SqliteProxies.claim_proxy_name` checks that and adds the row in one write transaction
(write transactions are serial on both engines), so two proxies starting at once with one name
cannot both win. Like the job rows, proxies live in the index only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index.connection import Connection

_SELECT = (
    "SELECT id, name, host, pid, datastores, max_jobs, worker_id, stalled_after, started,"
    " last_seen, stopped FROM proxy"
)


@dataclass(frozen=True)
class NewProxy:
    """A proxy about to start (see the module docstring for the fields' meaning)."""

    name: str
    host: str
    pid: int
    datastores: tuple[str, ...]
    max_jobs: int
    stalled_after: float


@dataclass(frozen=True)
class ProxyRow:
    """One start of one proxy as stored; times in UNIX seconds (database clock)."""

    id: int
    name: str
    host: str
    pid: int
    datastores: tuple[str, ...]
    max_jobs: int
    worker_id: int | None
    stalled_after: float
    started: float
    last_seen: float
    stopped: float | None

    def live(self, now: float) -> bool:
        """Not stopped, and seen within its ``stalled_after`` before ``now``."""
        return self.stopped is None and now - self.last_seen <= self.stalled_after

    @classmethod
    def of(cls, row: Sequence[Any]) -> ProxyRow:
        (id_, name, host, pid, stores, max_jobs, worker, stalled, started, seen, stopped) = row
        return cls(
            int(id_),
            str(name),
            str(host),
            int(pid),
            tuple(str(d) for d in json.loads(str(stores))),
            int(max_jobs),
            None if worker is None else int(worker),
            float(stalled),
            float(started),
            float(seen),
            None if stopped is None else float(stopped),
        )


class SqliteProxies(Connection):
    def clock(self) -> float:
        """The catalog database's time in UNIX seconds (SQLite: this machine's clock)."""
        return time.time()

    def claim_proxy_name(self, new: NewProxy, at: float) -> tuple[ProxyRow, bool]:
        """Record ``new`` as started (and last seen) at ``at``, unless a live row holds its
        name. Returns the row that holds the name and whether it is the new one (False: the
        live holder, nothing changed). Rows of the name that are not live but were never
        stopped (a killed proxy) end, ``stopped`` at ``at``: the name has moved on. Must run
        inside :meth:`writing`."""
        held = [ProxyRow.of(r) for r in self._query(
            _SELECT + " WHERE name = ? AND stopped IS NULL ORDER BY id", (new.name,))]  # fmt: skip
        for row in held:
            if row.live(at):
                return row, False
        for row in held:
            self._execute("UPDATE proxy SET stopped = ? WHERE id = ?", (at, row.id))
        proxy_id = self._insert(
            "INSERT INTO proxy (name, host, pid, datastores, max_jobs, stalled_after, started,"
            " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (new.name, new.host, new.pid, json.dumps(list(new.datastores)), new.max_jobs,
             new.stalled_after, at, at),
        )  # fmt: skip
        added = ProxyRow(proxy_id, new.name, new.host, new.pid, new.datastores, new.max_jobs,
                         None, new.stalled_after, at, at, None)  # fmt: skip
        return added, True

    def touch_proxy(self, proxy_id: int, at: float, worker_id: int | None) -> bool:
        """The proxy was seen at ``at`` (and, when given, its worker id is ``worker_id``);
        False when its row is gone or stopped. Must run inside :meth:`writing`."""
        cur = self._execute(
            "UPDATE proxy SET last_seen = ?, worker_id = COALESCE(?, worker_id)"
            " WHERE id = ? AND stopped IS NULL",
            (at, worker_id, proxy_id),
        )
        return cur.rowcount == 1

    def stop_proxy(self, proxy_id: int, at: float) -> None:
        """The proxy stopped at ``at`` (a stopped row keeps its first time). Must run inside
        :meth:`writing`."""
        self._execute(
            "UPDATE proxy SET stopped = ?, last_seen = ? WHERE id = ? AND stopped IS NULL",
            (at, at, proxy_id),
        )

    def drop_proxies(self, before: float) -> int:
        """Delete the rows of proxies stopped, or last seen, before ``before``; returns how
        many. Must run inside :meth:`writing`."""
        cur = self._execute("DELETE FROM proxy WHERE COALESCE(stopped, last_seen) < ?", (before,))
        return int(cur.rowcount)

    def proxies(self) -> list[ProxyRow]:
        """Every row, by name, then oldest start first."""
        return [ProxyRow.of(r) for r in self._query(_SELECT + " ORDER BY name, id")]

    def proxy(self, proxy_id: int) -> ProxyRow | None:
        rows = self._query(_SELECT + " WHERE id = ?", (proxy_id,))
        return ProxyRow.of(rows[0]) if rows else None


class PgProxies(SqliteProxies):
    def clock(self) -> float:
        """The catalog database server's time in UNIX seconds (one clock for every proxy)."""
        return float(self._query("SELECT EXTRACT(EPOCH FROM clock_timestamp())")[0][0])
