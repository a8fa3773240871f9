"""Path resolution, caching and error conversion shared by every `FileSystem` adapter.

An adapter implements `Backend` over its parser's node objects (an inode, an MFT record, a
FAT directory entry); `TreeFileSystem` turns that into the path-based `FileSystem` contract.
Directory listings (name -> child) and stats are kept in bounded LRU caches, so walking a tree
reads each directory and inode once, and memory stays bounded whatever the tree's size.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO, Generic, Protocol, TypeVar

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import (
    FileStat,
    IsADirectoryPathError,
    NotADirectoryPathError,
    NotASymlinkError,
    PathNotFoundError,
    split_path,
)
from vmaccel.guestfs.placement import GuardedPlacement, Placement

logger = logging.getLogger(__name__)

N = TypeVar("N")
T = TypeVar("T")
_DIR_CACHE = 256
_STAT_CACHE = 8192
# What parsers raise when they index into bytes from a hostile disk; converted, never leaked.
# TypeError/AttributeError are included because dissect returns None for some damaged fields.
MALFORMED: tuple[type[BaseException], ...] = (
    struct.error,
    IndexError,
    ValueError,
    KeyError,
    OverflowError,
    EOFError,
    ZeroDivisionError,
    RecursionError,
    NotImplementedError,
    TypeError,
    AttributeError,
)


def construct(fstype: str, errors: tuple[type[BaseException], ...], factory: Callable[[], T]) -> T:
    """Call `factory` (an adapter's parser setup), turning parser failures into GuestFsError."""
    try:
        return factory()
    except GuestFsError:
        raise
    except (*errors, *MALFORMED) as exc:
        raise GuestFsError(
            f"{fstype}: unusable filesystem metadata ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class Child(Generic[N]):
    """One directory entry as the backend found it: the name, exact name bytes if the fs stores
    bytes, the parser's node, and its inode number as recorded in the entry (0 if none)."""

    name: str
    name_bytes: bytes | None
    node: N
    inode: int


class Backend(Protocol[N]):
    """What an adapter provides; every method may raise anything in `errors` or `MALFORMED`."""

    fstype: str
    label: str | None
    errors: tuple[type[BaseException], ...]

    def root(self) -> N: ...

    def children(self, node: N, path: str) -> Iterator[Child[N]]:
        """The entries of directory `node`, without "." and ".."."""
        ...

    def stat(self, node: N, name: str, name_bytes: bytes | None) -> FileStat: ...

    def open(self, node: N, st: FileStat, path: str) -> BinaryIO:
        """Contents of the regular file `node` (whose stat is `st`)."""
        ...

    def readlink(self, node: N, st: FileStat) -> str:
        """Target of the symlink `node`; usually `st.target`."""
        ...


class TreeFileSystem(Generic[N]):
    """`vmaccel.guestfs.filesystem.FileSystem` over a `Backend` (see that module for the
    contract)."""

    def __init__(self, backend: Backend[N]) -> None:
        self._backend = backend
        self._malformed = (*backend.errors, *MALFORMED)
        self._dirs: OrderedDict[str, dict[str, Child[N]]] = OrderedDict()
        self._stats: OrderedDict[str, tuple[N, FileStat]] = OrderedDict()
        with self._guard("/"):
            self._root = backend.root()
            self._root_stat = replace(backend.stat(self._root, "", b""), name="")

    @property
    def fstype(self) -> str:
        return self._backend.fstype

    @property
    def label(self) -> str | None:
        return self._backend.label

    def placement(self) -> Placement | None:
        """Where this filesystem keeps its metadata (see :mod:`vmaccel.guestfs.placement`),
        or None when its backend cannot say."""
        backend = self._backend
        if not isinstance(backend, Placement):
            return None
        return GuardedPlacement(backend, self._malformed, self._damaged)

    def stat(self, path: str) -> FileStat:
        return self._resolve(path)[1]

    def listdir(self, path: str) -> list[FileStat]:
        node, st = self._resolve(path)
        prefix = "/".join(["", *split_path(path)])
        out = []
        for name, child in sorted(self._entries(node, st, prefix or "/").items()):
            child_path = f"{prefix}/{name}"
            try:
                out.append(self._child_stat(child, child_path)[1])
            except GuestFsError as exc:
                logger.warning("%s: %s", self.fstype, exc)
                out.append(FileStat(name, "other", 0, child.inode, 0, error=str(exc)))
        return out

    def open(self, path: str) -> BinaryIO:
        node, st = self._resolve(path)
        if st.kind == "dir":
            raise IsADirectoryPathError(f"{self.fstype}: {path} is a directory")
        if st.kind != "file":
            raise GuestFsError(f"{self.fstype}: {path} is a {st.kind}, not a regular file")
        with self._guard(path):
            return self._backend.open(node, st, path)

    def readlink(self, path: str) -> str:
        node, st = self._resolve(path)
        if st.kind != "symlink":
            raise NotASymlinkError(f"{self.fstype}: {path} is not a symlink")
        with self._guard(path):
            return self._backend.readlink(node, st)

    def _resolve(self, path: str) -> tuple[N, FileStat]:
        parts = split_path(path)
        node, st, here = self._root, self._root_stat, ""
        for part in parts:
            entries = self._entries(node, st, here or "/")
            here = f"{here}/{part}"
            child = entries.get(part)
            if child is None:
                raise PathNotFoundError(f"{self.fstype}: no such file or directory: {here}")
            node, st = self._child_stat(child, here)
        return node, st

    def _entries(self, node: N, st: FileStat, path: str) -> dict[str, Child[N]]:
        if st.kind != "dir":
            raise NotADirectoryPathError(f"{self.fstype}: {path} is not a directory")
        cached = self._dirs.get(path)
        if cached is not None:
            self._dirs.move_to_end(path)
            return cached
        with self._guard(path):
            entries = {c.name: c for c in self._backend.children(node, path)}
        self._dirs[path] = entries
        if len(self._dirs) > _DIR_CACHE:
            self._dirs.popitem(last=False)
        return entries

    def _child_stat(self, child: Child[N], path: str) -> tuple[N, FileStat]:
        cached = self._stats.get(path)
        if cached is not None:
            self._stats.move_to_end(path)
            return cached
        try:  # _guard, inlined: this runs once per entry of every listing
            st = self._backend.stat(child.node, child.name, child.name_bytes)
        except GuestFsError:
            raise
        except self._malformed as exc:
            raise self._damaged(path, exc) from exc
        self._stats[path] = (child.node, st)
        if len(self._stats) > _STAT_CACHE:
            self._stats.popitem(last=False)
        return child.node, st

    @contextlib.contextmanager
    def _guard(self, path: str) -> Iterator[None]:
        """Turn a parser's failure on damaged metadata into a GuestFsError naming `path`."""
        try:
            yield
        except GuestFsError:
            raise
        except self._malformed as exc:
            raise self._damaged(path, exc) from exc

    def _damaged(self, path: str, exc: BaseException) -> GuestFsError:
        return GuestFsError(
            f"{self.fstype}: {path}: damaged or unsupported metadata ({type(exc).__name__}: {exc})"
        )
