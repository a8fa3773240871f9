"""Damaged and hostile layouts: a clear GuestFsError, or the volume taken whole; never a map
that frees live data."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from tests.guestfs.imaging import DiskImage, MiB, mkfs_ext4
from vmaccel.guestfs.allocation import AllocationMap, build_allocation_map
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, intersect, merge, total
from vmaccel.guestfs.lvm import parse_config
from vmaccel.guestfs.usage import FsState


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def _map(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        return build_allocation_map(f)


def test_damaged_primary_gpt_falls_back_to_backup(gpt_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    copy = disk_copy(gpt_disk)
    _flip(copy, 512 + 56)  # disk GUID: the primary header CRC no longer matches
    assert _map(copy).used == _map(gpt_disk.path).used


def test_both_gpt_headers_damaged_is_an_error(gpt_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    copy = disk_copy(gpt_disk)
    _flip(copy, 512 + 56)
    _flip(copy, gpt_disk.size - 512 + 56)
    with pytest.raises(GuestFsError, match="CRC32 mismatch"):
        _map(copy)


def test_mbr_partition_beyond_disk_is_an_error() -> None:
    mbr = bytearray(1 << 20)
    struct.pack_into("<B3xB3xII", mbr, 446, 0, 0x83, 2048, 1 << 30)
    mbr[510:512] = b"\x55\xaa"
    with pytest.raises(GuestFsError, match="beyond the end of the disk"):
        build_allocation_map(io.BytesIO(bytes(mbr)))


def test_ebr_loop_is_an_error() -> None:
    disk = bytearray(4 << 20)
    struct.pack_into("<B3xB3xII", disk, 446, 0, 0x05, 2048, 4096)
    disk[510:512] = b"\x55\xaa"
    ebr = 2048 * 512  # logical at +1, next EBR pointing back to itself
    struct.pack_into("<B3xB3xII", disk, ebr + 446, 0, 0x83, 1, 100)
    struct.pack_into("<B3xB3xII", disk, ebr + 462, 0, 0x05, 0, 100)
    disk[ebr + 510 : ebr + 512] = b"\x55\xaa"
    with pytest.raises(GuestFsError, match="EBR chain loops"):
        build_allocation_map(io.BytesIO(bytes(disk)))


def test_garbled_group_descriptor_takes_volume_whole(mbr_disk: DiskImage, disk_copy) -> None:  # type: ignore[no-untyped-def]
    copy = disk_copy(mbr_disk)
    spec = mbr_disk.filesystems[0]  # 4k blocks: descriptors in block 1
    _patch(copy, spec.offset + 4096, struct.pack("<I", 0xFFFFFFF0))
    amap = _map(copy)
    rep = next(r for r in amap.volumes if r.volume.name == "p1")
    assert rep.state is FsState.UNKNOWN and rep.used_bytes == rep.volume.size
    assert "outside the fs" in (rep.whole_reason or "")
    others = [r for r in amap.volumes if r.volume.name != "p1"]
    assert all(r.state is FsState.CLEAN for r in others)


def _covers(outer: tuple[Extent, ...], inner: tuple[Extent, ...]) -> bool:
    """Every byte of ``inner`` lies in ``outer`` (both merged, sorted)."""
    return total(intersect(outer, inner)) == total(inner)


def assert_never_less_than_truth(amap: AllocationMap, truth: AllocationMap) -> None:
    """The safety property of a damaged image: each volume is taken whole, or its used set
    contains every byte the pristine filesystem uses.

    The oracle is the whole pristine used set, not only its file data: a restore of the
    damaged image is only repairable (fsck) if the metadata the filesystem really has — inode
    tables, journal, directories — is kept too, and corruption can only make usage *unknown*,
    never make a live block free. A false alarm (more used than the truth) costs bytes; less
    loses data."""
    pristine = {r.volume.name: r for r in truth.volumes}
    for rep in amap.volumes:
        if rep.whole_reason is not None or rep.state is FsState.UNKNOWN:
            assert rep.used_bytes == rep.volume.size, rep
            extents = merge(rep.volume.disk_extents)
            assert _covers(amap.used, extents), rep
            continue
        before = pristine[rep.volume.name]
        extents = merge(before.volume.disk_extents)
        want = intersect(truth.used, extents)
        got = intersect(amap.used, extents)
        lost = total(want) - total(intersect(got, want))
        assert _covers(got, want), f"{rep.volume.name}: {lost} used bytes reported free ({rep})"


def test_random_metadata_corruption_never_frees_live_data(tmp_path: Path) -> None:
    """Flip bytes in the superblock and descriptors: only GuestFsError or a map, never a crash,
    and never a map that reports less usage than the pristine image unless the volume is
    taken whole."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100_000)
    img = tmp_path / "fs.img"
    mkfs_ext4(img, 8 * MiB, src, "-b", "1024")
    pristine = img.read_bytes()
    truth = build_allocation_map(io.BytesIO(pristine))
    assert truth.volumes and all(r.whole_reason is None for r in truth.volumes)
    rnd = random.Random(42)
    outcomes = {"error": 0, "whole": 0, "mapped": 0}
    for _ in range(150):
        data = bytearray(pristine)
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(1024, 8192)] = rnd.randrange(256)
        try:
            amap = build_allocation_map(io.BytesIO(bytes(data)))
        except GuestFsError:
            outcomes["error"] += 1
            continue
        assert amap.used and amap.used[-1].end <= len(data)
        assert_never_less_than_truth(amap, truth)
        whole = any(r.whole_reason is not None for r in amap.volumes)
        outcomes["whole" if whole else "mapped"] += 1
    # The sweep exercises both sides of the property, not only the error path.
    assert outcomes["whole"] > 0 and outcomes["mapped"] > 0, outcomes


def test_lvm_config_parser() -> None:
    text = """
    vg0 { # comment
        id = "abc" seqno = 7
        status = ["READ", "WRITE"]
        extent_size = 8192
        logical_volumes { lv { segment1 { start_extent = 0 stripes = ["pv0", 12] } } }
    }
    contents = "Text Format Volume Group"
    """
    cfg = parse_config(text)
    assert cfg["vg0"]["seqno"] == 7
    assert cfg["vg0"]["status"] == ["READ", "WRITE"]
    assert cfg["vg0"]["logical_volumes"]["lv"]["segment1"]["stripes"] == ["pv0", 12]
    with pytest.raises(GuestFsError):
        parse_config("vg0 { a = ")
