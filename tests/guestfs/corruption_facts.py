"""Where each filesystem keeps its allocation metadata, found without the product's parsers.

ext4 comes from ``dumpe2fs``, NTFS from its boot sector plus ``ntfsinfo`` run lists, XFS from
``xfs_db``, FAT and the LVM PV header from a few fields parsed here (offsets from the on-disk
specifications). The tools run once per target on an extracted (sparse) copy of the
filesystem. All offsets are filesystem byte offsets unless a name says blocks or clusters.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from tests.guestfs.corruption import Target
from tests.guestfs.imaging import run

_CHUNK = 4 << 20


def extract(target: Target, dest: Path) -> Path:
    """Write the pristine filesystem to `dest`, leaving all-zero chunks as holes."""
    with open(dest, "wb") as out:
        out.truncate(target.fs_size)
        for off in range(0, target.fs_size, _CHUNK):
            data = target.read_fs(off, min(_CHUNK, target.fs_size - off))
            if data.count(0) != len(data):
                out.seek(off)
                out.write(data)
    return dest


@dataclass(frozen=True)
class Ext4Group:
    """One block group; block numbers. `tables` are its bitmaps and inode table;
    `super_blocks` its superblock/descriptor (backup) blocks; `free` its free block ranges."""

    number: int
    first: int
    last: int
    block_bitmap: int
    inode_bitmap: int
    inode_table: tuple[int, int]
    super_blocks: tuple[tuple[int, int], ...]
    free: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Ext4Facts:
    block_size: int
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    desc_size: int
    csum: bool
    groups: tuple[Ext4Group, ...]

    @property
    def gdt_offset(self) -> int:
        """Byte offset of the primary group descriptor table."""
        return (self.first_data_block + 1) * self.block_size


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            lo, _, hi = part.partition("-")
            out.append((int(lo), int(hi or lo)))
    return tuple(out)


def ext4_facts(fs: Path) -> Ext4Facts:
    text = run("dumpe2fs", fs)

    def field(name: str, default: int | None = None) -> int:
        m = re.search(rf"^{name}:\s+(\d+)", text, re.M)
        if m is None and default is not None:
            return default
        assert m is not None, name
        return int(m.group(1))

    groups = []
    for block in re.split(r"\n(?=Group \d+:)", text)[1:]:
        head = re.match(r"Group (\d+): \(Blocks (\d+)-(\d+)\)", block)
        assert head is not None
        sb = [
            (int(a), int(b or a)) for a, b in re.findall(r"superblock at (\d+)(?:-(\d+))?", block)
        ]
        sb += [(int(a), int(b)) for a, b in re.findall(r"Group descriptors at (\d+)-(\d+)", block)]
        sb += [
            (int(a), int(b)) for a, b in re.findall(r"Reserved GDT blocks at (\d+)-(\d+)", block)
        ]
        free = re.search(r"Free blocks: ?(.*)", block)
        groups.append(
            Ext4Group(
                int(head.group(1)),
                int(head.group(2)),
                int(head.group(3)),
                int(re.search(r"Block bitmap at (\d+)", block).group(1)),  # type: ignore[union-attr]
                int(re.search(r"Inode bitmap at (\d+)", block).group(1)),  # type: ignore[union-attr]
                tuple(map(int, re.search(r"Inode table at (\d+)-(\d+)", block).groups())),  # type: ignore[union-attr,arg-type]
                tuple(sb),
                _ranges(free.group(1)) if free else (),
            )
        )
    return Ext4Facts(
        block_size=field("Block size"),
        blocks_count=field("Block count"),
        first_data_block=field("First block"),
        blocks_per_group=field("Blocks per group"),
        desc_size=field("Group descriptor size", 32),
        csum="metadata_csum" in text.split("Filesystem features:")[1].split("\n")[0],
        groups=tuple(groups),
    )


@dataclass(frozen=True)
class NtfsFacts:
    """`runs` maps MFT record number -> its unnamed $DATA run list as (lcn, clusters)."""

    cluster_size: int
    cluster_count: int
    record_size: int
    mft_lcn: int
    runs: dict[int, tuple[tuple[int, int], ...]]

    def record_offset(self, number: int) -> int:
        """Byte offset of MFT record `number` (records 0-15 sit in $MFT's first run)."""
        return self.mft_lcn * self.cluster_size + number * self.record_size

    @property
    def bitmap_bytes(self) -> tuple[tuple[int, int], ...]:
        """$Bitmap's bytes that hold bits, as (fs offset, length) pieces in bit order."""
        need = (self.cluster_count + 7) // 8
        out = []
        for lcn, n in self.runs[6]:
            take = min(n * self.cluster_size, need)
            out.append((lcn * self.cluster_size, take))
            need -= take
        return tuple(out)


NTFS_SYSTEM_RECORDS = (0, 1, 2, 4, 6, 10)  # $MFT $MFTMirr $LogFile $AttrDef $Bitmap $UpCase


def ntfs_facts(fs: Path, boot: bytes) -> NtfsFacts:
    bps, spc = struct.unpack_from("<HB", boot, 0x0B)
    total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
    rec = struct.unpack_from("<b", boot, 0x40)[0]
    cluster = bps * spc
    runs = {}
    for number in NTFS_SYSTEM_RECORDS:
        out = run("ntfsinfo", "-v", "-i", str(number), fs)
        runs[number] = _ntfs_data_runs(out)
    return NtfsFacts(
        cluster,
        total_sectors * bps // cluster,
        1 << -rec if rec < 0 else rec * cluster,
        mft_lcn,
        runs,
    )


def _ntfs_data_runs(ntfsinfo: str) -> tuple[tuple[int, int], ...]:
    for part in ntfsinfo.split("Dumping attribute ")[1:]:
        if part.startswith("$DATA") and "Runlist:" in part:
            body = part.split("Runlist:", 1)[1]
            rows = re.findall(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", body, re.M)
            return tuple((int(lcn, 16), int(n, 16)) for _vcn, lcn, n in rows)
    return ()


@dataclass(frozen=True)
class XfsAg:
    """One AG: its AGF fields and its bnobt leaf (root) block and records (AG blocks)."""

    number: int
    bnoroot: int
    cntroot: int
    bnolevel: int
    records: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class XfsFacts:
    block_size: int
    sector_size: int
    agblocks: int
    agcount: int
    dblocks: int
    log_offset: int
    log_bytes: int
    crc: bool
    ags: tuple[XfsAg, ...]

    def ag_offset(self, agno: int) -> int:
        return agno * self.agblocks * self.block_size


def xfs_facts(fs: Path) -> XfsFacts:
    def xfs_db(*cmds: str) -> str:
        return run("xfs_db", "-r", *[a for c in cmds for a in ("-c", c)], fs)

    def fields(*cmds: str) -> dict[str, str]:
        return dict(re.findall(r"^(\S+) = (.*)$", xfs_db(*cmds), re.M))

    sb = fields("sb 0", "p")
    bs, agblocks = int(sb["blocksize"]), int(sb["agblocks"])
    agblklog = int(sb["agblklog"])
    logstart = int(sb["logstart"])
    log_linear = (logstart >> agblklog) * agblocks + (logstart & ((1 << agblklog) - 1))
    ags = []
    for agno in range(int(sb["agcount"])):
        agf = fields(f"agf {agno}", "p")
        leaf = xfs_db(f"agf {agno}", "addr bnoroot", "p").split("recs[", 1)[-1]
        recs = re.findall(r"(\d+):\[(\d+),(\d+)\]", leaf)
        ags.append(
            XfsAg(
                agno,
                int(agf["bnoroot"]),
                int(agf["cntroot"]),
                int(agf["bnolevel"]),
                tuple((int(a), int(b)) for _i, a, b in recs) if agf["bnolevel"] == "1" else (),
            )
        )
    return XfsFacts(
        bs,
        int(sb["sectsize"]),
        agblocks,
        int(sb["agcount"]),
        int(sb["dblocks"]),
        log_linear * bs,
        int(sb["logblocks"]) * bs,
        int(sb["versionnum"], 16) & 0xF == 5,
        tuple(ags),
    )


@dataclass(frozen=True)
class FatFacts:
    """Geometry from the BPB; `fat_offsets` are the byte offsets of every FAT copy."""

    bits: int
    sector_size: int
    cluster_size: int
    fat_offsets: tuple[int, ...]
    fat_size: int
    root_dir: tuple[int, int]  # FAT12/16 fixed root directory (offset, length); (0, 0) on FAT32
    data_offset: int
    cluster_count: int
    root_cluster: int

    def cluster_offset(self, n: int) -> int:
        return self.data_offset + (n - 2) * self.cluster_size


def fat_facts(boot: bytes) -> FatFacts:
    bps, spc, reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    fat_sectors = struct.unpack_from("<H", boot, 22)[0] or struct.unpack_from("<I", boot, 36)[0]
    total = total16 or struct.unpack_from("<I", boot, 32)[0]
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data = reserved + nfats * fat_sectors + root_sectors
    clusters = (total - data) // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    return FatFacts(
        bits,
        bps,
        spc * bps,
        tuple((reserved + i * fat_sectors) * bps for i in range(nfats)),
        fat_sectors * bps,
        ((reserved + nfats * fat_sectors) * bps, root_sectors * bps),
        data * bps,
        clusters,
        struct.unpack_from("<I", boot, 44)[0] if bits == 32 else 0,
    )


def fat_entry(fat: bytes, bits: int, n: int) -> int:
    """Entry `n` of a FAT held in `fat`."""
    if bits == 32:
        return int(struct.unpack_from("<I", fat, 4 * n)[0]) & 0x0FFFFFFF
    if bits == 16:
        return int(struct.unpack_from("<H", fat, 2 * n)[0])
    pair = int(struct.unpack_from("<H", fat, n * 3 // 2)[0])
    return pair >> 4 if n & 1 else pair & 0x0FFF


def fat_entry_bytes(facts: FatFacts, fat: bytes, n: int, value: int) -> tuple[int, bytes]:
    """(offset in the FAT, bytes) that set entry `n` to `value`, keeping FAT12 neighbours."""
    if facts.bits == 32:
        old = struct.unpack_from("<I", fat, 4 * n)[0]
        return 4 * n, struct.pack("<I", (old & 0xF0000000) | value)
    if facts.bits == 16:
        return 2 * n, struct.pack("<H", value)
    off = n * 3 // 2
    pair = struct.unpack_from("<H", fat, off)[0]
    pair = (pair & 0x000F) | value << 4 if n & 1 else (pair & 0xF000) | value
    return off, struct.pack("<H", pair)


@dataclass(frozen=True)
class LvmFacts:
    """PV layout in partition offsets: data starts at `pe_start`; the metadata area at
    `mda_offset` (its 512-byte header) holds the current text at `text_offset`."""

    pe_start: int
    label_offset: int
    mda_offset: int
    text_offset: int
    text_size: int


def lvm_facts(head: bytes) -> LvmFacts:
    """Parse the PV label, header and first metadata area from the PV's first MiB."""
    label = next(s for s in range(4) if head[s * 512 : s * 512 + 8] == b"LABELONE")
    pvh = label * 512 + struct.unpack_from("<I", head, label * 512 + 20)[0]
    pos = pvh + 32 + 8
    areas: list[list[tuple[int, int]]] = [[], []]
    for which in (0, 1):
        while True:
            off, size = struct.unpack_from("<QQ", head, pos)
            pos += 16
            if not off and not size:
                break
            areas[which].append((off, size))
    mda = areas[1][0][0]
    text_off, text_size = struct.unpack_from("<QQ", head, mda + 40)
    return LvmFacts(areas[0][0][0], label * 512, mda, mda + text_off, text_size)
