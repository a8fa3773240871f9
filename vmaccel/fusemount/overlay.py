"""Copy-on-write overlays for ``vmaccel mount --writable OVERLAY_DIR`` (instant recovery).

Writes to an image file of the mount land in an overlay, never in the repository; reads merge
the overlay's blocks over the image. ``<disk>-flat.vmdk`` and ``<disk>.raw`` are the same image,
so they share one overlay. The descriptor ``.vmdk``, ``vm.json`` and guest files stay read-only;
image files cannot be truncated or grown.

On disk, per image, in OVERLAY_DIR (``<id>`` is the catalog's image id)::

    image-<id>.data     sparse file of the image's size; bytes of overlay blocks at their offsets
    image-<id>.bitmap   header, then one bit per block (bit b = byte b//8, mask 1 << b%8):
                        set = block b of .data is current, clear = read the image
    .lock               flock()ed while a mount uses the directory

Header: ``VMACCOW1``, then little-endian u64 image size, u64 block size, u32 identity length,
the identity (``<repository id>/<image id>``, so an overlay is never applied to another image).

Block size is :data:`BLOCK` (64 KiB). A write that covers a block only partly, to a block not
yet in the overlay, first copies that block from the image (read-modify-write; damage there
fails the write with EIO, never writes wrong bytes).

Crash consistency (must):

1. Data first: a block's bytes are written to ``.data`` before its bit is set, and the bit is
   set only in memory.
2. The bitmap file changes only in :meth:`Overlay.sync`: ``fdatasync(.data)``, then the whole
   bitmap is written to ``image-<id>.bitmap.tmp``, fsynced, renamed over ``.bitmap``, and the
   directory fsynced. So every bit set on disk names a block whose bytes were durable first; the
   bitmap file is always either the old or the new one, never torn.
3. ``sync`` runs on FUSE ``fsync``, when the last handle of an image is released, and at
   unmount. After a crash the overlay is the state of the last sync, plus possibly newer bytes
   in blocks already marked then (what a disk with a volatile write cache gives; guests fsync
   what they need). A ``.data`` without a ``.bitmap`` (a crash before the first sync) is empty.

A kept overlay (``--keep-overlay``) is picked up again by the next mount with the same
OVERLAY_DIR; a mount without ``--keep-overlay`` deletes the overlays it used at unmount.

Thread safety: one lock per overlay serialises writes and syncs; reads take it only to find
which blocks are set, then read outside it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from vmaccel.fusemount.source import ImageStream
from vmaccel.vocabulary.errors import MountError

logger = logging.getLogger(__name__)

BLOCK = 64 * 1024
MAGIC = b"VMACCOW1"
_HEADER = struct.Struct("<8sQQI")


class OverlayError(MountError):
    """OVERLAY_DIR cannot be used (busy, unwritable, or holding a foreign overlay)."""


class Overlay:
    """The overlay of one image of ``size`` bytes (see the module docstring)."""

    def __init__(self, directory: Path, image_id: int, identity: str, size: int) -> None:
        self.size, self.identity = size, identity
        self.data_path = directory / f"image-{image_id}.data"
        self.bitmap_path = directory / f"image-{image_id}.bitmap"
        self._dir = directory
        self._lock = threading.Lock()
        self._blocks = -(-size // BLOCK)
        self._bits = self._load()
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not any(self._bits):
            os.ftruncate(self._fd, 0)  # nothing synced: whatever .data holds is not current
        os.ftruncate(self._fd, size)
        self._data_dirty = self._bits_dirty = False

    def _load(self) -> bytearray:
        try:
            raw = self.bitmap_path.read_bytes()
        except FileNotFoundError:
            return bytearray((self._blocks + 7) // 8)
        ident = self.identity.encode()
        magic, size, bs, n = _HEADER.unpack_from(raw) if len(raw) >= _HEADER.size else (
            b"", 0, 0, 0)
        stored = raw[_HEADER.size : _HEADER.size + n]
        if (magic, size, bs, stored) != (MAGIC, self.size, BLOCK, ident):
            raise OverlayError(
                f"{self.bitmap_path} belongs to another image or format "
                f"({stored.decode(errors='replace')!r}, {size} bytes); use another OVERLAY_DIR"
            )
        bits = bytearray(raw[_HEADER.size + n :])
        if len(bits) != (self._blocks + 7) // 8:
            raise OverlayError(f"{self.bitmap_path} is truncated; use another OVERLAY_DIR")
        logger.info("reusing overlay %s (%d blocks written)", self.data_path,
                    sum(bin(b).count("1") for b in bits))
        return bits

    def _is_set(self, block: int) -> bool:
        return bool(self._bits[block >> 3] & (1 << (block & 7)))

    def _runs(self, offset: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(start, stop, in_overlay) byte runs covering [offset, end)."""
        pos = offset
        while pos < end:
            block = pos // BLOCK
            state = self._is_set(block)
            stop_block = block + 1
            while stop_block * BLOCK < end and self._is_set(stop_block) == state:
                stop_block += 1
            stop = min(end, stop_block * BLOCK)
            yield pos, stop, state
            pos = stop

    def read_into(self, base: ImageStream, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``: overlay blocks where set, ``base`` elsewhere."""
        end = min(offset + len(buf), self.size)
        if offset >= end:
            return 0
        with self._lock:
            runs = list(self._runs(offset, end))
        for start, stop, mine in runs:
            view = buf[start - offset : stop - offset]
            got = _pread_full(self._fd, view, start) if mine else base.read_into(start, view)
            if got != len(view):
                raise OSError(errno.EIO, f"short read at byte {start + got} of the image")
        return end - offset

    def write(self, base: ImageStream, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset`` into the overlay; returns ``len(data)``.

        Raises ``OSError(EFBIG)`` past the end of the image (images never grow)."""
        end = offset + len(data)
        if end > self.size:
            raise OSError(errno.EFBIG, "writes past the end of the image are refused")
        if not data:
            return 0
        first, last = offset // BLOCK, (end - 1) // BLOCK
        with self._lock:
            for block in {first, last}:
                lo, hi = block * BLOCK, min(self.size, (block + 1) * BLOCK)
                if not self._is_set(block) and (offset > lo or end < hi):
                    self._copy_up(base, lo, hi)
            _pwrite_all(self._fd, memoryview(data), offset)
            for block in range(first, last + 1):
                self._bits[block >> 3] |= 1 << (block & 7)
            self._data_dirty = self._bits_dirty = True
        return len(data)

    def _copy_up(self, base: ImageStream, lo: int, hi: int) -> None:
        """Copy the image's bytes of one block into ``.data`` (before a partial write)."""
        block = bytearray(hi - lo)
        got = base.read_into(lo, memoryview(block))
        if got != hi - lo:
            raise OSError(errno.EIO, f"short read at byte {lo + got} of the image")
        _pwrite_all(self._fd, memoryview(block), lo)

    def sync(self) -> None:
        """Make the overlay durable in the order of the module docstring."""
        with self._lock:
            if self._data_dirty:
                os.fdatasync(self._fd)
                self._data_dirty = False
            if not self._bits_dirty:
                return
            ident = self.identity.encode()
            tmp = self.bitmap_path.with_name(self.bitmap_path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _pwrite_all(fd, memoryview(_HEADER.pack(MAGIC, self.size, BLOCK, len(ident))
                                           + ident + bytes(self._bits)), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.bitmap_path)
            _fsync_dir(self._dir)
            self._bits_dirty = False

    def close(self, keep: bool) -> None:
        """Sync and close; unless ``keep``, delete the overlay's files."""
        if keep:
            self.sync()
        os.close(self._fd)
        if not keep:
            for path in (self.data_path, self.bitmap_path):
                path.unlink(missing_ok=True)


class OverlaySet:
    """The overlays of one mount, in ``directory`` (created if missing, locked while used).

    ``repository_id`` makes the identity of each overlay; overlays are opened on first write
    (or found, when a kept one exists for that image) and closed by :meth:`close`.
    """

    def __init__(self, directory: Path, repository_id: str, keep: bool = False) -> None:
        self.directory, self.repository_id, self.keep = directory, repository_id, keep
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o600)
        except OSError as exc:
            raise OverlayError(f"cannot use {directory} for overlays: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise OverlayError(f"{directory} is in use by another writable mount") from exc
        self._lock = threading.Lock()
        self._overlays: dict[int, Overlay] = {}
        self._kept = {
            int(p.name[6:-7]) for p in directory.glob("image-*.bitmap")
            if p.name[6:-7].isdigit()
        }

    def find(self, image_id: int, size: int) -> Overlay | None:
        """The overlay of ``image_id`` if one exists (in use, or kept on disk)."""
        with self._lock:
            ov = self._overlays.get(image_id)
            if ov is None and image_id in self._kept:
                ov = self._open(image_id, size)
            return ov

    def get(self, image_id: int, size: int) -> Overlay:
        """The overlay of ``image_id``, created if needed."""
        with self._lock:
            return self._overlays.get(image_id) or self._open(image_id, size)

    def _open(self, image_id: int, size: int) -> Overlay:
        ov = Overlay(self.directory, image_id, f"{self.repository_id}/{image_id}", size)
        self._overlays[image_id] = ov
        return ov

    def sync(self, image_id: int) -> None:
        with self._lock:
            ov = self._overlays.get(image_id)
        if ov is not None:
            ov.sync()

    def close(self) -> None:
        """Sync or delete every overlay (``keep``) and release the directory."""
        with self._lock:
            overlays = list(self._overlays.values())
            self._overlays.clear()
        try:
            for ov in overlays:
                ov.close(self.keep)
                logger.info("%s overlay %s", "kept" if self.keep else "removed", ov.data_path)
        finally:
            if not self.keep:
                (self.directory / ".lock").unlink(missing_ok=True)
            os.close(self._lock_fd)


class OverlayImage:
    """An :class:`ImageStream` with its overlay merged in, and writes going to the overlay."""

    def __init__(self, base: ImageStream, overlays: OverlaySet, image_id: int) -> None:
        self.base, self.overlays, self.image_id = base, overlays, image_id

    @property
    def size(self) -> int:
        return self.base.size

    def read_into(self, offset: int, buf: memoryview) -> int:
        ov = self.overlays.find(self.image_id, self.base.size)
        if ov is None:
            return self.base.read_into(offset, buf)
        return ov.read_into(self.base, offset, buf)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        return self.overlays.get(self.image_id, self.base.size).write(self.base, offset, data)

    def sync(self) -> None:
        self.overlays.sync(self.image_id)

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        # Only for whole-image copies of the unmodified image; the mount never asks.
        return self.base.extents()

    def close(self) -> None:
        self.sync()
        self.base.close()


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
