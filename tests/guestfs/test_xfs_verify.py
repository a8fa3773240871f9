"""XFS free space is trusted only when verified: CRCs, self-describing headers, and the
cross-checks (bnobt = cnobt, counters, what must be in use is not free).

Corruptions are written with raw offsets from the on-disk format (not through our parser);
"recomputed" cases rewrite every CRC so that only a cross-check can catch them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pytest

from tests.guestfs.imaging import DiskImage, MiB, have, patch_bytes, read_bytes, run
from tests.guestfs.verdict import assert_clean, assert_whole, build, sparse_copy
from vmaccel.guestfs.allocation import AllocationMap, VolumeReport
from vmaccel.guestfs.extent import complement, total
from vmaccel.guestfs.usage import FsState

pytestmark = pytest.mark.skipif(not have("mkfs.xfs"), reason="mkfs.xfs missing")

AGF_CRC, BTREE_CRC = 0xD8, 0x34  # byte offsets of agf_crc and bb_crc


def _map(path: Path) -> AllocationMap:
    return build(path)


def _volume(amap: AllocationMap) -> VolumeReport:
    return next(r for r in amap.volumes if r.fstype == "xfs")


def _name(path: Path) -> str:
    return _volume(_map(path)).volume.name


def _assert_whole(path: Path, reason: str) -> None:
    assert_whole(path, _name(path), reason)


def _assert_clean(path: Path) -> VolumeReport:
    return assert_clean(path, _name(path))


@dataclass
class XfsImage:
    """Raw access to an XFS filesystem at byte `base` of `path` (big-endian fields)."""

    path: Path
    base: int

    def __post_init__(self) -> None:
        sb = read_bytes(self.path, self.base, 512)
        self.bs = struct.unpack_from(">I", sb, 0x04)[0]
        self.logstart = struct.unpack_from(">Q", sb, 0x30)[0]
        self.agblocks = struct.unpack_from(">I", sb, 0x54)[0]
        self.logblocks = struct.unpack_from(">I", sb, 0x60)[0]
        self.crc = struct.unpack_from(">H", sb, 0x64)[0] & 0xF == 5
        self.sectsize = struct.unpack_from(">H", sb, 0x66)[0]
        self.agblklog = sb[0x7C]

    def block(self, agno: int, agbno: int) -> int:
        return self.base + (agno * self.agblocks + agbno) * self.bs

    def agf(self, agno: int) -> int:
        return self.block(agno, 0) + self.sectsize

    def u32(self, offset: int) -> int:
        return int(struct.unpack(">I", read_bytes(self.path, offset, 4))[0])

    def put_u32(self, offset: int, value: int) -> None:
        patch_bytes(self.path, offset, struct.pack(">I", value))

    def fix_crc(self, offset: int, length: int, crc_at: int) -> None:
        data = bytearray(read_bytes(self.path, offset, length))
        data[crc_at : crc_at + 4] = bytes(4)
        patch_bytes(self.path, offset + crc_at, crc32c.crc32c(bytes(data)).to_bytes(4, "little"))

    def leaf(self, agno: int, tree: int) -> int:
        """Byte offset of the single leaf of AG `agno`'s bnobt (0) or cnobt (1)."""
        assert self.u32(self.agf(agno) + 0x1C + 4 * tree) == 1, "test expects one-level trees"
        return self.block(agno, self.u32(self.agf(agno) + 0x10 + 4 * tree))

    def records(self, agno: int, tree: int) -> list[tuple[int, int]]:
        leaf = self.leaf(agno, tree)
        n = struct.unpack(">H", read_bytes(self.path, leaf + 6, 2))[0]
        raw = read_bytes(self.path, leaf + self.header, 8 * n)
        return [(int(a), int(b)) for a, b in struct.iter_unpack(">II", raw)]

    @property
    def header(self) -> int:
        return 56 if self.crc else 16

    def set_record(self, agno: int, tree: int, index: int, start: int, length: int) -> None:
        """Rewrite record `index` of a leaf and, on v5, its CRC."""
        leaf = self.leaf(agno, tree)
        patch_bytes(self.path, leaf + self.header + 8 * index, struct.pack(">II", start, length))
        if self.crc:
            self.fix_crc(leaf, self.bs, BTREE_CRC)

    def move_free_extent(self, agno: int, index: int, start: int) -> None:
        """Move bnobt record `index` (and the same cnobt record) to `start`, same length:
        counters, order and both trees stay consistent."""
        old = self.records(agno, 0)[index]
        self.set_record(agno, 0, index, start, old[1])
        self.set_record(agno, 1, self.records(agno, 1).index(old), start, old[1])


@pytest.fixture
def xfs(xfs_disk: DiskImage, tmp_path: Path) -> XfsImage:
    return XfsImage(sparse_copy(xfs_disk, tmp_path), xfs_disk.filesystems[0].offset)


# --- checksums -----------------------------------------------------------------------------


def test_superblock_crc_is_verified(xfs: XfsImage) -> None:
    patch_bytes(xfs.path, xfs.base + 0x6C, b"LABEL")  # sb_fname, CRC left stale
    _assert_whole(xfs.path, "xfs superblock: CRC mismatch")


def test_agf_crc_is_verified(xfs: XfsImage) -> None:
    xfs.put_u32(xfs.agf(1) + 0x34, xfs.u32(xfs.agf(1) + 0x34) - 1)  # agf_freeblks
    _assert_whole(xfs.path, "xfs: AG 1 AGF: CRC mismatch")


def test_agi_crc_is_verified(xfs: XfsImage) -> None:
    agi = xfs.agf(2) + xfs.sectsize
    xfs.put_u32(agi + 0x20, 12345)  # agi_newino
    _assert_whole(xfs.path, "xfs: AG 2 AGI: CRC mismatch")


def test_bnobt_block_crc_is_verified(xfs: XfsImage) -> None:
    leaf = xfs.leaf(3, 0)
    start, length = xfs.records(3, 0)[0]
    patch_bytes(xfs.path, leaf + 56, struct.pack(">II", start + 1, length - 1))
    _assert_whole(xfs.path, f"xfs: AG 3 bnobt level 0 block {xfs.u32(xfs.agf(3) + 0x10)}: CRC")


def test_btree_block_must_describe_itself(xfs: XfsImage) -> None:
    """A valid block copied to the wrong place: its CRC holds, bb_blkno gives it away."""
    src, dst = xfs.leaf(0, 1), xfs.leaf(0, 0)  # cnobt leaf over the bnobt leaf
    data = bytearray(read_bytes(xfs.path, src, xfs.bs))
    data[:4] = b"AB3B"
    patch_bytes(xfs.path, dst, bytes(data))
    xfs.fix_crc(dst, xfs.bs, BTREE_CRC)
    _assert_whole(xfs.path, "header names disk address")


# --- cross-checks, every CRC recomputed ----------------------------------------------------


def test_free_extent_over_the_log_is_caught(xfs: XfsImage) -> None:
    log_ag, log_agbno = xfs.logstart >> xfs.agblklog, xfs.logstart & ((1 << xfs.agblklog) - 1)
    records = xfs.records(log_ag, 0)
    log_end = log_agbno + xfs.logblocks
    index = next(i for i, (s, _n) in enumerate(records) if s >= log_end)
    xfs.move_free_extent(log_ag, index, log_end - 1)  # now takes the log's last block
    _assert_whole(xfs.path, f"covers the internal log (blocks {log_agbno}+{xfs.logblocks})")


def test_free_extent_over_the_ag_headers_is_caught(xfs: XfsImage) -> None:
    xfs.move_free_extent(3, 0, 0)
    _assert_whole(xfs.path, "xfs: AG 3: free extent 0+")
    _assert_whole(xfs.path, "covers the AG headers")


def test_free_extent_over_a_btree_block_is_caught(xfs: XfsImage) -> None:
    bno_root = xfs.u32(xfs.agf(1) + 0x10)
    assert xfs.records(1, 0)[0][0] > bno_root  # the first free extent lies after the root
    xfs.move_free_extent(1, 0, bno_root)
    _assert_whole(xfs.path, "covers the bnobt block")


def test_agf_counters_must_match_the_tree(xfs: XfsImage) -> None:
    agf = xfs.agf(0)
    xfs.put_u32(agf + 0x34, xfs.u32(agf + 0x34) + 1)
    xfs.fix_crc(agf, xfs.sectsize, AGF_CRC)
    _assert_whole(xfs.path, "the AGF says agf_freeblks")


def test_cnobt_must_hold_the_same_extents(xfs: XfsImage) -> None:
    start, length = xfs.records(0, 1)[0]
    xfs.set_record(0, 1, 0, start + 1, length)
    _assert_whole(xfs.path, "xfs: AG 0: cnobt and bnobt do not hold the same free extents")


def test_free_extent_beyond_the_ag_is_caught(xfs: XfsImage) -> None:
    start, _length = xfs.records(3, 0)[-1]
    xfs.set_record(3, 0, len(xfs.records(3, 0)) - 1, start, xfs.agblocks)
    _assert_whole(xfs.path, "leaves the AG")


# --- the log rule, v4, multi-level trees ----------------------------------------------------


def _mount(img: Path, mnt: Path) -> None:
    mnt.mkdir(exist_ok=True)
    try:
        run("mount", "-o", "loop", img, mnt)
    except RuntimeError as exc:
        pytest.skip(f"cannot mount xfs here: {exc}")


def _fresh(tmp_path: Path, *options: str) -> Path:
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(320 * MiB)
    run("mkfs.xfs", "-q", "-f", *options, img)
    return img


def test_mounted_then_unmounted_is_clean_and_a_live_copy_is_dirty(tmp_path: Path) -> None:
    img = _fresh(tmp_path)
    mnt = tmp_path / "mnt"
    _mount(img, mnt)
    try:
        (mnt / "f").write_bytes(os.urandom(3 * MiB))
        os.sync()
        live = tmp_path / "live.img"
        shutil.copyfile(img, live)  # what a crash-consistent snapshot sees
    finally:
        run("umount", mnt)
    _assert_clean(img)
    rep = _volume(_map(live))
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size
    assert rep.whole_reason == "xfs log is not clean (mounted or crashed)"


def test_v4_filesystem_is_mapped_and_cross_checked(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(320 * MiB)
    proc = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "crc=0", str(img)], capture_output=True)
    if proc.returncode:
        pytest.skip("mkfs.xfs no longer makes v4 filesystems")
    _assert_clean(img)
    v4 = XfsImage(img, 0)
    assert not v4.crc
    v4.move_free_extent(1, 0, 0)
    _assert_whole(img, "covers the AG headers")


def _punch_every_other_block(path: Path, length: int, step: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert libc.fallocate(fd, 0, 0, length) == 0
        for off in range(0, length, 2 * step):  # FALLOC_FL_PUNCH_HOLE | KEEP_SIZE
            assert libc.fallocate(fd, 3, off, step) == 0
    finally:
        os.close(fd)


def test_multilevel_trees_match_xfs_db_and_node_crc_is_verified(tmp_path: Path) -> None:
    """~25k free extents in AG 0: bnobt and cnobt three levels high."""
    img = _fresh(tmp_path, "-b", "size=1024", "-d", "agcount=2")
    mnt = tmp_path / "mnt"
    _mount(img, mnt)
    try:
        _punch_every_other_block(mnt / "holey", 50 * MiB, 1024)
    finally:
        run("umount", mnt)
    fs = XfsImage(img, 0)
    assert fs.u32(fs.agf(0) + 0x1C) >= 2, "bnobt should have grown interior nodes"
    rep = _assert_clean(img)
    free_blocks = 0
    for agno in (0, 1):  # the free-space trees' totals as xfs_db reads them (AGFL excluded)
        out = run("xfs_db", "-r", "-c", f"agf {agno}", "-c", "print freeblks", img)
        free_blocks += int(out.split("=")[1])
    amap = _map(img)
    assert total(complement(amap.used, amap.disk_size)) == free_blocks * 1024
    assert rep.used_bytes == amap.disk_size - free_blocks * 1024
    root = fs.block(0, fs.u32(fs.agf(0) + 0x10))
    key = struct.unpack(">I", read_bytes(img, root + 56, 4))[0]
    patch_bytes(img, root + 56, struct.pack(">I", key + 1))  # first key of the root node
    _assert_whole(img, "xfs: AG 0 bnobt level")
    _assert_whole(img, "CRC mismatch")
