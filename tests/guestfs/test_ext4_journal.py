"""ext4 needs_recovery: clean when the jbd2 journal is empty, dirty when it holds transactions.

The journal is located with debugfs (`bmap <8> 0`), independent of our own inode parser.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.guestfs.ext4damage import reseal_superblock
from tests.guestfs.imaging import DiskImage, MiB, have, patch_bytes, read_bytes, run
from vmaccel.guestfs.allocation import VolumeReport, build_allocation_map
from vmaccel.guestfs.usage import FsState

RECOVER = 0x4
ERROR_FS = 0x2

pytestmark = pytest.mark.skipif(not have("debugfs"), reason="needs debugfs")


def journal_super_offset(image: Path, fs_offset: int) -> int:
    """Byte offset in `image` of the jbd2 superblock of the ext fs at `fs_offset`."""
    spec = f"{image}?offset={fs_offset}" if fs_offset else str(image)
    block = int(run("debugfs", "-R", "bmap <8> 0", spec).split()[-1])
    log_bs = struct.unpack("<I", read_bytes(image, fs_offset + 1024 + 0x18, 4))[0]
    return fs_offset + block * (1024 << log_bs)


def set_needs_recovery(image: Path, fs_offset: int) -> None:
    at = fs_offset + 1024 + 0x60
    flags = int.from_bytes(read_bytes(image, at, 4), "little") | RECOVER
    patch_bytes(image, at, flags.to_bytes(4, "little"))
    reseal_superblock(image, fs_offset)  # as the kernel does: metadata_csum covers the flags


def only_report(image: Path) -> VolumeReport:
    with open(image, "rb") as f:
        (rep,) = build_allocation_map(f).volumes
    return rep


@pytest.fixture(params=[("ext4", "4096"), ("ext4", "1024"), ("ext3", "4096")], ids=str)
def bare_ext(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A bare (unpartitioned) ext filesystem image with an internal journal."""
    fstype, block = request.param
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(24 * MiB)
    run("mkfs.ext4", "-q", "-F", "-t", fstype, "-b", block, img)
    return img


def test_needs_recovery_with_empty_journal_is_clean(bare_ext: Path) -> None:
    before = only_report(bare_ext)
    set_needs_recovery(bare_ext, 0)
    after = only_report(bare_ext)
    assert after.state is FsState.CLEAN and after.whole_reason is None
    assert after.used_bytes == before.used_bytes < after.volume.size // 2
    assert "journal is empty" in (after.note or "")


def test_needs_recovery_with_pending_transactions_is_dirty(bare_ext: Path) -> None:
    jsb = journal_super_offset(bare_ext, 0)
    first = struct.unpack(">I", read_bytes(bare_ext, jsb + 0x14, 4))[0]
    patch_bytes(bare_ext, jsb + 0x1C, struct.pack(">I", first))  # s_start: a log to replay
    assert only_report(bare_ext).state is FsState.CLEAN, "no needs_recovery: s_start ignored"
    set_needs_recovery(bare_ext, 0)
    rep = only_report(bare_ext)
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size
    assert "needs recovery" in (rep.whole_reason or "")
    assert "holds transactions" in (rep.whole_reason or "")


def test_aborted_journal_is_dirty(bare_ext: Path) -> None:
    jsb = journal_super_offset(bare_ext, 0)
    patch_bytes(bare_ext, jsb + 0x20, struct.pack(">i", -5))  # s_errno = -EIO
    set_needs_recovery(bare_ext, 0)
    rep = only_report(bare_ext)
    assert rep.state is FsState.DIRTY and "aborted" in (rep.whole_reason or "")


def test_error_fs_stays_dirty_with_an_empty_journal(bare_ext: Path) -> None:
    state = struct.unpack("<H", read_bytes(bare_ext, 1024 + 0x3A, 2))[0]
    patch_bytes(bare_ext, 1024 + 0x3A, struct.pack("<H", state | ERROR_FS))
    set_needs_recovery(bare_ext, 0)
    rep = only_report(bare_ext)
    assert rep.state is FsState.DIRTY and "ERROR_FS" in (rep.whole_reason or "")


def test_damaged_journal_superblock_is_dirty(bare_ext: Path) -> None:
    patch_bytes(bare_ext, journal_super_offset(bare_ext, 0), b"\0\0\0\0")  # jbd2 magic
    set_needs_recovery(bare_ext, 0)
    rep = only_report(bare_ext)
    assert rep.state is FsState.DIRTY and "journal unreadable" in (rep.whole_reason or "")


def test_dirty_ext4_partition_is_taken_whole(mbr_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    """A partitioned disk: needs_recovery plus a non-empty log takes only that volume whole."""
    copy = disk_copy(mbr_disk)
    spec = mbr_disk.filesystems[0]
    set_needs_recovery(copy, spec.offset)
    with open(copy, "rb") as f:
        rep = next(r for r in build_allocation_map(f).volumes if r.volume.name == "p1")
    assert rep.state is FsState.CLEAN and rep.note
    jsb = journal_super_offset(copy, spec.offset)
    patch_bytes(copy, jsb + 0x1C, read_bytes(copy, jsb + 0x14, 4))  # s_start = s_first
    with open(copy, "rb") as f:
        amap = build_allocation_map(f)
    rep = next(r for r in amap.volumes if r.volume.name == "p1")
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size
    assert "needs recovery" in (rep.whole_reason or "")
    assert all(r.state is FsState.CLEAN for r in amap.volumes if r.volume.name != "p1")
