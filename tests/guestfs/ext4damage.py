"""Damaging ext2/3/4 images the way a broken disk or a careful attacker would.

Checksums are recomputed here from the kernel's definitions (crc32c of the metadata_csum seed,
crc16 for gdt_csum), written independently of guestfs.ext4csum, so that a test can damage a
structure *and* make its checksum match again: then only a consistency check can notice.
Offsets are bytes of the image file; `fs` is the byte offset of the filesystem in it.
Layouts with META_BG are not handled (descriptors are taken to follow the superblock).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c

from tests.guestfs.imaging import patch_bytes, read_bytes, run

METADATA_CSUM = 0x400
GDT_CSUM = 0x10
CSUM_SEED = 0x2000
INCOMPAT_64BIT = 0x80


def crc32c_le(seed: int, data: bytes) -> int:
    """Linux crc32c(): no inversion in or out."""
    return ~int(crc32c.crc32c(data, value=~seed & 0xFFFFFFFF)) & 0xFFFFFFFF


def crc16(crc: int, data: bytes) -> int:
    """Linux crc16() (polynomial 0x8005 reflected), bit by bit."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True)
class Geometry:
    """What a damaging test needs to know about one ext filesystem in an image."""

    path: Path
    fs: int
    block_size: int
    first_data_block: int
    blocks_per_group: int
    desc_size: int
    uuid: bytes
    seed: int | None  # metadata_csum seed
    gdt_csum: bool

    def block(self, n: int) -> int:
        """Image offset of block `n`."""
        return self.fs + n * self.block_size

    def desc(self, g: int) -> int:
        """Image offset of group `g`'s descriptor."""
        return self.block(self.first_data_block + 1) + g * self.desc_size

    def desc_field(self, g: int, lo: int, hi: int | None, size: int) -> int:
        """A descriptor field of `size` bytes (4 or 2) at `lo`, with its high half at `hi`."""
        fmt = "<I" if size == 4 else "<H"
        raw = read_bytes(self.path, self.desc(g), self.desc_size)
        value = int(struct.unpack_from(fmt, raw, lo)[0])
        if hi is not None and self.desc_size >= 64:
            value |= int(struct.unpack_from(fmt, raw, hi)[0]) << (8 * size)
        return value

    def block_bitmap(self, g: int) -> int:
        """Block number of group `g`'s block bitmap."""
        return self.desc_field(g, 0x00, 0x20, 4)

    def group_of(self, block: int) -> int:
        return (block - self.first_data_block) // self.blocks_per_group


def geometry(path: Path, fs: int = 0) -> Geometry:
    sb = read_bytes(path, fs + 1024, 1024)
    incompat, ro_compat = struct.unpack_from("<II", sb, 0x60)
    seed = None
    if ro_compat & METADATA_CSUM:
        seed = crc32c_le(0xFFFFFFFF, sb[0x68:0x78])
        if incompat & CSUM_SEED:
            seed = struct.unpack_from("<I", sb, 0x270)[0]
    return Geometry(
        path=path,
        fs=fs,
        block_size=1024 << struct.unpack_from("<I", sb, 0x18)[0],
        first_data_block=struct.unpack_from("<I", sb, 0x14)[0],
        blocks_per_group=struct.unpack_from("<I", sb, 0x20)[0],
        desc_size=struct.unpack_from("<H", sb, 0xFE)[0] if incompat & INCOMPAT_64BIT else 32,
        uuid=sb[0x68:0x78],
        seed=seed,
        gdt_csum=bool(ro_compat & GDT_CSUM),
    )


def reseal_superblock(path: Path, fs: int = 0) -> None:
    """Make the superblock checksum match its (patched) contents again."""
    sb = read_bytes(path, fs + 1024, 1024)
    if struct.unpack_from("<I", sb, 0x64)[0] & METADATA_CSUM:
        patch_bytes(path, fs + 1024 + 0x3FC, struct.pack("<I", crc32c_le(0xFFFFFFFF, sb[:0x3FC])))


def reseal_group(geo: Geometry, g: int, bitmap: bool = True) -> None:
    """Make group `g`'s block bitmap checksum (metadata_csum; unless `bitmap` is false) and
    then its descriptor checksum match what is on disk now."""
    if geo.seed is not None and bitmap:
        raw = read_bytes(geo.path, geo.block(geo.block_bitmap(g)), geo.blocks_per_group // 8)
        csum = crc32c_le(geo.seed, raw)
        patch_bytes(geo.path, geo.desc(g) + 0x18, struct.pack("<H", csum & 0xFFFF))
        if geo.desc_size >= 64:
            patch_bytes(geo.path, geo.desc(g) + 0x38, struct.pack("<H", csum >> 16))
    desc = read_bytes(geo.path, geo.desc(g), geo.desc_size)
    group = struct.pack("<I", g)
    if geo.seed is not None:
        value = crc32c_le(geo.seed, group + desc[:0x1E] + b"\0\0" + desc[0x20:]) & 0xFFFF
    elif geo.gdt_csum:
        value = crc16(crc16(0xFFFF, geo.uuid), group + desc[:0x1E] + desc[0x20:])
    else:
        return
    patch_bytes(geo.path, geo.desc(g) + 0x1E, struct.pack("<H", value))


def set_desc_field(
    geo: Geometry, g: int, offset: int, value: int, size: int, bitmap: bool = True
) -> None:
    """Write a little-endian descriptor field (low half only) and reseal the group (see
    `reseal_group`)."""
    patch_bytes(geo.path, geo.desc(g) + offset, value.to_bytes(size, "little"))
    reseal_group(geo, g, bitmap)


def debugfs(path: Path, fs: int, *commands: str) -> str:
    """Run debugfs -w commands on the filesystem (it rewrites bitmap checksums itself)."""
    spec = f"{path}?offset={fs}" if fs else str(path)
    script = path.with_suffix(".debugfs")
    script.write_text("\n".join(commands) + "\n")
    return run("debugfs", "-w", "-f", script, spec)


def free_blocks_keeping_counts(geo: Geometry, start: int, count: int) -> None:
    """Mark blocks [start, start + count) free in their bitmap (one group) and raise the
    group's free count to match, every checksum resealed: only a cross-check can tell."""
    g = geo.group_of(start)
    free = geo.desc_field(g, 0x0C, 0x2C, 2)
    debugfs(geo.path, geo.fs, f"freeb {start} {count}")
    set_desc_field(geo, g, 0x0C, (free + count) & 0xFFFF, 2)
