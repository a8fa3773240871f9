"""Where pack files live. Nothing outside this module knows a pack's path.

The :class:`PackStore` protocol is deliberately narrow (create, read a range, size, list,
delete) so an object store can implement it later. :class:`LocalPackStore` keeps packs in
``<repo>/packs/<first two hex digits>/<name>`` and builds new ones under ``packs/tmp/``; a pack
appears under its final name only after its bytes and its directory entry are durable.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from vmaccel.catalog.durable import create_private_file, fsync_dir, make_private_dir
from vmaccel.vocabulary.errors import ChunkMissing


class PackSink(Protocol):
    """A pack being written. ``commit`` makes it durable and visible; ``abort`` discards it."""

    @property
    def stream(self) -> BinaryIO: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class PackStore(Protocol):
    def create(self, name: str) -> PackSink: ...

    def read(self, name: str, offset: int, length: int) -> bytes: ...

    def size(self, name: str) -> int: ...

    def names(self) -> Iterator[str]: ...

    def mtime(self, name: str) -> float: ...

    def delete(self, name: str) -> None: ...

    def open(self, name: str) -> BinaryIO: ...


def _private_opener(path: str, flags: int) -> int:
    """``open()``'s opener for a new pack file: created 0600, never an existing one."""
    return create_private_file(Path(path))


class _LocalSink:
    def __init__(self, tmp: Path, final: Path) -> None:
        self._tmp, self._final = tmp, final
        # Mode 0600 whatever the umask (see catalog.durable); closed in commit/abort. Opened
        # by path so that the stream's name, in the CLI's error messages, is the pack file.
        self.stream: BinaryIO = open(tmp, "wb", opener=_private_opener)  # noqa: SIM115

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        make_private_dir(self._final.parent)
        self._tmp.replace(self._final)
        fsync_dir(self._final.parent)

    def abort(self) -> None:
        self.stream.close()
        self._tmp.unlink(missing_ok=True)


class LocalPackStore:
    """Packs in a local directory. Reads are thread safe (``pread`` on cached descriptors)."""

    MAX_OPEN = 64

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._fds: OrderedDict[str, list[int]] = OrderedDict()  # name -> [fd, readers]
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def create(self, name: str) -> PackSink:
        make_private_dir(self.root)
        make_private_dir(self._tmp)
        return _LocalSink(self._tmp / name, self.path(name))

    def read(self, name: str, offset: int, length: int) -> bytes:
        fd = self._acquire(name)
        try:
            data = os.pread(fd, length, offset)
        finally:
            self._release(name)
        if len(data) != length:
            raise ChunkMissing(
                f"pack {name} is shorter than the index says "
                f"(wanted {length} bytes at {offset}, got {len(data)})"
            )
        return data

    def size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            raise ChunkMissing(f"pack {name} is missing") from None

    def mtime(self, name: str) -> float:
        return self.path(name).stat().st_mtime

    def names(self) -> Iterator[str]:
        for sub in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for p in sorted(sub.iterdir()):
                if not p.name.startswith("."):
                    yield p.name

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self.path(name), "rb")
        except FileNotFoundError:
            raise ChunkMissing(f"pack {name} is missing") from None

    def delete(self, name: str) -> None:
        self._forget(name)
        self.path(name).unlink(missing_ok=True)
        fsync_dir(self.path(name).parent)

    def temporary_names(self) -> list[str]:
        """Packs left half-written by an interrupted writer (garbage by construction)."""
        return sorted(p.name for p in self._tmp.iterdir()) if self._tmp.is_dir() else []

    def delete_temporary(self, name: str) -> None:
        (self._tmp / name).unlink(missing_ok=True)

    def temporary_stat(self, name: str) -> tuple[int, float]:
        """(size in bytes, modification time in UNIX seconds) of a temporary pack."""
        st = (self._tmp / name).stat()
        return st.st_size, st.st_mtime

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _acquire(self, name: str) -> int:
        """Return an open descriptor for ``name``, pinned until :meth:`_release`."""
        with self._lock:
            slot = self._fds.get(name)
            if slot is None:
                try:
                    fd = os.open(self.path(name), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise ChunkMissing(f"pack {name} is missing") from None
                slot = self._fds[name] = [fd, 0]
                self._evict()
            self._fds.move_to_end(name)
            slot[1] += 1
            return slot[0]

    def _release(self, name: str) -> None:
        with self._lock:
            slot = self._fds.get(name)
            if slot is not None:
                slot[1] -= 1

    def _evict(self) -> None:
        # Only descriptors nobody is reading from are closed: a pread on a closed (and
        # possibly reused) descriptor would read another file.
        excess = len(self._fds) - self.MAX_OPEN
        for victim in [n for n, (_, refs) in self._fds.items() if refs == 0][: max(excess, 0)]:
            os.close(self._fds.pop(victim)[0])

    def _forget(self, name: str) -> None:
        with self._lock:
            slot = self._fds.get(name)
            if slot is not None and slot[1] == 0:
                del self._fds[name]
                os.close(slot[0])
