"""The allocation map against real images made with mkfs tools.

Two independent proofs per filesystem: (1) every 512-byte piece of every file, located on
disk by its (random, hence unique) content, lies inside the map; (2) a copy with every byte
outside the map zeroed still passes the filesystem's own checker and yields identical files.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.guestfs.imaging import DiskImage, FsSpec, patch_bytes, run
from vmaccel.guestfs.allocation import AllocationMap, VolumeReport, build_allocation_map
from vmaccel.guestfs.extent import Extent, complement, intersect
from vmaccel.guestfs.usage import FsState

IMAGES = ["gpt_disk", "mbr_disk", "xfs_disk"]


def build(path: Path) -> AllocationMap:
    with open(path, "rb") as f:
        return build_allocation_map(f)


def report(amap: AllocationMap, name: str) -> VolumeReport:
    return next(r for r in amap.volumes if r.volume.name == name)


def locate_pieces(disk: Path, volume_extents: tuple[Extent, ...], content: bytes) -> list[int]:
    """Disk offsets of the file's 512-byte pieces, found by content within the volume."""
    index: dict[bytes, int] = {}
    with open(disk, "rb") as f:
        for ext in volume_extents:
            f.seek(ext.offset)
            data = f.read(ext.length)
            for off in range(0, len(data) - 511, 512):
                index.setdefault(hashlib.sha1(data[off : off + 512]).digest(), ext.offset + off)
    pieces = [content[i : i + 512] for i in range(0, len(content) - 511, 512)]
    return [index[hashlib.sha1(p).digest()] for p in pieces]


@pytest.mark.parametrize("image_name", IMAGES)
def test_every_file_piece_is_in_the_map(image_name: str, request: pytest.FixtureRequest) -> None:
    image: DiskImage = request.getfixturevalue(image_name)
    amap = build(image.path)
    for spec in image.filesystems:
        rep = report(amap, spec.name)
        assert rep.fstype == spec.fstype
        assert rep.state is FsState.CLEAN and rep.whole_reason is None, rep
        assert rep.used_bytes < rep.volume.size // 2  # the map gives space up
        extents = rep.volume.disk_extents
        for rel, content in spec.files.items():
            offsets = locate_pieces(image.path, extents, content)
            assert len(offsets) == len(content) // 512
            outside = [o for o in offsets if not _inside(amap, Extent(o, 512))]
            assert not outside, f"{spec.name}:{rel}: pieces at {outside[:5]} are not in the map"


def _inside(amap: AllocationMap, piece: Extent) -> bool:
    return sum(e.length for e in intersect(amap.used, (piece,))) == piece.length


def _zero_unused(path: Path, amap: AllocationMap) -> None:
    with open(path, "r+b") as f:
        for gap in complement(amap.used, amap.disk_size):
            f.seek(gap.offset)
            remaining = gap.length
            while remaining:
                n = min(remaining, 1 << 20)
                f.write(bytes(n))
                remaining -= n


def _extract(disk: Path, rep: VolumeReport, target: Path) -> Path:
    with open(disk, "rb") as src, open(target, "wb") as dst:
        for seg in rep.volume.segments:
            src.seek(seg.disk_offset)
            dst.write(src.read(seg.length))
    return target


def _check_and_read(fs: Path, spec: FsSpec, tmp: Path) -> dict[str, bytes]:
    """Run the filesystem's checker read-only, then read every file back without our code."""
    if spec.fstype.startswith("ext"):
        run("e2fsck", "-fn", fs)
        return {r: _debugfs_cat(fs, r) for r in spec.files}
    if spec.fstype == "vfat":
        run("fsck.vfat", "-n", fs)
        return {
            r: subprocess.run(
                ["mcopy", "-n", "-i", str(fs), f"::/{r}", "-"], capture_output=True, check=True
            ).stdout
            for r in spec.files
        }
    if spec.fstype == "ntfs":
        run("ntfsfix", "-n", fs)
        return {
            r: subprocess.run(["ntfscat", str(fs), r], capture_output=True, check=True).stdout
            for r in spec.files
        }
    run("xfs_repair", "-n", "-f", fs)
    mnt = tmp / "mnt"
    mnt.mkdir()
    # nouuid: the restored copy carries its original's UUID, and the kernel refuses a second
    # XFS mount of one UUID. A mount failure is a failed content check, never a skip.
    try:
        run("mount", "-o", "loop,ro,nouuid", fs, mnt)
    except RuntimeError as exc:
        pytest.fail(f"cannot mount the restored xfs filesystem: {exc}")
    try:
        return {r: (mnt / r).read_bytes() for r in spec.files}
    finally:
        run("umount", mnt)


def _debugfs_cat(fs: Path, rel: str) -> bytes:
    proc = subprocess.run(
        ["debugfs", "-R", f'cat "/{rel}"', str(fs)], capture_output=True, check=True
    )
    return proc.stdout


@pytest.mark.parametrize("image_name", IMAGES)
def test_zeroing_unused_space_keeps_filesystems_intact(
    image_name: str,
    request: pytest.FixtureRequest,
    disk_copy,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    image: DiskImage = request.getfixturevalue(image_name)
    copy = disk_copy(image)
    amap = build(copy)
    _zero_unused(copy, amap)
    assert build(copy).used == amap.used  # zeroing free space changes no metadata
    for spec in image.filesystems:
        fs = _extract(copy, report(amap, spec.name), tmp_path / f"{spec.fstype}.fs")
        got = _check_and_read(fs, spec, tmp_path)
        assert {r: hashlib.sha256(d).hexdigest() for r, d in got.items()} == {
            r: hashlib.sha256(d).hexdigest() for r, d in spec.files.items()
        }, spec.name
        fs.unlink()


def test_partitions_and_gaps_outside_filesystems_are_used(gpt_disk: DiskImage) -> None:
    amap = build(gpt_disk.path)
    assert amap.partition_table.scheme == "gpt"
    assert _inside(amap, Extent(0, 1 << 20))  # protective MBR, GPT, the MBR gap
    assert _inside(amap, Extent(amap.disk_size - 33 * 512, 33 * 512))  # backup GPT
    names = [r.volume.name for r in amap.volumes]
    assert names[:4] == ["p1", "p2", "p3", "p4"]
    assert report(amap, "p1").volume.fstype == "vfat"


def test_lvm_unallocated_extents_are_free(gpt_disk: DiskImage) -> None:
    amap = build(gpt_disk.path)
    pv = report(amap, "p4")
    lv = next(r for r in amap.volumes if r.volume.kind == "logical volume")
    assert len(lv.volume.segments) == 2
    # 48 MiB PV, 24 MiB of LVs: at least the 20 MiB never allocated are given up
    pv_used = sum(e.length for e in intersect(amap.used, pv.volume.disk_extents))
    assert pv_used <= 24 << 20


def test_dirty_fat_is_taken_whole(mbr_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    copy = disk_copy(mbr_disk)
    spec = mbr_disk.filesystems[1]
    patch_bytes(copy, spec.offset + 0x25, b"\x01")  # FAT16 BPB volume-dirty bit
    rep = report(build(copy), "p5")
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size


def test_unclean_xfs_log_is_taken_whole(xfs_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    from vmaccel.guestfs.volume import VolumeView
    from vmaccel.guestfs.xfs import read_super

    copy = disk_copy(xfs_disk)
    amap = build(copy)
    rep = report(amap, "p1")
    with open(copy, "rb") as f:
        sb = read_super(VolumeView(f, rep.volume))
    log = rep.volume.segments[0].disk_offset + sb.disk_block(sb.logstart) * sb.block_size
    # Turn the unmount record's op flags into an ordinary transaction's.
    patch_bytes(copy, log + 512 + 9, b"\x00")
    rep = report(build(copy), "p1")
    assert rep.state is FsState.DIRTY and rep.used_bytes == rep.volume.size
    assert "log is not clean" in (rep.whole_reason or "")
