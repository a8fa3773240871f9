"""Writer leases: how backups write beside each other and beside gc.

A backup does not take the repository's maintenance lock; it holds a *lease*. Taking one:
create the lock file ``leases/<random>`` (0600, the directory 0700), ``flock`` it exclusively,
then insert its ``lease`` row in one index transaction (:class:`Lease`). The row's id is the
lease's place in one global order (ids only grow, never reused). Releasing: the row is
deleted, the file unlinked, the ``flock`` dropped, in that order.

A lease is *live* iff its file exists and its ``flock`` is held (a non-blocking ``LOCK_SH``
on it fails). On a PostgreSQL catalog, shared by machines that cannot see each other's
``flock``, the holder also takes the session advisory lock ``lease:<name>`` before its row
exists, and a lease is live iff some session holds that lock (catalog.catalogdb).
``flock`` and sessions die with their process, so the lease of a killed writer is *stale*:
:func:`survey` (run by gc, and by each new lease holder) deletes stale rows and their files.
Lock files with no row (a writer killed between the file and the row) are deleted once
nobody holds them and they are older than :data:`ORPHAN_AGE` seconds.

What gc makes of leases (condemned chunks, the deletion rule) is in catalog.gc and
catalog.condemn; the file layout in docs/format.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vmaccel.catalog.catalogdb import HeldLock, SharedLocks
from vmaccel.catalog.durable import create_private_file, make_private_dir
from vmaccel.catalog.index import LeaseIndex, LeaseRow
from vmaccel.catalog.lock import FileLock
from vmaccel.vocabulary.errors import IndexCorrupt, NoSpaceLeft

logger = logging.getLogger(__name__)

LEASES = "leases"  # directory under the repository
ORPHAN_AGE = 3600.0  # seconds before an unlocked lock file with no row is deleted
_VM_PREFIX = "vm-"


def lease_dir(repo_path: Path) -> Path:
    """The lease directory of the repository at ``repo_path``, created (0700) if missing."""
    path = repo_path / LEASES
    make_private_dir(path)
    return path


def vm_lock(repo_path: Path, vm: str, wait: float) -> FileLock:
    """The lock (not yet taken) that keeps two backups of VM ``vm`` from running at once:
    ``leases/vm-<sha256 of the name>.lock``; a second backup gets
    :class:`~vmaccel.vocabulary.errors.RepositoryLocked` at once or after ``wait`` seconds."""
    digest = hashlib.sha256(vm.encode()).hexdigest()
    path = lease_dir(repo_path) / f"{_VM_PREFIX}{digest}.lock"
    return FileLock(path, exclusive=True, wait=wait, what=f"writer backing up {vm!r}")


def is_held(path: Path) -> bool:
    """Whether someone holds an ``flock`` on ``path`` (False when the file is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False


class Lease:
    """One writer's lease on the repository at ``repo_path`` (see the module docstring).
    ``id`` is valid between :meth:`acquire` and :meth:`release`. Use as a context manager."""

    def __init__(self, repo_path: Path, index: LeaseIndex, what: str) -> None:
        self.repo_path, self.index, self.what = repo_path, index, what
        self.name = secrets.token_hex(16)
        self.id = 0
        self._fd: int | None = None
        self._session: HeldLock | None = None  # lease:<name> on a PostgreSQL catalog

    def acquire(self) -> int:
        """Take the lease; returns its id. The ``flock`` is held before the row exists, so a
        row is never taken for stale while its holder lives."""
        path = lease_dir(self.repo_path) / self.name
        fd = create_private_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
            if isinstance(self.index, SharedLocks):
                session = self.index.session_lock(f"lease:{self.name}", "writer")
                session.acquire()
                self._session = session
            with self.index.writing():
                self.id = self.index.add_lease(
                    self.name, time.time(), os.getpid(), socket.gethostname(), self.what
                )
        except BaseException:
            path.unlink(missing_ok=True)
            os.close(fd)
            self._drop_session()
            raise
        self._fd = fd
        survey(self.index, self.repo_path)  # the next lease holder clears stale leases
        logger.debug("lease %d (%s) taken for %s", self.id, self.name, self.what)
        return self.id

    def release(self) -> None:
        """Row deleted, file unlinked, ``flock`` dropped. Idempotent. A row that cannot be
        deleted (a full disk, a damaged index) is left behind: once the ``flock`` is dropped
        it is stale, and the next :func:`survey` removes it."""
        if self._fd is None:
            return
        try:
            with self.index.writing():
                self.index.delete_lease(self.name)
        except (NoSpaceLeft, IndexCorrupt) as exc:
            logger.info("lease %d left for the next writer or gc to clear: %s", self.id, exc)
        try:
            (self.repo_path / LEASES / self.name).unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # drops the flock: the lease is over even if the above failed
            self._fd = None
            self._drop_session()

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.release()
            self._session = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass(frozen=True)
class LeaseSurvey:
    """The leases at one moment: ``last_id`` the highest id issued before ``live`` was read
    (so every lease issued up to ``last_id`` is either in ``live`` or was over when it was
    read); ``cleared`` how many stale leases this survey removed."""

    last_id: int
    live: tuple[LeaseRow, ...]
    cleared: int

    @property
    def live_ids(self) -> frozenset[int]:
        return frozenset(lease.id for lease in self.live)


def survey(index: LeaseIndex, repo_path: Path) -> LeaseSurvey:
    """Read the highest issued lease id, then every lease row; keep the live ones, delete the
    stale ones (row, then file) and lock files no row names that nobody holds and that are
    older than :data:`ORPHAN_AGE`."""
    last_id = index.last_lease_id()  # first: a lease issued after it has a greater id
    rows = index.leases()
    directory = repo_path / LEASES
    live = [r for r in rows if _is_live(index, directory, r)]
    stale = [r for r in rows if r not in live]
    if stale:
        with index.writing():
            for r in stale:
                index.delete_lease(r.name)
        for r in stale:
            logger.info(  # not a warning: gc reports it, and a full disk leaves such rows too
                "cleared the stale lease %d of %s (pid %d on %s, started %.0f): its writer "
                "ended without removing it",
                r.id, r.what, r.pid, r.host, r.started,
            )  # fmt: skip
            (directory / r.name).unlink(missing_ok=True)
    _clear_orphan_files(directory, {r.name for r in rows})
    return LeaseSurvey(last_id, tuple(live), len(stale))


def _is_live(index: LeaseIndex, directory: Path, row: LeaseRow) -> bool:
    if isinstance(index, SharedLocks):
        return index.lock_held(f"lease:{row.name}")
    return is_held(directory / row.name)


def _clear_orphan_files(directory: Path, named: set[str]) -> None:
    if not directory.is_dir():
        return
    old = time.time() - ORPHAN_AGE
    for entry in directory.iterdir():
        if entry.name in named or entry.name.startswith(_VM_PREFIX):
            continue
        try:
            if entry.stat().st_mtime < old and not is_held(entry):
                entry.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
