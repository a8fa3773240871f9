"""The guest files of each image: ``/<vm>/<time>/files/<volume>/...`` through ``guestfs``.

For every disk of a backup, guestfs reads the partition table and LVM metadata and opens each
filesystem it can browse (ext2/3/4, XFS, NTFS, FAT) from the image bytes; no loop mount, no
kernel driver. A volume is named as guestfs names it (``p1``, ``vg-root``); when a backup has
several disks the name is prefixed with ``<disk>_``. Volumes that hold no filesystem guestfs
browses (swap, a PV, unknown content) are not shown; a volume whose filesystem guestfs browses
but whose metadata fails verification is shown as an empty-looking directory whose listing and
every path below fail with ``EIO`` (the reason is logged), so a damaged volume is visible as
damaged and never as missing, while every other volume of the backup reads normally.

Symlinks are shown as symlinks with their target text unchanged; nothing here ever resolves
one (guestfs refuses ``..`` and never follows links), so a hostile link can only point the
reader's own tools somewhere, never make vmaccel read outside the image.

Thread safety: guestfs file systems are not thread safe (they seek one stream), so each disk
has one lock and every call into its file systems holds it. Disks are opened on first use and
stay open until :meth:`GuestFiles.close`.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from vmaccel.fusemount.source import DiskInfo, ImageStream
from vmaccel.guestfs.browse import BROWSABLE, BrowsedVolume, browse_disk
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileStat, FileSystem

logger = logging.getLogger(__name__)


class PositionalFile(io.RawIOBase):
    """A seekable raw stream over an :class:`ImageStream`'s positional reads (own position)."""

    def __init__(self, stream: ImageStream) -> None:
        super().__init__()
        self._stream, self._pos = stream, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._stream.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = self._stream.read_into(self._pos, memoryview(buffer).cast("B"))
        self._pos += n
        return n


@dataclass
class _Disk:
    lock: threading.Lock
    stream: ImageStream
    volumes: dict[str, FileSystem]


class GuestFiles:
    """Lazily opened file trees of images; ``opener(image_id)`` opens an image for browsing."""

    def __init__(self, opener: Callable[[int], ImageStream]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._disks: dict[int, _Disk] = {}

    def volumes(self, disks: list[DiskInfo]) -> dict[str, tuple[int, str]]:
        """Browsable volumes of a backup's disks: shown name -> (image id, guestfs name)."""
        out: dict[str, tuple[int, str]] = {}
        for d in disks:
            for name in sorted(self._disk(d.image_id).volumes):
                shown = name if len(disks) == 1 else f"{d.disk.replace('/', '_')}_{name}"
                out[shown] = (d.image_id, name)
        return out

    def stat(self, image_id: int, volume: str, path: str) -> FileStat:
        disk = self._disk(image_id)
        with disk.lock:
            return disk.volumes[volume].stat(path)

    def listdir(self, image_id: int, volume: str, path: str) -> list[FileStat]:
        disk = self._disk(image_id)
        with disk.lock:
            return disk.volumes[volume].listdir(path)

    def readlink(self, image_id: int, volume: str, path: str) -> str:
        disk = self._disk(image_id)
        with disk.lock:
            return disk.volumes[volume].readlink(path)

    def open(self, image_id: int, volume: str, path: str) -> GuestFile:
        disk = self._disk(image_id)
        with disk.lock:
            return GuestFile(disk.lock, disk.volumes[volume].open(path))

    def close(self) -> None:
        with self._lock:
            disks = list(self._disks.values())
            self._disks.clear()
        for d in disks:
            d.stream.close()

    def _disk(self, image_id: int) -> _Disk:
        with self._lock:
            disk = self._disks.get(image_id)
            if disk is None:
                stream = self._opener(image_id)
                raw = io.BufferedReader(PositionalFile(stream), buffer_size=64 * 1024)
                vols = _file_systems(image_id, browse_disk(raw, stream.size))
                disk = _Disk(threading.Lock(), stream, vols)
                self._disks[image_id] = disk
            return disk


def _file_systems(image_id: int, browsed: list[BrowsedVolume]) -> dict[str, FileSystem]:
    """The file trees of one disk's volumes: browsable ones, and damaged ones as errors."""
    out: dict[str, FileSystem] = {}
    for v in browsed:
        if v.filesystem is not None:
            out[v.name] = v.filesystem
        elif v.fstype in BROWSABLE:
            logger.warning("image %d: volume %s cannot be browsed: %s", image_id, v.name, v.reason)
            out[v.name] = DamagedVolume(v.fstype, v.reason or "unverifiable metadata")
        else:
            logger.info("image %d: %s not browsable: %s", image_id, v.name, v.reason)
    return out


class DamagedVolume:
    """The file tree of a volume that failed verification: its root is a directory, and
    listing it or reaching anything below raises :class:`GuestFsError` (``EIO`` in a mount)."""

    def __init__(self, fstype: str, reason: str) -> None:
        self.fstype = fstype
        self.label: str | None = None
        self.reason = reason

    def stat(self, path: str) -> FileStat:
        if path.strip("/"):
            raise self._error()
        return FileStat(name="", kind="dir", size=0, inode=0, mode=0o500)

    def listdir(self, path: str) -> list[FileStat]:
        raise self._error()

    def open(self, path: str) -> BinaryIO:
        raise self._error()

    def readlink(self, path: str) -> str:
        raise self._error()

    def placement(self) -> None:
        return None

    def _error(self) -> GuestFsError:
        return GuestFsError(f"this {self.fstype} volume cannot be browsed: {self.reason}")


class GuestFile:
    """One open guest file: positional reads under its disk's lock."""

    def __init__(self, lock: threading.Lock, stream: BinaryIO) -> None:
        self._lock, self._stream = lock, stream

    def read_into(self, offset: int, buf: memoryview) -> int:
        with self._lock:
            self._stream.seek(offset)
            done = 0
            while done < len(buf):
                piece = self._stream.read(len(buf) - done)
                if not piece:
                    break
                buf[done : done + len(piece)] = piece
                done += len(piece)
            return done

    def close(self) -> None:
        with self._lock:
            self._stream.close()
