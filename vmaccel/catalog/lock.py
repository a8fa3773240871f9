"""Repository locks: ``flock`` on files of the repository.

* ``lock`` -- maintenance (gc, prune, rebuild-index, and ``Repository.open(write=True)``):
  exclusive, one at a time; a second gets :class:`RepositoryLocked` at once or after waiting
  ``wait`` seconds.
* ``writers.lock`` -- backups share it for their whole run; rebuild-index takes it
  exclusively (it replaces the index). A backup does not take ``lock``: it holds a writer
  lease (catalog.lease) and runs beside other backups and beside gc and prune (gc relies
  on condemned chunks and the leases, catalog.condemn, never on excluding backups).
* ``leases/vm-<sha256>.lock`` -- one per VM: two backups of one VM never run at once.
* ``readers.lock`` -- readers (mount, restore, verify) and backups share it; gc deletes pack
  files only while it can take it exclusively, so a reader never loses a pack under its feet.

``flock`` locks die with their process, so a killed holder never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from vmaccel.vocabulary.errors import RepositoryLocked


class FileLock:
    """An ``flock`` on one file. Use as a context manager."""

    def __init__(self, path: Path, exclusive: bool, wait: float = 0.0, what: str = "") -> None:
        self.path, self.exclusive, self.wait = path, exclusive, wait
        self._what = what or ("writer" if exclusive else "reader")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RepositoryLocked(
                        f"the repository is locked by another {self._what} ({self.path}); "
                        "wait for it to finish or pass --lock-wait SECONDS"
                    ) from None
                time.sleep(0.1)
        self._fd = fd

    def try_acquire(self) -> bool:
        """Acquire without waiting; False if someone else holds a conflicting lock."""
        try:
            wait, self.wait = self.wait, 0.0
            self.acquire()
            return True
        except RepositoryLocked:
            return False
        finally:
            self.wait = wait

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
