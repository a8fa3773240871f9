"""The file tree of one guest filesystem, read without mounting it: `FileSystem` and `FileStat`.

Contract shared by every implementation (ext2/3/4, XFS, NTFS, FAT):
- Paths are POSIX strings from the filesystem root: "/", "/etc/passwd". Empty components and
  "." are ignored; ".." is refused (GuestFsError): this API never resolves anything, so a path
  names exactly one directory entry. Symlinks are never followed (`stat` is an lstat).
- Names are `str`. Where the filesystem stores bytes (ext, XFS), undecodable UTF-8 is kept with
  ``surrogateescape`` (as `os.fsdecode` does) and `FileStat.name_bytes` holds the exact bytes;
  a path given back to the API uses the same convention.
- `open` returns a readable, seekable binary stream that reads the volume lazily (memory is
  O(extent count), never O(file size)) and returns zeros for holes and unwritten extents.
- Errors: `PathNotFoundError` (also a `FileNotFoundError`), `NotADirectoryPathError` (also a
  `NotADirectoryError`), `IsADirectoryPathError`, `NotASymlinkError`, all `GuestFsError`s; any
  damaged metadata is a plain `GuestFsError` naming the path, never a parser's IndexError.
  Damage stays local: `listdir` still lists a child whose own metadata is unreadable, with
  `FileStat.error` set, and only that child's `stat`/`open` raise.
- Not thread-safe: a filesystem and its streams seek one shared volume stream. Use one
  `FileSystem` per thread (each over its own disk handle).
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.placement import Placement

FileKind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class FileStat:
    """One directory entry and its metadata (an lstat).

    `size` is in bytes (a symlink's is its target length; a directory's is filesystem-specific).
    `mode` holds the permission bits (mask 0o7777) or None where the filesystem has none (FAT,
    NTFS). Times are nanoseconds since the Unix epoch, UTC, or None where not recorded; FAT
    stores local time without a zone, reported as if it were UTC. `inode` identifies the file
    within its filesystem (hard links share it; FAT, which has no inodes, uses the directory
    entry's byte offset). `target` is a symlink's text, unresolved. `error` is set only on
    entries returned by `listdir` whose own metadata is unreadable (then `kind` is "other").
    """

    name: str
    kind: FileKind
    size: int
    inode: int
    nlink: int = 1
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    target: str | None = None
    name_bytes: bytes | None = None
    error: str | None = None


class PosixInode(Protocol):
    """The POSIX fields an inode parser hands over (ext4 and XFS inode records)."""

    @property
    def mode(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def nlink(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...

    @property
    def atime_ns(self) -> int: ...

    @property
    def ctime_ns(self) -> int: ...


def posix_stat(
    name: str,
    name_bytes: bytes | None,
    inode: int,
    ino: PosixInode,
    kind: FileKind,
    size: int,
    target: str | None,
) -> FileStat:
    """The FileStat of a filesystem with POSIX inodes (permission bits only in ``mode``)."""
    return FileStat(
        name=name,
        kind=kind,
        size=size,
        inode=inode,
        nlink=ino.nlink,
        mode=stat.S_IMODE(ino.mode),
        uid=ino.uid,
        gid=ino.gid,
        mtime_ns=ino.mtime_ns,
        atime_ns=ino.atime_ns,
        ctime_ns=ino.ctime_ns,
        target=target,
        name_bytes=name_bytes,
    )


class FileSystem(Protocol):
    """A read-only view of one guest filesystem's tree (see the module docstring)."""

    @property
    def fstype(self) -> str:
        """The guestfs fstype name: "ext2", "ext3", "ext4", "xfs", "ntfs" or "vfat"."""
        ...

    @property
    def label(self) -> str | None:
        """The volume label, or None if the filesystem has none."""
        ...

    def stat(self, path: str) -> FileStat:
        """Metadata of the entry at `path`, without following a final symlink."""
        ...

    def listdir(self, path: str) -> list[FileStat]:
        """The entries of directory `path` (without "." and ".."), sorted by name."""
        ...

    def open(self, path: str) -> BinaryIO:
        """A lazily read stream of regular file `path`'s contents."""
        ...

    def readlink(self, path: str) -> str:
        """The target text of symlink `path`."""
        ...

    def placement(self) -> Placement | None:
        """Where the filesystem keeps its metadata (:mod:`vmaccel.guestfs.placement`), or
        None when it cannot say."""
        ...


class PathNotFoundError(GuestFsError, FileNotFoundError):
    """No entry with that path."""

    errno = errno.ENOENT  # what the error tree (VmaccelError.errno) reads

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOENT, message)

    def __str__(self) -> str:
        return str(self.strerror)


class NotADirectoryPathError(GuestFsError, NotADirectoryError):
    """A directory was required (listdir, or a path component) but the entry is not one."""

    errno = errno.ENOTDIR  # what the error tree (VmaccelError.errno) reads

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOTDIR, message)

    def __str__(self) -> str:
        return str(self.strerror)


class IsADirectoryPathError(GuestFsError, IsADirectoryError):
    """`open` was asked for a directory."""

    errno = errno.EISDIR  # what the error tree (VmaccelError.errno) reads

    def __init__(self, message: str) -> None:
        super().__init__(errno.EISDIR, message)

    def __str__(self) -> str:
        return str(self.strerror)


class NotASymlinkError(GuestFsError, OSError):
    """`readlink` was asked for something that is not a symlink (errno EINVAL, as readlink(2))."""

    errno = errno.EINVAL  # what the error tree (VmaccelError.errno) reads

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)

    def __str__(self) -> str:
        return str(self.strerror)


def split_path(path: str) -> list[str]:
    """The components of absolute POSIX `path`; raises `GuestFsError` for ".." or a relative
    path, since this API resolves nothing (guest paths are hostile input)."""
    if not path.startswith("/"):
        raise GuestFsError(f"path must be absolute: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise GuestFsError(f"path must not contain '..': {path!r}")
    return parts
