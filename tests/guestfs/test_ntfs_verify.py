"""NTFS free-cluster skipping trusts $Bitmap only when it is intact, consistent and current.

Real volumes from mkntfs + ntfs-3g, damaged one structure at a time. Each damage either
raises `GuestFsError` naming the check (the allocation map then takes the volume whole), or,
for a volume that is not current, takes it whole as DIRTY with the reason. ntfs-3g serves as
the independent judge where it has an opinion: it refuses read-write for the same $LogFile,
hibernation and $MFTMirr states.
"""

from __future__ import annotations

import io
import logging
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.guestfs.imaging import DiskImage, have, make_tree, patch_bytes, read_bytes
from tests.guestfs.ntfsimage import (
    Volume,
    attribute_offset,
    mkfs_populated,
    mounts_rw,
    restart_page,
    split_mft,
    write_log,
)
from vmaccel.guestfs.allocation import build_allocation_map, check_filesystem, filesystem_usage
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, total
from vmaccel.guestfs.ntfs import ntfs_usage
from vmaccel.guestfs.ntfsrecord import ATTR_INDEX_ALLOCATION, attributes
from vmaccel.guestfs.usage import FsState, FsUsage
from vmaccel.guestfs.volume import Volume as Vol
from vmaccel.guestfs.volume import VolumeKind, VolumeView

SIZE = 16 << 20
HIBER_MARK = random.Random(11).randbytes(64)
BIG = random.Random(12).randbytes(300_000)  # "big.bin": 74 clusters of 4 KiB, late in the volume


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 16 MiB NTFS volume with a small tree, 40 names in the root (so the root index has
    INDX blocks) and a hiberfil.sys whose header is zeros (a system that is not hibernated)."""
    if not (have("mkntfs") and have("ntfs-3g")):
        pytest.skip("mkntfs/ntfs-3g missing")
    work = tmp_path_factory.mktemp("ntfsv")
    src = work / "src"
    files = make_tree(src, 21)
    files.update({f"root file number {i:02d}.txt": b"%d\n" % i for i in range(40)})
    files["hiberfil.sys"] = bytes(4) + HIBER_MARK + bytes(8192)
    files["big.bin"] = BIG
    mkfs_populated(work / "v.img", SIZE, files, work / "mnt")
    return (work / "v.img").read_bytes()


@pytest.fixture
def vol(pristine: bytes) -> Volume:
    return Volume(pristine)


def usage(vol: Volume, quiesced: bool = False) -> FsUsage:
    return ntfs_usage(vol.view(), quiesced=quiesced)


def log_size(vol: Volume) -> int:
    return vol.data_attr(2).data_size


def test_pristine_volume_is_clean_and_gives_space_up(vol: Volume) -> None:
    assert any(a.type == ATTR_INDEX_ALLOCATION for a in attributes(vol.record(5)))
    result = usage(vol)
    assert (result.state, result.whole_reason, result.note) == (FsState.CLEAN, None, None)
    assert total(result.used) < SIZE // 2
    assert usage(vol, quiesced=True) == result


def test_fresh_ntfs3g_log_is_empty(vol: Volume) -> None:
    """ntfs-3g empties $LogFile (all 0xFF) on unmount: that reads as clean, not as damage."""
    log = vol.data_attr(2)
    assert log.runs[0].lcn is not None
    start = log.runs[0].lcn * vol.geo.cluster_size
    assert set(vol.data[start : start + 65536]) == {0xFF}


def test_zeroed_first_bitmap_cluster_takes_the_partition_whole(
    gpt_disk: DiskImage, disk_copy: Callable[[DiskImage], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: one zeroed $Bitmap cluster made the backup skip p3's boot sector."""
    path: Path = disk_copy(gpt_disk)
    spec = next(s for s in gpt_disk.filesystems if s.fstype == "ntfs")
    vol = Volume(read_bytes(path, spec.offset, spec.size))
    bitmap_lcn = vol.data_attr(6).runs[0].lcn
    assert bitmap_lcn is not None
    patch_bytes(path, spec.offset + bitmap_lcn * vol.geo.cluster_size, bytes(vol.geo.cluster_size))
    with caplog.at_level(logging.WARNING), open(path, "rb") as f:
        amap = build_allocation_map(f)
    rep = next(r for r in amap.volumes if r.volume.name == spec.name)
    reason = "ntfs: cluster 0 of the boot sector is marked free in $Bitmap"
    assert (rep.state, rep.whole_reason) == (FsState.UNKNOWN, f"unusable metadata: {reason}")
    assert rep.used_bytes == spec.size
    disk_range = Extent(spec.offset, spec.size)
    assert any(e.offset <= disk_range.offset and disk_range.end <= e.end for e in amap.used)
    assert reason in caplog.text
    with open(gpt_disk.path, "rb") as f:
        before = build_allocation_map(f)
    others = [r for r in before.volumes if r.volume.name != spec.name]
    assert others == [r for r in amap.volumes if r.volume.name != spec.name]


# (record, attribute name, how the error names it)
SYSTEM_FILES = [
    (0, "", "$MFT"),
    (1, "", "$MFTMirr"),
    (2, "", "$LogFile"),
    (4, "", "$AttrDef"),
    (5, "$I30", "the root directory:$I30"),
    (6, "", "$Bitmap"),
    (7, "", "$Boot"),
    (9, "$SDS", "$Secure:$SDS"),
    (10, "", "$UpCase"),
]


@pytest.mark.parametrize(
    ("number", "attr", "name"), SYSTEM_FILES, ids=[n for *_, n in SYSTEM_FILES]
)
def test_system_file_cluster_marked_free_is_refused(
    vol: Volume, number: int, attr: str, name: str
) -> None:
    cluster = vol.clusters(number, attr)[-1]  # the last: every cluster is checked
    vol.set_cluster_bit(cluster, used=False)
    with pytest.raises(GuestFsError) as err:
        usage(vol)
    assert str(err.value) == f"ntfs: cluster {cluster} of {name} is marked free in $Bitmap"


def file_clusters(vol: Volume, content: bytes) -> list[int]:
    """Clusters holding `content`, found by content (not through our parser)."""
    cs = vol.geo.cluster_size
    first = bytes(vol.data).index(content[:cs]) // cs
    return list(range(first, first + -(-len(content) // cs)))


@pytest.mark.parametrize("which", [0, -1])
def test_file_cluster_marked_free_is_refused(vol: Volume, which: int) -> None:
    """$Bitmap has no checksum: only the MFT walk sees a cleared bit under a file's data."""
    cluster = file_clusters(vol, BIG)[which]
    vol.set_cluster_bit(cluster, used=False)
    with pytest.raises(GuestFsError, match=rf"^ntfs: cluster {cluster} of MFT record \d+ is "):
        usage(vol)


def test_torn_file_record_is_refused(vol: Volume) -> None:
    """A record in use whose runs cannot be read might map anything: refuse."""
    rs = vol.geo.record_size
    mft = bytes(vol.data)
    name = "big.bin".encode("utf-16-le")
    number = next(
        n
        for n in range(16, vol.data_attr(0).data_size // rs)
        if name in mft[vol.record_offset(n) : vol.record_offset(n) + rs]
    )
    vol.data[vol.record_offset(number) + 510] ^= 0xFF
    with pytest.raises(GuestFsError) as err:
        usage(vol)
    assert str(err.value) == f"ntfs: MFT record {number} is torn (fixup 1 mismatch)"


def test_fragmented_mft_is_followed_through_its_attribute_list(vol: Volume, tmp_path: Path) -> None:
    """$MFT's later runs in an extension record: every record is still found and checked."""
    before = usage(vol)
    split_mft(vol, 4)  # 16 records in record 0's extent, the rest through record 15
    assert usage(vol) == before
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert mounts_rw(img, tmp_path / "mnt") is None  # ntfs-3g reads the same layout
    vol.set_cluster_bit(file_clusters(vol, BIG)[3], used=False)
    with pytest.raises(GuestFsError, match="of MFT record"):
        usage(vol)


def test_attribute_list_with_a_gap_is_refused(vol: Volume) -> None:
    split_mft(vol, 4, gap=1)
    with pytest.raises(GuestFsError, match=r"\$MFT's run list has a gap at VCN 4"):
        usage(vol)


def test_check_filesystem_raises_where_filesystem_usage_takes_whole(
    vol: Volume, caplog: pytest.LogCaptureFixture
) -> None:
    vol.set_cluster_bit(vol.clusters(2)[0], used=False)
    view = VolumeView(
        io.BytesIO(bytes(vol.data)),
        Vol("p9", VolumeKind.PARTITION, SIZE, vol.view().volume.segments, "ntfs"),
    )
    with pytest.raises(GuestFsError, match=r"of \$LogFile is marked free"):
        check_filesystem(view)
    with caplog.at_level(logging.WARNING):
        result = filesystem_usage(view)
    assert result.state is FsState.UNKNOWN and result.used == (Extent(0, SIZE),)
    assert result.whole_reason is not None and "$LogFile is marked free" in result.whole_reason
    assert "p9: ntfs taken whole: unusable metadata" in caplog.text


def test_mftmirr_mismatch_is_refused(vol: Volume, tmp_path: Path) -> None:
    rs, cs = vol.geo.record_size, vol.geo.cluster_size
    rec = vol.record(3)
    at = struct.unpack_from("<H", rec, 0x14)[0] + 0x20  # a timestamp of $STANDARD_INFORMATION
    vol.data[vol.geo.mirror_lcn * cs + 3 * rs + at] ^= 0x01
    with pytest.raises(GuestFsError) as err:
        usage(vol)
    assert str(err.value) == "ntfs: $MFTMirr does not match $MFT (record 3, $Volume)"
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert "$MFTMirr does not match $MFT" in (mounts_rw(img, tmp_path / "mnt") or "")


def test_torn_system_record_is_refused(vol: Volume) -> None:
    end = vol.record_offset(6) + 2 * 512 - 2  # the sequence number closing stride 2
    vol.data[end] ^= 0xFF
    with pytest.raises(GuestFsError) as err:
        usage(vol)
    assert str(err.value) == "ntfs: MFT record 6 ($Bitmap) is torn (fixup 2 mismatch)"


def test_backup_boot_sector_mismatch_is_refused(vol: Volume) -> None:
    backup = vol.geo.total_sectors * vol.geo.sector_size
    struct.pack_into("<Q", vol.data, backup + 0x30, vol.geo.mft_lcn + 1)
    with pytest.raises(GuestFsError) as err:
        usage(vol)
    assert str(err.value) == (
        f"ntfs: the backup boot sector does not match the boot sector (at byte {backup}: "
        "$MFT cluster differ)"
    )


@pytest.mark.parametrize("field", [0x30, 0x38])
def test_bitmap_shorter_than_the_cluster_count_is_refused(vol: Volume, field: int) -> None:
    """Bits past $Bitmap's data (0x30) or initialized (0x38) size would read as free."""
    need = (vol.geo.cluster_count + 7) // 8
    at = attribute_offset(vol.record(6), 0x80) + field
    vol.patch_record(6, at, struct.pack("<q", need - 1))
    with pytest.raises(GuestFsError, match=rf"ntfs: \$Bitmap holds .* fewer than {need} for"):
        usage(vol)


def test_dirty_flag_takes_whole_even_when_quiesced(vol: Volume) -> None:
    rec = vol.record(3)
    attr = attribute_offset(rec, 0x70)
    flags_at = attr + struct.unpack_from("<H", rec, attr + 0x14)[0] + 10
    vol.patch_record(3, flags_at, b"\x01\x00")
    for quiesced in (False, True):
        result = usage(vol, quiesced)
        assert result.state is FsState.DIRTY and result.used == (Extent(0, SIZE),)
        assert result.whole_reason is not None
        assert result.whole_reason.startswith("ntfs volume is marked dirty ($Volume flags)")


NOT_CLEAN = "ntfs $LogFile is not clean and the snapshot was not quiesced: "


def test_open_log_is_dirty_unless_quiesced(vol: Volume, tmp_path: Path) -> None:
    size = log_size(vol)
    write_log(vol, [restart_page(10, False, size), restart_page(9, False, size)])
    result = usage(vol)
    assert result.state is FsState.DIRTY and result.used == (Extent(0, SIZE),)
    assert result.whole_reason is not None and result.whole_reason.startswith(NOT_CLEAN)
    assert "restart area at 0 is open, version 1.1 (LSN 10" in result.whole_reason
    quiesced = usage(vol, quiesced=True)
    assert quiesced.state is FsState.CLEAN and quiesced.whole_reason is None
    assert quiesced.note is not None and quiesced.note.endswith(
        "trusted because the snapshot was quiesced"
    )
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert "unclean file system" in (mounts_rw(img, tmp_path / "mnt") or "")


def test_closed_log_is_clean_as_ntfs3g_agrees(vol: Volume, tmp_path: Path) -> None:
    size = log_size(vol)
    write_log(vol, [restart_page(10, True, size), restart_page(9, True, size)])
    result = usage(vol)
    assert (result.state, result.whole_reason, result.note) == (FsState.CLEAN, None, None)
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert mounts_rw(img, tmp_path / "mnt") is None


def test_version_2_log_is_dirty_as_ntfs3g_agrees(vol: Volume, tmp_path: Path) -> None:
    """Windows 8+ writes a 2.0 restart page while it may cache metadata (Fast Startup)."""
    size = log_size(vol)
    write_log(
        vol, [restart_page(10, True, size, version=2), restart_page(9, True, size, version=2)]
    )
    result = usage(vol)
    assert result.state is FsState.DIRTY and result.whole_reason is not None
    assert result.whole_reason.startswith("ntfs $LogFile is version 2.0 and the snapshot")
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert "Metadata kept in Windows cache" in (mounts_rw(img, tmp_path / "mnt") or "")


@pytest.mark.parametrize(("newer_clean", "state"), [(True, FsState.CLEAN), (False, FsState.DIRTY)])
def test_the_restart_page_with_the_higher_lsn_decides(
    vol: Volume, newer_clean: bool, state: FsState
) -> None:
    size = log_size(vol)
    write_log(vol, [restart_page(5, not newer_clean, size), restart_page(9, newer_clean, size)])
    assert usage(vol).state is state


def test_a_torn_restart_page_is_passed_over(vol: Volume) -> None:
    size = log_size(vol)
    newer_open = bytearray(restart_page(9, False, size))
    newer_open[1022] ^= 0xFF
    write_log(vol, [restart_page(5, True, size), bytes(newer_open)])
    assert usage(vol).state is FsState.CLEAN


def test_log_without_a_valid_restart_page_is_refused(vol: Volume) -> None:
    size = log_size(vol)
    torn = bytearray(restart_page(9, True, size))
    torn[510] ^= 0xFF
    write_log(vol, [bytes(torn), bytes(torn)])
    with pytest.raises(GuestFsError, match=r"ntfs: \$LogFile has no valid restart page .*torn"):
        usage(vol)


def hibernate(vol: Volume, header: bytes) -> None:
    at = bytes(vol.data).index(HIBER_MARK) - 4
    vol.data[at : at + 4] = header


@pytest.mark.parametrize("header", [b"hibr", b"HIBR", b"wake", b"WAKE"])
def test_hibernated_volume_is_dirty_unless_quiesced(vol: Volume, header: bytes) -> None:
    hibernate(vol, header)
    result = usage(vol)
    assert result.state is FsState.DIRTY and result.used == (Extent(0, SIZE),)
    assert result.whole_reason == (
        f"ntfs volume is hibernated (hiberfil.sys header {header.decode()!r}, e.g. Windows "
        "Fast Startup) and the snapshot was not quiesced: $Bitmap may lag the memory image"
    )
    assert usage(vol, quiesced=True).state is FsState.CLEAN


def test_ntfs3g_also_calls_hibr_hibernated(vol: Volume, tmp_path: Path) -> None:
    hibernate(vol, b"hibr")
    img = tmp_path / "v.img"
    img.write_bytes(vol.data)
    assert "Windows is hibernated" in (mounts_rw(img, tmp_path / "mnt") or "")


def test_build_allocation_map_passes_quiesced_to_ntfs(vol: Volume) -> None:
    size = log_size(vol)
    write_log(vol, [restart_page(10, False, size), restart_page(9, False, size)])
    (crash,) = build_allocation_map(io.BytesIO(bytes(vol.data))).volumes
    (flushed,) = build_allocation_map(io.BytesIO(bytes(vol.data)), quiesced=True).volumes
    assert crash.state is FsState.DIRTY and crash.used_bytes == SIZE
    assert crash.whole_reason is not None and crash.whole_reason.startswith(NOT_CLEAN)
    assert flushed.state is FsState.CLEAN and flushed.used_bytes < SIZE // 2
    assert flushed.note is not None and "quiesced" in flushed.note
