"""The PostgreSQL catalog index: :class:`PgIndex` implements
:class:`~vmaccel.catalog.index.protocols.CatalogIndex` on a PostgreSQL database, with the
same tables and semantics as the SQLite :class:`~vmaccel.catalog.index.sqlite.Index`.

It is the SQLite index's table modules over :class:`~.pgconnection.PgConnection` (one code
path for the statements), plus what differs by engine: ids restored by rebuild-index advance
the identity sequence, and lease ids come from ``lease_counter`` (transactional, like
``sqlite_sequence``) instead of the identity sequence. Many processes on many machines may
open one database at once; their write transactions are serial (the write lock), their
chunk dedup is ``INSERT ... ON CONFLICT`` (a chunk row is stored once, the first pack wins).
"""

from __future__ import annotations

from vmaccel.catalog.index.backups import SqliteBackups
from vmaccel.catalog.index.chunks import SqliteChunks
from vmaccel.catalog.index.files import SqliteFiles
from vmaccel.catalog.index.jobs import SqliteJobs
from vmaccel.catalog.index.leases import SqliteLeases
from vmaccel.catalog.index.patterns import SqlitePatterns
from vmaccel.catalog.index.pgconnection import PgConnection
from vmaccel.catalog.index.policies import SqlitePolicies
from vmaccel.catalog.index.proxies import PgProxies
from vmaccel.catalog.index.records import BackupRow, ImageRow
from vmaccel.catalog.index.reports import SqliteReports
from vmaccel.catalog.index.tokens import SqliteTokens
from vmaccel.catalog.index.users import SqliteUsers


class PgIndex(
    PgConnection,
    SqliteChunks,
    SqliteBackups,
    SqliteLeases,
    SqliteFiles,
    SqliteTokens,
    SqlitePolicies,
    SqliteJobs,
    SqliteUsers,
    SqlitePatterns,
    SqliteReports,
    PgProxies,
):
    """The catalog database of one repository on PostgreSQL (see :class:`PgConnection` for
    opening, transactions, the write lock and thread safety)."""

    def restore_backup(self, row: BackupRow) -> int:
        """As on SQLite (the id is kept); then the identity sequence passes it."""
        backup_id = SqliteBackups.restore_backup(self, row)
        self._advance("backup")
        return backup_id

    def restore_image(self, row: ImageRow) -> int:
        image_id = SqliteBackups.restore_image(self, row)
        self._advance("image")
        return image_id

    def _advance(self, table: str) -> None:
        self._query(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 - constant table
            f" (SELECT GREATEST(MAX(id), 1) FROM {table}))"
        )

    def add_lease(self, name: str, started: float, pid: int, host: str, what: str) -> int:
        """Record a lease; its id is one more than every id issued before (``lease_counter``,
        updated in this transaction). Must run inside :meth:`writing`."""
        lease_id = self._insert("UPDATE lease_counter SET last = last + 1 RETURNING last", ())
        self._execute(
            "INSERT INTO lease (id, name, started, pid, host, what) VALUES (?, ?, ?, ?, ?, ?)",
            (lease_id, name, started, pid, host, what),
        )
        return lease_id

    def last_lease_id(self) -> int:
        """The highest lease id ever issued and committed (0 before the first)."""
        return int(self._query("SELECT last FROM lease_counter")[0][0])

    def _has_tokens(self) -> bool:
        return True  # every PostgreSQL catalog is created with all its migrations

    def _has_users(self) -> bool:
        return True

    def _has_patterns(self) -> bool:
        return True
