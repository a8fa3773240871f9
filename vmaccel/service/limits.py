"""Global limits that hold across every run on this host: open backup snapshots per datastore.

A snapshot makes every write of its VM go to a delta disk on the datastore; many open at once
on one datastore slow every VM on it. The limit is per datastore of a vCenter and holds across
VMs of one run, concurrent runs of the CLI, and (later) every policy of the daemon: a slot is
an exclusive ``flock`` on one of N files in ``<config dir>/slots/``; the kernel releases it
when the holder exits, even by kill -9, so a crashed run never leaks a slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

SNAPSHOTS_PER_DATASTORE = 4
# VMs one run (a CLI backup, a policy's run) backs up at once, by default: two overlap one VM's
# waits on vCenter (snapshot tasks, property reads) with another's copy. More add memory (a
# few tens of MiB per VM being copied) and, on a small backup server, no speed.
VMS_AT_ONCE = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Slots(Protocol):
    """Counted slots by name: ``hold(names)`` takes one slot of each name for the block."""

    def hold(self, names: Iterable[str]) -> AbstractContextManager[None]: ...


class DatastoreSlots:
    """At most ``per_datastore`` holders per ``(vcenter, datastore)`` at once, host-wide.

    ``checkpoint`` is called while waiting (every ``poll`` seconds) and may raise to give up,
    e.g. when the run is stopped."""

    def __init__(
        self,
        directory: Path,
        vcenter: str,
        per_datastore: int = SNAPSHOTS_PER_DATASTORE,
        checkpoint: Callable[[], None] = lambda: None,
        poll: float = 0.2,
    ) -> None:
        if per_datastore < 1:
            raise ValueError("per_datastore must be at least 1")
        self.directory, self.vcenter, self.per_datastore = directory, vcenter, per_datastore
        self.checkpoint, self.poll = checkpoint, poll

    @contextlib.contextmanager
    def hold(self, datastores: Iterable[str]) -> Iterator[None]:
        """One slot on each of ``datastores`` (taken in sorted order, so two holders never
        wait for each other crosswise), released on exit."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for ds in sorted(set(datastores)):
                fd = self._acquire(ds)
                stack.callback(os.close, fd)  # closing the descriptor drops the lock
            yield

    def _acquire(self, datastore: str) -> int:
        paths = [self._slot(datastore, i) for i in range(self.per_datastore)]
        while True:
            for path in paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return fd
            self.checkpoint()
            time.sleep(self.poll)

    def _slot(self, datastore: str, index: int) -> Path:
        key = f"{self.vcenter}\0{datastore}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        readable = _UNSAFE.sub("_", datastore)[:40]
        return self.directory / f"{readable}-{digest}.{index}.slot"
