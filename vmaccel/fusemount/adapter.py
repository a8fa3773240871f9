"""The FUSE operations: a thin translation between FUSE calls and the tree.

Read-only, except that with ``writable`` (``vmaccel mount --writable``) the image files
(``-flat.vmdk``, ``.raw``) take writes, which go to their copy-on-write overlay
(:mod:`vmaccel.fusemount.overlay`); they cannot be truncated, grown or opened with ``O_TRUNC`` /
``O_APPEND``. Descriptors, ``vm.json`` and guest files stay read-only (``EROFS``).

Paths come in as ``str`` (undecodable bytes as surrogates), attributes go out as ``stat``
dicts and bytes as buffers. Every failure leaves through :func:`vmaccel.fusemount.errors.to_errno`
as an ``OSError`` carrying the errno FUSE returns; damaged data is ``EIO`` for the read that
touches it, and the rest of the mount keeps working.

The class does not import the FUSE binding: :mod:`vmaccel.fusemount.binding` drives it, and calls
:meth:`TreeOperations.read_into` (the kernel's buffer as a ``memoryview``) instead of
:meth:`TreeOperations.read` where the binding allows, which saves a copy per read.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from vmaccel.fusemount.errors import to_errno
from vmaccel.fusemount.openfiles import OpenFiles
from vmaccel.fusemount.scratch import Scratch
from vmaccel.fusemount.tree import Kind, PathNotFound, VirtualTree
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.vocabulary.errors import DamageError, VmaccelError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_RESIZE_FLAGS = os.O_TRUNC | os.O_APPEND


def mapped(op: Callable[P, R]) -> Callable[P, R]:
    """Turn vmaccel and OS errors raised by ``op`` into ``OSError(errno)`` for FUSE."""

    @functools.wraps(op)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return op(*args, **kwargs)
        except (VmaccelError, OSError, GuestFsError) as exc:
            code = to_errno(exc)
            if isinstance(exc, DamageError):
                logger.warning("%s%s: %s", op.__name__, args[1:3], exc)
            else:
                logger.debug("%s%s: %s", op.__name__, args[1:3], exc)
            raise OSError(code, os.strerror(code)) from exc

    return call


class TreeOperations:
    """FUSE operations over ``tree``, with ``files`` as the handle table.

    ``keep_cache``: let the kernel keep pages across opens (complete backups never change).
    ``direct_io``: image files bypass the page cache (every read reaches us, in requests of up
    to 1 MiB, with no double caching of data the image reader caches already); small files
    (descriptors, ``vm.json``, guest files) always use the page cache.
    ``writable``: image files take writes into their overlays (``files`` must open images as
    :class:`~vmaccel.fusemount.overlay.OverlayImage`). ``scratch`` (writable mounts served to
    a hypervisor): backup directories also take new files (:mod:`vmaccel.fusemount.scratch`);
    every path the tree does not know below a backup directory is a scratch path.
    """

    use_ns = True  # mfusepy: times in integer nanoseconds

    def __init__(
        self,
        tree: VirtualTree,
        files: OpenFiles,
        keep_cache: bool = True,
        direct_io: bool = True,
        writable: bool = False,
        scratch: Scratch | None = None,
    ) -> None:
        self.tree, self.files, self.guest = tree, files, tree.guest
        self.keep_cache, self.direct_io, self.writable = keep_cache, direct_io, writable
        self.scratch = scratch if writable else None

    def _scratch_path(self, path: str) -> Scratch | None:
        """The scratch store if ``path`` is a scratch path (not the tree's), else None."""
        if self.scratch is None or self.scratch.real(path) is None:
            return None
        try:
            self.tree.lookup(path)
        except PathNotFound:
            return self.scratch
        return None

    def _no_tree_name(self, path: str) -> Scratch:
        """The scratch store for creating ``path``: EEXIST for the backup's own names."""
        scratch = self._scratch_path(path)
        if scratch is None:
            if self.scratch is not None and self.scratch.real(path) is not None:
                raise OSError(errno.EEXIST, "a file of the backup has that name")
            raise OSError(errno.EROFS, "read-only")
        return scratch

    @mapped
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        scratch = self._scratch_path(path)
        if scratch is not None:
            return scratch.stat(path)
        node = self.tree.lookup(path)
        a = self.tree.attr(node)
        ns = int(a.mtime * 1e9)
        writable = self.writable and node.image_id is not None
        if self.scratch is not None and node.kind is Kind.DIR and self.scratch.real(path + "/x"):
            writable = True  # a backup directory takes scratch files
        return {
            "st_mode": a.mode | (0o200 if writable else 0),
            "st_size": a.size,
            "st_nlink": a.nlink,
            "st_uid": a.uid,
            "st_gid": a.gid,
            "st_mtime": ns,
            "st_atime": ns,
            "st_ctime": ns,
            "st_blocks": a.blocks,
            "st_blksize": 1 << 20,  # large I/O hint: cp, dd and qemu-img read bigger pieces
        }

    @mapped
    def readdir(self, path: str, fh: int) -> list[str]:
        scratch = self._scratch_path(path)
        if scratch is not None:
            return [".", "..", *scratch.listdir(path)]
        names = self.tree.listdir(path)
        if self.scratch is not None and self.scratch.real(path + "/x"):
            names = sorted({*names, *self.scratch.listdir(path)})
        return [".", "..", *names]

    @mapped
    def readlink(self, path: str) -> str:
        node = self.tree.lookup(path)
        if node.kind is not Kind.LINK or node.target is None:
            raise OSError(errno.EINVAL, "not a symlink")
        return node.target

    @mapped
    def open(self, path: str, flags: int) -> int:
        scratch = self._scratch_path(path)
        if scratch is not None:
            return self.files.open_stream(scratch.open(path, flags))
        node = self.tree.lookup(path)
        if flags & _WRITE_FLAGS:
            if not self.writable or node.image_id is None:
                raise OSError(errno.EROFS, "read-only (only image files of --writable mounts)")
            if flags & _RESIZE_FLAGS:
                raise OSError(errno.EPERM, "image files cannot be truncated or appended to")
        if node.kind is Kind.DIR:
            raise OSError(errno.EISDIR, "is a directory")
        if node.image_id is not None:
            return self.files.open_image(node.image_id)
        if node.guest is not None:
            if node.perm == 0 or self.guest is None:
                raise OSError(errno.EACCES, "not a regular file")
            return self.files.open_stream(self.guest.open(*node.guest))
        return self.files.open_bytes(node.content or b"")

    @mapped
    def read_into(self, path: str | None, buf: memoryview, offset: int, fh: int) -> int:
        """Fill ``buf`` (the kernel's buffer, ``size`` bytes) from ``offset``; returns the count.

        Short only at end of file: FUSE pads a short read with zeros, so a partial answer to
        a request that touches damage would be wrong bytes; the whole request fails instead.
        """
        return self.files.read_into(fh, offset, buf)

    def open_flags(self, fh: int) -> tuple[bool, bool]:
        """(keep_cache, direct_io) for the handle ``fh`` just opened (see the class)."""
        return self.keep_cache, self.direct_io and self.files.is_image(fh)

    @mapped
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.files.write(fh, offset, data)

    @mapped
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.files.sync(fh)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # durability is fsync's and release's job (see fusemount.overlay)

    @mapped
    def create(self, path: str, mode: int, flags: int) -> int:
        scratch = self._no_tree_name(path)
        return self.files.open_stream(scratch.open(path, flags | os.O_CREAT, mode))

    @mapped
    def unlink(self, path: str) -> int:
        self._tree_name_is_permanent(path).unlink(path)
        return 0

    @mapped
    def mkdir(self, path: str, mode: int) -> int:
        self._no_tree_name(path).mkdir(path, mode)
        return 0

    @mapped
    def rmdir(self, path: str) -> int:
        self._tree_name_is_permanent(path).rmdir(path)
        return 0

    @mapped
    def rename(self, old: str, new: str) -> int:
        scratch = self._tree_name_is_permanent(old)
        if self._scratch_path(new) is None:
            raise OSError(errno.EPERM, "the backup's files cannot be replaced")
        scratch.rename(old, new)
        return 0

    @mapped
    def chmod(self, path: str, mode: int) -> int:
        self._tree_name_is_permanent(path).chmod(path, mode)
        return 0

    def _tree_name_is_permanent(self, path: str) -> Scratch:
        scratch = self._scratch_path(path)
        if scratch is None:
            raise OSError(errno.EPERM if self.scratch else errno.EROFS,
                          "the backup's files cannot be removed or changed")
        return scratch

    @mapped
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        scratch = self._scratch_path(path)
        if scratch is not None:
            scratch.truncate(path, length)
            return 0
        node = self.tree.lookup(path)
        if not self.writable or node.image_id is None:
            raise OSError(errno.EROFS, "read-only")
        if length != node.size:
            raise OSError(errno.EPERM, "image files cannot be resized")
        return 0

    @mapped
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        scratch = self._scratch_path(path)
        if scratch is not None:
            scratch.utimens(path, times)
            return 0
        node = self.tree.lookup(path)
        if not self.writable or node.image_id is None:
            raise OSError(errno.EROFS, "read-only")
        return 0  # image times are the backup's; accepted and ignored

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        buf = bytearray(size)
        n = self.read_into(path, memoryview(buf), offset, fh)
        return bytes(buf[:n])

    @mapped
    def release(self, path: str | None, fh: int) -> int:
        self.files.release(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def destroy(self, path: str) -> None:
        self.files.close_all()
        if self.guest is not None:
            self.guest.close()
