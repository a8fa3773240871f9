"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.LeaseIndex`: the
``lease`` table (see docs/format.md and catalog.lease)."""

from __future__ import annotations

from dataclasses import dataclass

from vmaccel.catalog.index.connection import Connection


@dataclass(frozen=True)
class LeaseRow:
    """One writer lease: ``id`` its place in the global order of leases (never reused),
    ``name`` its lock file under ``leases/``, ``started`` UNIX seconds, the holder's ``pid``
    and ``host``, and ``what`` it does (``backup``)."""

    id: int
    name: str
    started: float
    pid: int
    host: str
    what: str


class SqliteLeases(Connection):
    def add_lease(self, name: str, started: float, pid: int, host: str, what: str) -> int:
        """Record a lease whose lock file is held; returns its id (greater than every id
        issued before). Must run inside :meth:`writing`."""
        return self._insert(
            "INSERT INTO lease (name, started, pid, host, what) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (name, started, pid, host, what),
        )

    def delete_lease(self, name: str) -> None:
        """Forget the lease ``name`` (no-op when it is gone). Must run inside :meth:`writing`."""
        self._execute("DELETE FROM lease WHERE name = ?", (name,))

    def leases(self) -> list[LeaseRow]:
        """Every recorded lease, live or stale, by id."""
        rows = self._query("SELECT id, name, started, pid, host, what FROM lease ORDER BY id")
        return [LeaseRow(*r) for r in rows]

    def last_lease_id(self) -> int:
        """The highest lease id ever issued (0 before the first), released leases included.
        Read inside :meth:`writing`, it is the highest at that transaction's commit."""
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'lease'")
        return int(rows[0][0]) if rows else 0
