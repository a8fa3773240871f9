"""Repository locks: one writer at a time, any number of readers alongside it.

Writers (backup, prune, gc, rebuild-index) hold an exclusive ``flock`` on ``<repo>/lock`` for
their whole run; a second writer gets :class:`RepositoryLocked` at once or after waiting
``wait`` seconds. Readers (mount, restore, verify) hold a shared ``flock`` on
``<repo>/readers.lock``; gc deletes pack files only while it can take that lock exclusively,
so a reader never loses a pack under its feet. ``flock`` locks die with their process, so a
killed writer never leaves a stale lock behind.
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
