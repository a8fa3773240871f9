"""The SQLite catalog index: :class:`Index` implements
:class:`~vmaccel.catalog.index.protocols.CatalogIndex` over one database file.

The index is a cache of what the packs and backup manifests hold (``repo rebuild-index``
recreates it from them). SQL is written portably (``ON CONFLICT``, ``RETURNING``, no
SQLite-only functions) so a PostgreSQL implementation can follow the same statements.
"""

from __future__ import annotations

from vmaccel.catalog.index.backups import SqliteBackups
from vmaccel.catalog.index.chunks import SqliteChunks
from vmaccel.catalog.index.files import SqliteFiles
from vmaccel.catalog.index.jobs import SqliteJobs
from vmaccel.catalog.index.leases import SqliteLeases
from vmaccel.catalog.index.patterns import SqlitePatterns
from vmaccel.catalog.index.policies import SqlitePolicies
from vmaccel.catalog.index.proxies import SqliteProxies
from vmaccel.catalog.index.reports import SqliteReports
from vmaccel.catalog.index.tokens import SqliteTokens
from vmaccel.catalog.index.users import SqliteUsers


class Index(
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
    SqliteProxies,
):
    """The catalog database of one repository (see
    :class:`~vmaccel.catalog.index.connection.Connection` for opening and thread safety)."""
