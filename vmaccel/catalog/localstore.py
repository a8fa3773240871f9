"""The object store in a local directory: the repository's own directory.

Key ``a/b/c`` is the file ``<root>/a/b/c``; every file is created 0600 and every directory
0700 (see :mod:`vmaccel.catalog.durable`), so repositories written before this module open
unchanged. Uploads are staged in ``<root>/packs/tmp/<last key component>`` (the layout packs
always had) and committed by a hard link, never a copy: staging and objects share one
filesystem. Write order of every put and commit: file fsync -> its name linked (or renamed)
into place -> directory fsync; only then does the call return.

The root also holds the index and the lock files (``index.db``, ``lock``, ...), which are not
objects: the repository never lists the root itself, only ``packs/`` and ``backups/``.
Names starting with ``.`` are the temp files of puts in flight, never listed.

Ranged reads use ``pread`` on descriptors cached per object (at most ``MAX_OPEN``, least
recently used first out), so restores and mounts do not open a pack per chunk; whole-object
reads (manifests, config, key) open and close their file. The cache is why reads stay as fast
as before the seam; it needs no method of its own beyond ``close``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from vmaccel.catalog.durable import (
    PRIVATE_DIR,
    create_private_file,
    fsync_dir,
    make_private_dir,
    publish,
    write_file_durably,
)
from vmaccel.catalog.objectstore import (
    ObjectExists,
    ObjectInfo,
    ObjectMissing,
    StagedUpload,
    check_key,
)

STAGING = "packs/tmp"


def _private_opener(path: str, flags: int) -> int:
    """``open()``'s opener for a staging file: created 0600, never an existing one."""
    return create_private_file(Path(path))


def _taken(key: str) -> ObjectExists:
    return ObjectExists(f"object {key} exists already; it is never overwritten")


class _LocalUpload:
    """An upload staged in a local file (see :class:`~vmaccel.catalog.objectstore.Upload`)."""

    def __init__(self, key: str, staging: Path, final: Path, store: LocalObjectStore) -> None:
        self.key, self._staging, self._final, self._store = key, staging, final, store
        self.path = str(staging)
        # Opened by path so that the stream's name, in the CLI's error messages, is the file.
        self.stream: BinaryIO = open(staging, "wb", opener=_private_opener)  # noqa: SIM115

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        self._store.make_dirs(self._final.parent)
        try:
            publish(self._staging, self._final, replace=False)
        except FileExistsError:
            raise _taken(self.key) from None

    def abort(self) -> None:
        try:
            self.stream.close()  # flushes what is buffered: may fail again on a full disk
        except OSError:
            pass  # the bytes are being thrown away; removing the file is what matters
        finally:
            self._staging.unlink(missing_ok=True)


class LocalObjectStore:
    """Objects as files under ``root`` (see the module docstring). Thread safe."""

    MAX_OPEN = 64
    lock_seconds = 0  # a directory has no Object Lock

    def __init__(self, root: Path, staging: str = STAGING) -> None:
        self.root = root
        self._staging_key = check_key(staging)
        self._staging = root / staging
        self._fds: OrderedDict[str, list[int]] = OrderedDict()  # key -> [fd, readers]
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        """The file that holds ``key`` (for this implementation and its tests only)."""
        check_key(key)
        if key == self._staging_key or key.startswith(self._staging_key + "/"):
            raise ValueError(f"object key {key!r} lies in the staging area")
        return self.root / key

    def make_layout(self, prefixes: Iterable[str]) -> None:
        """Create the root and the directories of ``prefixes`` (``packs/``), all 0700, so an
        empty repository shows its layout. The root's mode is set even when it existed."""
        make_private_dir(self.root)
        self.root.chmod(PRIVATE_DIR)
        for prefix in prefixes:
            self.make_dirs(self.root / check_key(prefix.rstrip("/")))

    def make_dirs(self, directory: Path) -> None:
        """Create ``directory`` (below the root) and its missing parents, each 0700."""
        rel = directory.relative_to(self.root)
        for part in [*reversed(rel.parents[:-1]), rel] if rel.parts else []:
            make_private_dir(self.root / part)

    # -- writing --------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, replace: bool = False) -> None:
        final = self.path(key)
        self.make_dirs(final.parent)
        try:
            write_file_durably(final, data, replace=replace)
        except FileExistsError:
            raise _taken(key) from None

    def stage(self, key: str) -> _LocalUpload:
        final = self.path(key)
        self.make_dirs(self._staging)
        return _LocalUpload(key, self._staging / final.name, final, self)

    def delete(self, key: str) -> bool:
        path = self.path(key)
        self._forget(key)
        path.unlink(missing_ok=True)
        try:
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass  # no directory, no entry to make durable
        return True

    def staged(self) -> list[StagedUpload]:
        try:
            entries = list(os.scandir(self._staging))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # committed or discarded meanwhile
            out.append(StagedUpload(e.name, st.st_size, st.st_mtime))
        return sorted(out, key=lambda s: s.name)

    def discard_staged(self, name: str) -> None:
        if "/" in check_key(name):
            raise ValueError(f"invalid staged upload name {name!r}")
        (self._staging / name).unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            try:
                with open(self.path(key), "rb") as f:
                    f.seek(offset)
                    return f.read()
            except (FileNotFoundError, NotADirectoryError):
                raise self._missing(key) from None
        fd = self._acquire(key)
        try:
            return os.pread(fd, length, offset)
        finally:
            self._release(key)

    def prefetch(self, key: str, offset: int, length: int) -> None:
        """``posix_fadvise(WILLNEED)``: the kernel starts reading the range into the page
        cache and returns; a cold restore's preads then find it there."""
        try:
            fd = self._acquire(key)
        except OSError:  # missing, unreadable, out of descriptors: the read reports it
            return
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint only: the read that follows reports any real problem
        finally:
            self._release(key)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        head = prefix.rpartition("/")[0]
        found = [i for i in self._walk(self.root / head if head else self.root, head)]
        return iter(sorted((i for i in found if i.key.startswith(prefix)), key=lambda i: i.key))

    def _walk(self, directory: Path, rel: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            key = f"{rel}/{e.name}" if rel else e.name
            if e.name.startswith(".") or key == self._staging_key:
                continue
            if e.is_dir(follow_symlinks=False):
                yield from self._walk(Path(e.path), key)
            elif e.is_file(follow_symlinks=False):
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted meanwhile
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def protect(self, keys: Iterable[str], since: float) -> int:
        return 0  # nothing to lock

    def expire_deletes(self) -> tuple[int, int]:
        return 0, 0  # every delete was immediate

    def _missing(self, key: str) -> ObjectMissing:
        return ObjectMissing(f"{key} is missing from {self.root}")

    # -- the descriptor cache -------------------------------------------------------------

    def _acquire(self, key: str) -> int:
        """Return an open descriptor for ``key``, pinned until :meth:`_release`."""
        with self._lock:
            slot = self._fds.get(key)
            if slot is None:
                try:
                    fd = os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC)
                except (FileNotFoundError, NotADirectoryError):
                    raise self._missing(key) from None
                slot = self._fds[key] = [fd, 0]
                self._evict()
            self._fds.move_to_end(key)
            slot[1] += 1
            return slot[0]

    def _release(self, key: str) -> None:
        with self._lock:
            slot = self._fds.get(key)
            if slot is not None:
                slot[1] -= 1

    def _evict(self) -> None:
        # Only descriptors nobody is reading from are closed: a pread on a closed (and
        # possibly reused) descriptor would read another file.
        excess = len(self._fds) - self.MAX_OPEN
        for victim in [k for k, (_, refs) in self._fds.items() if refs == 0][: max(excess, 0)]:
            os.close(self._fds.pop(victim)[0])

    def _forget(self, key: str) -> None:
        with self._lock:
            slot = self._fds.get(key)
            if slot is not None and slot[1] == 0:
                del self._fds[key]
                os.close(slot[0])
