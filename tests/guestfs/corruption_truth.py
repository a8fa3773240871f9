"""The oracle of the corruption matrix: which bytes of a pristine filesystem must be backed up.

File data is found by content: every file written into a test image is random (or unique
text), so each 512-byte piece of it occurs once on disk. Pieces that occur more than once or
are all zero (holes of sparse files) say nothing about where the file lives and are left out;
a file's last, partial sector counts when its bytes are found exactly once at a sector start.
Metadata is what the filesystem needs to stay readable, found by the facts of
`tests.guestfs.corruption_facts` and by signature scans (directory blocks, MFT records, inode
chunks, btree blocks). Nothing here calls a parser of the product.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tests.guestfs.corruption import Target, Truth
from tests.guestfs.corruption_facts import (
    Ext4Facts,
    FatFacts,
    LvmFacts,
    NtfsFacts,
    XfsFacts,
    fat_entry,
)
from vmaccel.guestfs.extent import Extent, merge

SECTOR = 512
_CHUNK = 4 << 20
_TAIL_MIN = 32


def chunks(target: Target) -> Iterator[tuple[int, bytes]]:
    """Yield (fs offset, bytes) of the pristine filesystem in 4 MiB chunks, skipping zeros."""
    for off in range(0, target.fs_size, _CHUNK):
        data = target.read_fs(off, min(_CHUNK, target.fs_size - off))
        if data.count(0) != len(data):
            yield off, data


def locate_files(
    target: Target, files: dict[str, bytes]
) -> tuple[tuple[Extent, ...], tuple[tuple[Extent, str], ...], str]:
    """The sectors holding file data (normalized), each file's extents, and a note on what
    was left out. Raises AssertionError if a full piece of a file is not found at all."""
    pieces: dict[bytes, str] = {}
    tails: dict[bytes, tuple[str, bytes]] = {}
    for path, content in files.items():
        for i in range(0, len(content) - SECTOR + 1, SECTOR):
            piece = content[i : i + SECTOR]
            if piece.count(0) != SECTOR:
                pieces[piece] = path if piece not in pieces else ""
        tail = content[len(content) - len(content) % SECTOR :]
        if len(tail) >= _TAIL_MIN and tail.count(0) != len(tail):
            tails[tail[:_TAIL_MIN]] = (path, tail)
    found: dict[bytes, list[int]] = {}
    tail_found: dict[bytes, list[int]] = {}
    for base, data in chunks(target):
        for o in range(0, len(data), SECTOR):
            sector = data[o : o + SECTOR]
            if sector in pieces:
                found.setdefault(sector, []).append(base + o)
            elif sector[:_TAIL_MIN] in tails:
                path, tail = tails[sector[:_TAIL_MIN]]
                if sector.startswith(tail):
                    tail_found.setdefault(tail[:_TAIL_MIN], []).append(base + o)
    missing = [p for p in pieces if p not in found]
    assert not missing, f"{target.name}: {len(missing)} file pieces not found on disk"
    owners: list[tuple[Extent, str]] = []
    ambiguous = 0
    for piece, offsets in found.items():
        if len(offsets) == 1 and pieces[piece]:
            owners.append((Extent(offsets[0], SECTOR), pieces[piece]))
        else:
            ambiguous += 1
    for key, offsets in tail_found.items():
        if len(offsets) == 1:
            owners.append((Extent(offsets[0], SECTOR), tails[key][0]))
    owners.sort()
    note = (
        f"{len(owners)} data sectors of {len(files)} files "
        f"({ambiguous} repeated pieces and {len(tails) - len(tail_found)} unplaced tails left out)"
    )
    return merge(e for e, _ in owners), _coalesce(owners), note


def _coalesce(owners: list[tuple[Extent, str]]) -> tuple[tuple[Extent, str], ...]:
    out: list[tuple[Extent, str]] = []
    for ext, name in owners:
        if out and out[-1][1] == name and out[-1][0].end == ext.offset:
            out[-1] = (Extent(out[-1][0].offset, out[-1][0].length + ext.length), name)
        else:
            out.append((ext, name))
    return tuple(out)


def _scan(target: Target, pattern: bytes, align: int, shift: int = 0) -> Iterator[int]:
    """Fs offsets ``o % align == 0`` where the regex `pattern` matches at ``o + shift``."""
    regex = re.compile(pattern, re.S)
    for base, data in chunks(target):
        for m in regex.finditer(data):
            o = base + m.start() - shift
            if o % align == 0:
                yield o


def _blocks(ranges: Iterable[tuple[int, int]], size: int) -> list[Extent]:
    return [Extent(a * size, (b - a + 1) * size) for a, b in ranges]


def ext4_metadata(target: Target, facts: Ext4Facts) -> tuple[Extent, ...]:
    """Superblocks, descriptor tables, bitmaps, inode tables, directory blocks and the
    journal superblock."""
    bs = facts.block_size
    out = [Extent(0, 4096)]
    for g in facts.groups:
        out += _blocks(g.super_blocks, bs)
        out += _blocks([(g.block_bitmap, g.block_bitmap), (g.inode_bitmap, g.inode_bitmap)], bs)
        out += _blocks([g.inode_table], bs)
    # A directory block starts with "." (rec_len 12, name_len 1, type 2) then "..".
    dot = rb"\x0c\x00\x01\x02\.\x00\x00\x00"
    out += [Extent(o, bs) for o in _scan(target, dot, bs, shift=4)]
    out += [Extent(o, bs) for o in _scan(target, rb"\xc0\x3b\x39\x98\x00\x00\x00[\x03\x04]", bs)]
    return merge(out)


def ntfs_metadata(target: Target, facts: NtfsFacts) -> tuple[Extent, ...]:
    """Boot sector, the system files' data, MFT records, index blocks and $LogFile pages."""
    cs = facts.cluster_size
    out = [Extent(0, max(4096, cs))]
    for runs in facts.runs.values():
        out += [Extent(lcn * cs, n * cs) for lcn, n in runs]
    out += [Extent(o, facts.record_size) for o in _scan(target, rb"FILE", facts.record_size)]
    out += [Extent(o, 4096) for o in _scan(target, rb"INDX|RSTR|RCRD", 4096)]
    tail = target.fs_size - SECTOR
    if target.read_fs(tail, SECTOR)[3:11] == b"NTFS    ":
        out.append(Extent(tail, SECTOR))  # the backup boot sector
    return merge(out)


_XFS_BLOCK_MAGICS = rb"AB3B|AB3C|IAB3|FIB3|RMB3|R3FC|BMA3|XDB3|XDD3|XDF3|XSLM"


def xfs_metadata(target: Target, facts: XfsFacts) -> tuple[Extent, ...]:
    """AG headers, the log, inode chunks and every self-describing (v5) metadata block."""
    bs = facts.block_size
    out = [Extent(0, 4096), Extent(facts.log_offset, facts.log_bytes)]
    out += [Extent(facts.ag_offset(a), 4 * facts.sector_size) for a in range(facts.agcount)]
    out += [Extent(o, 512) for o in _scan(target, rb"IN..[\x01-\x03]", 256)]
    if facts.crc:
        out += [Extent(o, bs) for o in _scan(target, _XFS_BLOCK_MAGICS, bs)]
    return merge(out)


def fat_metadata(target: Target, facts: FatFacts) -> tuple[Extent, ...]:
    """Reserved area, every FAT, the root directory and every directory's cluster chain."""
    fat = target.read_fs(facts.fat_offsets[0], facts.fat_size)
    out = [Extent(0, max(4096, facts.fat_offsets[0])), Extent(*facts.root_dir)]
    out += [Extent(o, facts.fat_size) for o in facts.fat_offsets]
    starts = [facts.root_cluster] if facts.root_cluster else []
    dot = rb"\.          [\x10-\x3f]"
    for o in _scan(target, dot, facts.cluster_size):
        if o >= facts.data_offset and (o - facts.data_offset) % facts.cluster_size == 0:
            starts.append((o - facts.data_offset) // facts.cluster_size + 2)
    for first in starts:
        n, seen = first, 0
        while 2 <= n < facts.cluster_count + 2 and seen <= facts.cluster_count:
            out.append(Extent(facts.cluster_offset(n), facts.cluster_size))
            n, seen = fat_entry(fat, facts.bits, n), seen + 1
    return merge(out)


def truth_for(
    target: Target,
    files: dict[str, bytes],
    metadata: tuple[Extent, ...],
    lvm: LvmFacts | None = None,
) -> Truth:
    data, owners, note = locate_files(target, files)
    part = (Extent(0, lvm.pe_start),) if lvm else ()
    return Truth(data, metadata, owners, (note,), part)
