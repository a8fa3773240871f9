"""FAT free space is trusted only when the FATs are consistent: copies agree, entries are
valid, chains never run into free clusters, the FAT32 root directory is in use, entry 0
holds the media byte. The FSInfo sector is advisory. Dirty volumes are taken whole.

Corruptions are written with raw offsets from the BPB (not through our parser).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.guestfs.imaging import (
    DiskImage,
    MiB,
    have,
    make_tree,
    mkfs_vfat,
    patch_bytes,
    read_bytes,
)
from tests.guestfs.verdict import assert_clean, assert_whole, report, sparse_copy
from vmaccel.guestfs.usage import FsState


@dataclass
class FatImage:
    """Raw access to the FATs of a FAT volume at byte `base` of `path`."""

    path: Path
    base: int

    def __post_init__(self) -> None:
        boot = read_bytes(self.path, self.base, 512)
        bps, spc, reserved, self.nfats, root_entries, total16 = struct.unpack_from(
            "<HBHBHH", boot, 11
        )
        fat_sectors = struct.unpack_from("<H", boot, 22)[0] or struct.unpack_from("<I", boot, 36)[0]
        total = total16 or struct.unpack_from("<I", boot, 32)[0]
        data = reserved + self.nfats * fat_sectors + (root_entries * 32 + bps - 1) // bps
        self.clusters = (total - data) // spc
        self.bits = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32
        self.fats = [self.base + (reserved + i * fat_sectors) * bps for i in range(self.nfats)]

    def entry(self, cluster: int, fat: int = 0) -> int:
        if self.bits == 12:
            pair = struct.unpack("<H", read_bytes(self.path, self.fats[fat] + cluster * 3 // 2, 2))
            return pair[0] >> 4 if cluster & 1 else pair[0] & 0xFFF
        width = self.bits // 8
        value = int.from_bytes(
            read_bytes(self.path, self.fats[fat] + cluster * width, width), "little"
        )
        return value & 0x0FFFFFFF

    def entries(self) -> list[int]:
        """Every entry of FAT #1, read at once."""
        raw = read_bytes(self.path, self.fats[0], ((self.clusters + 2) * self.bits + 7) // 8 + 1)
        if self.bits == 12:
            return [self.entry(c) for c in range(self.clusters + 2)]
        fmt = "<H" if self.bits == 16 else "<I"
        return [v[0] & 0x0FFFFFFF for v in struct.iter_unpack(fmt, raw[: len(raw) - 1])]

    def set_entry(self, cluster: int, value: int, fats: tuple[int, ...] = (0, 1)) -> None:
        for fat in fats:
            if self.bits == 12:
                at = self.fats[fat] + cluster * 3 // 2
                (pair,) = struct.unpack("<H", read_bytes(self.path, at, 2))
                pair = (pair & 0xF) | value << 4 if cluster & 1 else (pair & 0xF000) | value
                patch_bytes(self.path, at, struct.pack("<H", pair))
            else:
                width = self.bits // 8
                patch_bytes(
                    self.path, self.fats[fat] + cluster * width, value.to_bytes(width, "little")
                )

    def longest_chain(self) -> tuple[int, int]:
        """(first, length) of the longest run of clusters each linking to the next."""
        values = self.entries()
        best, start = (0, 0), None
        for c in range(2, self.clusters + 2):
            if values[c] == c + 1:
                start = c if start is None else start
                best = max(best, (c - start + 1, start))
            else:
                start = None
        return best[1], best[0]


@pytest.fixture
def fat32(gpt_disk: DiskImage, tmp_path: Path) -> FatImage:
    return FatImage(sparse_copy(gpt_disk, tmp_path), gpt_disk.filesystems[0].offset)


@pytest.fixture
def fat16(mbr_disk: DiskImage, tmp_path: Path) -> FatImage:
    return FatImage(sparse_copy(mbr_disk, tmp_path), mbr_disk.filesystems[1].offset)


def test_fixtures_have_the_expected_fat_types(fat32: FatImage, fat16: FatImage) -> None:
    assert (fat32.bits, fat32.nfats, fat16.bits, fat16.nfats) == (32, 2, 16, 2)


@pytest.mark.parametrize("which", ["fat32", "fat16"])
def test_fat_copies_must_agree(which: str, request: pytest.FixtureRequest) -> None:
    fat: FatImage = request.getfixturevalue(which)
    first, _n = fat.longest_chain()
    fat.set_entry(first + 1, 0, fats=(1,))  # FAT #2 only
    name = "p1" if which == "fat32" else "p5"
    assert_whole(fat.path, name, f"fat: FAT copies disagree at cluster {first + 1} ")


def test_zeroed_region_of_the_first_fat_is_caught(fat32: FatImage) -> None:
    first, n = fat32.longest_chain()
    assert n >= 8
    mid = first + n // 2
    patch_bytes(fat32.path, fat32.fats[0] + mid * 4, bytes(4 * (n // 2)))
    assert_whole(fat32.path, "p1", f"fat: FAT copies disagree at cluster {mid} ")


def test_zeroed_region_of_both_fats_is_caught(fat32: FatImage) -> None:
    first, n = fat32.longest_chain()
    mid = first + n // 2
    for fat in fat32.fats:
        patch_bytes(fat32.path, fat + mid * 4, bytes(4 * (n // 2)))
    assert_whole(
        fat32.path, "p1", f"the chain through cluster {mid - 1} continues into free cluster {mid}"
    )


def test_chain_into_a_free_cluster_far_away_is_caught(fat16: FatImage) -> None:
    """The link leaves the FAT chunk being scanned: it is checked at the end."""
    first, _n = fat16.longest_chain()
    values = fat16.entries()
    far = next(c for c in range(fat16.clusters + 1, 2, -1) if values[c] == 0)
    fat16.set_entry(first, far)
    assert_whole(
        fat16.path, "p5", f"the chain through cluster {first} continues into free cluster {far}"
    )


@pytest.mark.parametrize("value", [1, "beyond"])
def test_entries_must_be_cluster_numbers_or_marks(fat16: FatImage, value: int | str) -> None:
    first, _n = fat16.longest_chain()
    bad = fat16.clusters + 2 if value == "beyond" else 1
    fat16.set_entry(first, int(bad))
    assert_whole(fat16.path, "p5", f"fat: FAT entry of cluster {first} holds 0x{int(bad):x}")


def test_fat32_root_directory_cluster_must_be_in_use(fat32: FatImage) -> None:
    root = struct.unpack("<I", read_bytes(fat32.path, fat32.base + 0x2C, 4))[0]
    assert fat32.entry(root) >= 0x0FFFFFF8  # one cluster, end of chain
    fat32.set_entry(root, 0)
    assert_whole(fat32.path, "p1", f"fat: FAT32 root directory cluster {root} is free")


def test_fat_entry_0_must_hold_the_media_byte(fat16: FatImage) -> None:
    fat16.set_entry(0, 0xFFF0)
    assert_whole(fat16.path, "p5", "does not hold the media byte 0xf8")


def test_fsinfo_free_count_is_advisory(fat32: FatImage, gpt_disk: DiskImage) -> None:
    fsinfo = struct.unpack("<H", read_bytes(fat32.path, fat32.base + 0x30, 2))[0]
    patch_bytes(fat32.path, fat32.base + fsinfo * 512 + 488, struct.pack("<I", 0))
    assert assert_clean(fat32.path, "p1") == report(gpt_disk.path, "p1")


def test_unmirrored_fat32_reads_only_the_active_fat(fat32: FatImage, gpt_disk: DiskImage) -> None:
    first, n = fat32.longest_chain()
    patch_bytes(fat32.path, fat32.base + 0x28, struct.pack("<H", 0x81))  # FAT #2 active
    patch_bytes(fat32.path, fat32.fats[0] + (first + 1) * 4, bytes(4 * (n - 1)))  # stale #1
    assert assert_clean(fat32.path, "p1").used_bytes == report(gpt_disk.path, "p1").used_bytes
    patch_bytes(fat32.path, fat32.base + 0x28, struct.pack("<H", 0x80))  # FAT #1 active
    assert_whole(fat32.path, "p1", "continues into free cluster")


@pytest.fixture
def fat12(tmp_path: Path) -> FatImage:
    if not (have("mkfs.vfat") and have("mcopy")):
        pytest.skip("mkfs.vfat or mtools missing")
    img = tmp_path / "fat12.img"
    files = make_tree(tmp_path / "src", 12, big=400_000)
    mkfs_vfat(img, 4 * MiB, files, tmp_path / "src", 12)
    return FatImage(img, 0)


def test_fresh_fat12_is_clean_and_cross_checked(fat12: FatImage) -> None:
    assert fat12.bits == 12
    assert_clean(fat12.path, "disk")
    first, _n = fat12.longest_chain()
    fat12.set_entry(first + 1, 0, fats=(1,))
    assert_whole(fat12.path, "disk", f"fat: FAT copies disagree at cluster {first + 1} ")
    fat12.set_entry(first + 1, 0, fats=(0,))
    assert_whole(fat12.path, "disk", f"continues into free cluster {first + 1}")


def test_fat12_dirty_rule_is_the_boot_sector_bit(fat12: FatImage) -> None:
    patch_bytes(fat12.path, 0x25, b"\x01")
    rep = report(fat12.path, "disk")
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size
    assert rep.whole_reason and "volume-dirty bit" in rep.whole_reason


def test_fresh_fat16_is_clean(tmp_path: Path) -> None:
    if not (have("mkfs.vfat") and have("mcopy")):
        pytest.skip("mkfs.vfat or mtools missing")
    img = tmp_path / "fat16.img"
    files = make_tree(tmp_path / "src", 16)
    mkfs_vfat(img, 32 * MiB, files, tmp_path / "src", 16)
    assert FatImage(img, 0).bits == 16
    assert_clean(img, "disk")


def _chains(fat: FatImage) -> dict[int, int]:
    """Head cluster -> chain length, for every chain in FAT #1 (heads: linked from nowhere)."""
    values = fat.entries()
    targets = {v for v in values[2:] if 2 <= v <= fat.clusters + 1}
    chains = {}
    for head in range(2, fat.clusters + 2):
        if values[head] and head not in targets:
            n, c = 1, head
            while 2 <= values[c] <= fat.clusters + 1:
                n, c = n + 1, values[c]
            chains[head] = n
    return chains


def test_chain_freed_whole_in_every_fat_is_caught(fat16: FatImage) -> None:
    """frag/b.bin (130001 bytes) freed in both FATs: no link leads into it any more; its
    directory entry (in a subdirectory) is the witness."""
    cluster_size = read_bytes(fat16.path, fat16.base + 0x0D, 1)[0] * 512
    want = -(-130_001 // cluster_size)
    head = next(h for h, n in _chains(fat16).items() if n == want)
    values = fat16.entries()
    c = head
    while 2 <= c <= fat16.clusters + 1:
        nxt = values[c]
        fat16.set_entry(c, 0)
        c = nxt
    assert_whole(fat16.path, "p5", f"starts at cluster {head}, which is free or invalid")


def test_wrong_number_of_fats_is_caught(fat16: FatImage) -> None:
    patch_bytes(fat16.path, fat16.base + 0x10, b"\x01")  # FAT #2 now read as the root dir
    assert_whole(fat16.path, "p5", "fat: root directory, entry 0: not a directory entry")


def test_wrong_root_entry_count_is_caught(fat16: FatImage) -> None:
    patch_bytes(fat16.path, fat16.base + 0x11, struct.pack("<H", 256))  # clusters shift
    assert_whole(fat16.path, "p5", "does not start with its '.' and '..' entries")
    patch_bytes(fat16.path, fat16.base + 0x11, struct.pack("<H", 0))
    assert_whole(fat16.path, "p5", "0 root entries and a 16-bit FAT size of")


def test_fat32_geometry_must_match_the_backup_boot_sector(fat32: FatImage) -> None:
    total = struct.unpack("<I", read_bytes(fat32.path, fat32.base + 0x20, 4))[0]
    patch_bytes(fat32.path, fat32.base + 0x20, struct.pack("<I", total - 64))
    assert_whole(fat32.path, "p1", "boot sector and its backup (sector 6) disagree in BPB bytes")
