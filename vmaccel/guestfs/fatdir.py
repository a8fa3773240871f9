"""FAT directories, checked against the FAT and the geometry they were read with.

Two defects the FAT alone cannot reveal are caught here. (1) A wrong geometry (a damaged
number of FATs, root entry count, cluster size or reserved sector count: the BPB has no
checksum) shifts where directories and clusters are read from; directories read where the
geometry says they are must then fail to parse, or a subdirectory must fail to start with
its "." entry naming itself and "..". (2) A FAT region zeroed in every copy frees whole
chains, head included, and no link in the FAT leads into them any more; the directory entry
that names the head is the only witness, so every entry's first cluster must be in use.
Together with the FAT's own rule (no link leads into a free cluster) every cluster of every
reachable file and directory is then known to be in use.

On-disk facts used (32-byte little-endian entries): name 0..10 (first byte 0x00 = end,
0xE5 = deleted, 0x05 = a leading 0xE5), attributes 11 (0x0F = long-name entry, 0x08 volume
label, 0x10 directory; bits 6-7 reserved), first cluster high word 20 (FAT32 only), low word
26, size 28. Long-name entries have a zero cluster field.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

ENTRY = 32
_DOT = b".          "
_DOTDOT = b"..         "
_FAT_BLOCK = 4096
_MAX_DIRECTORY = 65536 * ENTRY  # the spec's limit on entries per directory


@dataclass(frozen=True)
class DirectoryLayout:
    """Where directories live; offsets in bytes. `root_region` is the FAT12/16 fixed root
    directory (offset, size), None on FAT32, whose root is the chain at `root_cluster`."""

    bits: int
    fat_offset: int
    data_offset: int
    cluster_size: int
    cluster_count: int
    root_region: tuple[int, int] | None
    root_cluster: int


class DirectoryTree:
    """Walks every directory reachable from the root (breadth first, each once).

    Reads each directory's clusters and the FAT entries of directory chains (in 4 KiB
    blocks, cached); file contents are never read. `in_use(n)` must say whether cluster n's
    FAT entry is non-zero.
    """

    def __init__(
        self, view: VolumeView, layout: DirectoryLayout, in_use: Callable[[int], bool]
    ) -> None:
        self._view = view
        self._layout = layout
        self._in_use = in_use
        self._max = layout.cluster_count + 1
        self._fat_cache: dict[int, bytes] = {}

    def check(self) -> int:
        """Check every reachable directory; return how many were read. Raises
        `GuestFsError` naming the directory (by first cluster), entry and failed check."""
        lay = self._layout
        queue: deque[tuple[int, str]] = deque()
        if lay.root_region is not None:
            root = self._view.pread(*lay.root_region)
            queue.extend(self._entries(root, "root directory"))
        else:
            queue.append((lay.root_cluster, "/"))
        seen: set[int] = set()
        while queue:
            cluster, name = queue.popleft()
            if cluster in seen:
                raise GuestFsError(f"fat: directory at cluster {cluster} is reached twice")
            seen.add(cluster)
            data = self._read_chain(cluster, f"fat: directory {name!r}")
            if name != "/" and (data[:11] != _DOT or data[ENTRY : ENTRY + 11] != _DOTDOT):
                raise GuestFsError(
                    f"fat: directory {name!r} at cluster {cluster} does not start with its "
                    f"'.' and '..' entries (the geometry or a directory is wrong)"
                )
            if name != "/" and _first_cluster(data[:ENTRY], lay.bits) != cluster:
                raise GuestFsError(f"fat: directory {name!r}: '.' does not name cluster {cluster}")
            queue.extend(self._entries(data, f"directory at cluster {cluster}"))
        return len(seen) + (lay.root_region is not None)

    def _entries(self, data: bytes, where: str) -> list[tuple[int, str]]:
        """Check the entries of one directory; return its subdirectories."""
        subdirs: list[tuple[int, str]] = []
        for index in range(len(data) // ENTRY):
            entry = data[index * ENTRY : (index + 1) * ENTRY]
            if entry[0] == 0:
                break
            if entry[0] == 0xE5 or entry[:11] in (_DOT, _DOTDOT):
                continue
            what = f"fat: {where}, entry {index}"
            cluster = _checked_cluster(entry, self._layout.bits, what)
            if cluster is None:
                continue
            is_dir = bool(entry[11] & 0x10)
            if not cluster:
                if is_dir or struct.unpack_from("<I", entry, 28)[0]:
                    raise GuestFsError(f"{what}: a directory or non-empty file without clusters")
                continue
            if not 2 <= cluster <= self._max or not self._in_use(cluster):
                raise GuestFsError(f"{what}: starts at cluster {cluster}, which is free or invalid")
            if is_dir:
                subdirs.append((cluster, entry[:11].decode("latin-1").rstrip()))
        return subdirs

    def _read_chain(self, first: int, what: str) -> bytes:
        """The bytes of the cluster chain starting at `first` (contiguous runs read at once)."""
        lay = self._layout
        runs: list[list[int]] = []
        cluster, count = first, 0
        limit = max(1, _MAX_DIRECTORY // lay.cluster_size)
        while 2 <= cluster <= self._max:
            count += 1
            if count > limit:
                raise GuestFsError(f"{what}: chain longer than a directory can be (or loops)")
            if runs and runs[-1][1] == cluster:
                runs[-1][1] += 1
            else:
                runs.append([cluster, cluster + 1])
            cluster = self._next(cluster)
        if cluster < 2:
            raise GuestFsError(f"{what}: cluster chain runs into free cluster or 0x{cluster:x}")
        return b"".join(
            self._view.pread(
                lay.data_offset + (a - 2) * lay.cluster_size, (b - a) * lay.cluster_size
            )
            for a, b in runs
        )

    def _next(self, cluster: int) -> int:
        """The FAT entry of `cluster` (values past the last cluster are bad or end marks)."""
        bits = self._layout.bits
        byte = cluster * bits // 8
        block = byte // _FAT_BLOCK
        data = self._fat_cache.get(block)
        if data is None:
            data = self._view.pread(self._layout.fat_offset + block * _FAT_BLOCK, _FAT_BLOCK + 4)
            self._fat_cache[block] = data
        at = byte - block * _FAT_BLOCK
        if bits == 32:
            return int(struct.unpack_from("<I", data, at)[0]) & 0x0FFFFFFF
        (pair,) = struct.unpack_from("<H", data, at)
        if bits == 16:
            return int(pair)
        return int(pair >> 4 if cluster & 1 else pair & 0x0FFF)


def _checked_cluster(entry: bytes, bits: int, what: str) -> int | None:
    """First cluster of a short entry; None for long-name entries and the volume label."""
    attr = entry[11]
    if attr & 0x3F == 0x0F:
        if entry[26:28] != b"\0\0":
            raise GuestFsError(f"{what}: long-name entry with a cluster number")
        return None
    if attr & 0xC0 or (entry[0] < 0x20 and entry[0] != 0x05) or min(entry[1:11]) < 0x20:
        raise GuestFsError(f"{what}: not a directory entry (name {entry[:11]!r}, attr {attr:#x})")
    if attr & 0x08:
        return None
    return _first_cluster(entry, bits)


def _first_cluster(entry: bytes, bits: int) -> int:
    high = struct.unpack_from("<H", entry, 20)[0] if bits == 32 else 0
    return int(struct.unpack_from("<H", entry, 26)[0] | high << 16)
