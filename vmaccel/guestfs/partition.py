"""Partition tables: MBR (primary, extended and logical) and GPT (CRC-checked, with fallback to
the backup header).

Layout references: the MBR holds four 16-byte entries at byte 446 and 0x55AA at 510; logical
partitions are a chain of EBRs inside the extended partition, each EBR's first entry relative
to itself and its second (the next EBR) relative to the extended partition's start. GPT puts
the header at LBA 1 (backup at the last LBA) and an array of entries whose CRC32 the header
stores. All offsets and sizes in the dataclasses are bytes; LBAs appear only while parsing.
"""

from __future__ import annotations

import itertools
import logging
import struct
import uuid
import zlib
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE_TYPE = 0xEE
_MAX_LOGICAL = 256
_MAX_GPT_ENTRIES_BYTES = 1 << 20

GPT_LVM_TYPE = "e6d6d379-f507-44c2-a23c-238f2a3df928"
MBR_LVM_TYPE = "0x8e"


@dataclass(frozen=True)
class Partition:
    """One partition: `start` and `size` in bytes from the start of the disk.

    `index` is the number Linux gives it (MBR logical partitions start at 5). `type` is
    ``"0x83"``-style for MBR and the lowercase type GUID for GPT; `name` and `guid` are the GPT
    partition name and unique GUID ("" for MBR).
    """

    index: int
    start: int
    size: int
    type: str
    name: str = ""
    guid: str = ""

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class PartitionTable:
    """`scheme` is "mbr", "gpt" or "none" (no table: the disk is one volume)."""

    scheme: str
    sector_size: int
    partitions: tuple[Partition, ...]


def read_partition_table(disk: VolumeView, sector_size: int = 512) -> PartitionTable:
    """Parse the partition table of the disk behind `disk` (a view of the whole disk).

    Returns scheme "none" when sector 0 has no MBR signature. Raises `GuestFsError` when a
    table is present but cannot be trusted (bad CRCs in both GPT headers, entries outside the
    disk, overlapping partitions, an EBR loop).
    """
    mbr = disk.pread(0, 512)
    if mbr[510:512] != b"\x55\xaa":
        return PartitionTable("none", sector_size, ())
    entries = _mbr_entries(mbr)
    if any(e[0] == MBR_PROTECTIVE_TYPE for e in entries):
        table = _read_gpt(disk)
    else:
        table = PartitionTable("mbr", 512, _read_mbr(disk, entries))
    _check_layout(table, disk.volume.size)
    return table


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int]]:
    """The non-empty (type, first LBA, sector count) entries of an MBR or EBR."""
    result = []
    for i in range(4):
        _status, ptype, lba, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i)
        if ptype and count:
            result.append((ptype, lba, count))
    return result


def _read_mbr(disk: VolumeView, entries: list[tuple[int, int, int]]) -> tuple[Partition, ...]:
    parts: list[Partition] = []
    for number, (ptype, lba, count) in enumerate(entries, start=1):
        parts.append(Partition(number, lba * 512, count * 512, f"0x{ptype:02x}"))
        if ptype in MBR_EXTENDED_TYPES:
            parts.extend(_read_logical(disk, lba))
    return tuple(parts)


def _read_logical(disk: VolumeView, ext_lba: int) -> list[Partition]:
    """Follow the EBR chain of the extended partition starting at LBA `ext_lba`."""
    parts: list[Partition] = []
    ebr_lba, seen = ext_lba, set()
    while len(parts) < _MAX_LOGICAL:
        if ebr_lba in seen:
            raise GuestFsError(f"MBR: EBR chain loops back to LBA {ebr_lba}")
        seen.add(ebr_lba)
        sector = disk.pread(ebr_lba * 512, 512)
        if sector[510:512] != b"\x55\xaa":
            raise GuestFsError(f"MBR: EBR at LBA {ebr_lba} has no 0x55AA signature")
        entries = _mbr_entries(sector)
        if not entries:
            break
        ptype, rel, count = entries[0]
        if ptype not in MBR_EXTENDED_TYPES:
            parts.append(
                Partition(5 + len(parts), (ebr_lba + rel) * 512, count * 512, f"0x{ptype:02x}")
            )
        nxt = [e for e in entries[1:] if e[0] in MBR_EXTENDED_TYPES]
        if not nxt:
            break
        ebr_lba = ext_lba + nxt[0][1]
    return parts


def _read_gpt(disk: VolumeView) -> PartitionTable:
    """Read the primary GPT header, falling back to the backup one, for 512 or 4096 sectors."""
    errors: list[str] = []
    for sector_size in (512, 4096):
        last_lba = disk.volume.size // sector_size - 1
        for lba in (1, last_lba):
            try:
                return _read_gpt_at(disk, sector_size, lba)
            except GuestFsError as exc:
                errors.append(str(exc))
            if lba == 1 and disk.pread(sector_size, 8) != b"EFI PART":
                break  # not this sector size; do not blame the backup header for it
    raise GuestFsError("GPT: no valid header (" + "; ".join(errors) + ")")


def _read_gpt_at(disk: VolumeView, sector_size: int, lba: int) -> PartitionTable:
    where = f"GPT header at LBA {lba} ({sector_size}-byte sectors)"
    head = disk.pread(lba * sector_size, sector_size)
    if head[:8] != b"EFI PART":
        raise GuestFsError(f"{where}: no 'EFI PART' signature")
    (hsize, hcrc) = struct.unpack_from("<II", head, 12)
    if not 92 <= hsize <= sector_size:
        raise GuestFsError(f"{where}: header size {hsize} out of range")
    computed = zlib.crc32(head[:16] + b"\0\0\0\0" + head[20:hsize])
    if computed != hcrc:
        raise GuestFsError(
            f"{where}: CRC32 mismatch (stored {hcrc:#010x}, computed {computed:#010x})"
        )
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", head, 72)
    if esize < 128 or esize % 8 or count * esize > _MAX_GPT_ENTRIES_BYTES:
        raise GuestFsError(f"{where}: implausible entry array ({count} x {esize} bytes)")
    array = disk.pread(entries_lba * sector_size, count * esize)
    if zlib.crc32(array) != ecrc:
        raise GuestFsError(f"{where}: partition entry array CRC32 mismatch")
    parts = []
    for i in range(count):
        raw = array[i * esize : (i + 1) * esize]
        first, last = struct.unpack_from("<QQ", raw, 32)
        if raw[:16] == bytes(16):
            continue
        if last < first:
            raise GuestFsError(f"{where}: entry {i + 1} ends (LBA {last}) before it starts")
        name = raw[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(
            Partition(
                i + 1,
                first * sector_size,
                (last - first + 1) * sector_size,
                str(uuid.UUID(bytes_le=raw[:16])),
                name,
                str(uuid.UUID(bytes_le=raw[16:32])),
            )
        )
    if lba != 1:
        logger.warning("GPT primary header damaged; using the backup header at LBA %d", lba)
    return PartitionTable("gpt", sector_size, tuple(parts))


def _check_layout(table: PartitionTable, disk_size: int) -> None:
    """Reject partitions outside the disk and overlapping data partitions."""
    data = [p for p in table.partitions if not _is_container(p)]
    for p in table.partitions:
        if p.end > disk_size:
            raise GuestFsError(
                f"{table.scheme.upper()}: partition {p.index} ends at byte {p.end}, beyond the "
                f"end of the disk ({disk_size} bytes)"
            )
    ordered = sorted(data, key=lambda p: p.start)
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise GuestFsError(
                f"{table.scheme.upper()}: partitions {a.index} and {b.index} overlap"
            )


def _is_container(p: Partition) -> bool:
    return p.type in {f"0x{t:02x}" for t in MBR_EXTENDED_TYPES}
