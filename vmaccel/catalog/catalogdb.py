"""Where the catalog index of a repository lives, and the locks that must hold across machines.

A repository directory without ``catalog.json`` keeps its index in ``index.db`` (SQLite, the
embedded default). With one, the index is a PostgreSQL database (catalog.index.postgres),
shared by every process and machine whose repository directory names it. ``catalog.json``
(written once by ``repo init --catalog``, mode 0600) holds no secret::

    {"kind": "postgresql", "url": "postgresql://USER@HOST:PORT/DB?sslmode=..."}

The password is never stored by vmaccel: libpq reads it from ``PGPASSWORD``, ``~/.pgpass``
or a service file (``postgresql:///?service=NAME``); a URL holding one is refused.

Locks: on PostgreSQL the repository's maintenance lock and the per-VM backup lock are also
session advisory locks (:class:`~vmaccel.catalog.index.pgconnection.SessionLock`), taken
beside the local lock files, so a second maintenance holder or a second backup of one VM on
another machine is refused (or waits) as it is on one machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vmaccel.catalog.durable import create_private_file, write_file_durably
from vmaccel.catalog.index import CatalogIndex, Index
from vmaccel.vocabulary.errors import IndexCorrupt, RepositoryExists, UsageError

if TYPE_CHECKING:
    from vmaccel.catalog.index.pgslots import PgSlots

# psycopg and the PostgreSQL index are imported only when a repository names one: the
# embedded default does not pay their import time.

FILE = "catalog.json"
SCHEMES = ("postgresql://", "postgres://")
WHERE_PASSWORDS_COME_FROM = "PGPASSWORD, ~/.pgpass or a libpq service file"


def check_url(url: str) -> str:
    """``url`` if it names a PostgreSQL catalog without a password (else :class:`UsageError`)."""
    import psycopg

    if not url.startswith(SCHEMES):
        raise UsageError(f"--catalog takes a postgresql://... URL, not {url!r}")
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"the catalog URL cannot be parsed: {exc}") from exc
    if info.get("password"):
        raise UsageError(
            f"the catalog URL holds a password: vmaccel never stores one; give it through"
            f" {WHERE_PASSWORDS_COME_FROM} and leave it out of the URL"
        )
    return url


def catalog_url(path: Path) -> str | None:
    """The PostgreSQL catalog of the repository at ``path`` (None: its ``index.db``)."""
    try:
        doc = json.loads((path / FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{path / FILE} cannot be read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "postgresql":
        raise IndexCorrupt(f"{path / FILE} names no PostgreSQL catalog")
    return str(doc["url"])


def create_catalog(path: Path, url: str) -> None:
    """Record ``url`` in ``catalog.json`` and create the catalog's tables in its database,
    which must hold no catalog yet (:class:`RepositoryExists`)."""
    from vmaccel.catalog.index.postgres import PgIndex

    index = PgIndex(check_url(url), create=True)
    try:
        if index.holds_catalog():
            raise RepositoryExists(
                f"the database {index.path} already holds a vmaccel catalog; use an empty one"
            )
        index.migrate()
    finally:
        index.close()
    write_file_durably(path / FILE, json.dumps({"kind": "postgresql", "url": url}).encode())


def open_index(path: Path, index_file: Path, create: bool) -> CatalogIndex:
    """The catalog index of the repository at ``path``: its PostgreSQL database, or the
    SQLite file ``index_file`` (``create``: see :class:`~vmaccel.catalog.index.Index`)."""
    url = catalog_url(path)
    if url is None:
        if create and not index_file.exists():
            os.close(create_private_file(index_file))  # 0600; SQLite only opens it
        return Index(index_file, create=create)
    from vmaccel.catalog.index.postgres import PgIndex

    if create:  # rebuild-index: a new catalog beside the live one (catalog.index.pgrebuild)
        from vmaccel.catalog.index.pgrebuild import prepare

        return PgIndex(prepare(url), create=True)
    return PgIndex(url)


class HeldLock(Protocol):
    """A lock to take and drop (:meth:`acquire` raises
    :class:`~vmaccel.vocabulary.errors.RepositoryLocked` when another holds it)."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...


@runtime_checkable
class SharedLocks(Protocol):
    """An index that also holds locks visible to every machine (the PostgreSQL one):
    ``session_lock`` a lock to take (see
    :class:`~vmaccel.catalog.index.pgconnection.SessionLock`), ``lock_held`` whether any
    session holds one."""

    def session_lock(self, name: str, what: str, wait: float = 0.0) -> HeldLock: ...
    def lock_held(self, name: str) -> bool: ...


def shared_lock(
    index: CatalogIndex, name: str, what: str, wait: float
) -> AbstractContextManager[Any]:
    """The cross-machine lock ``name`` (not taken yet) on a PostgreSQL catalog; on SQLite a
    no-op (the lock files are enough: one SQLite catalog is one machine's)."""
    if isinstance(index, SharedLocks):
        return index.session_lock(name, what, wait)
    return nullcontext()


class _Pair:
    """Two locks taken in order and dropped in reverse (a :class:`HeldLock`)."""

    def __init__(self, first: HeldLock, second: HeldLock) -> None:
        self.first, self.second = first, second

    def acquire(self) -> None:
        self.first.acquire()
        try:
            self.second.acquire()
        except BaseException:
            self.first.release()
            raise

    def release(self) -> None:
        try:
            self.second.release()
        finally:
            self.first.release()

    def __enter__(self) -> _Pair:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def with_shared(
    index: CatalogIndex, local: HeldLock, name: str, what: str, wait: float
) -> HeldLock:
    """``local`` (a lock file), and on a PostgreSQL catalog also the session lock ``name``
    taken after it (so that another machine is refused too)."""
    if isinstance(index, SharedLocks):
        return _Pair(local, index.session_lock(name, what, wait))
    return local


def shared_slots(
    index: CatalogIndex, scope: str, per_name: int, checkpoint: Callable[[], None]
) -> PgSlots | None:
    """Counted slots every machine sharing the PostgreSQL catalog of ``index`` sees (see
    :mod:`~vmaccel.catalog.index.pgslots`); None on SQLite, whose limits are the host's."""
    url = getattr(index, "url", None) if isinstance(index, SharedLocks) else None
    if url is None:
        return None
    from vmaccel.catalog.index.pgslots import PgSlots

    return PgSlots(str(url), scope, per_name, checkpoint)
