"""The backup job tells the allocation map whether its snapshot was quiesced.

A crash-consistent snapshot of a running Windows guest holds an open NTFS $LogFile: the
volume is read whole. The same bytes from a quiesced (VSS) snapshot are flushed, so free
clusters may be skipped. Standalone sources have no snapshot and count as not quiesced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guestfs.imaging import have
from tests.guestfs.ntfsimage import Volume, mkfs_populated, restart_page, write_log
from vmaccel.plugin.engine.disk import DiskJob, allocation_of
from vmaccel.plugin.transport.file import FileSource

SIZE = 16 << 20


@pytest.fixture
def open_log_disk(tmp_path: Path) -> Path:
    """A bare NTFS volume whose $LogFile has an open client (the guest was running)."""
    if not (have("mkntfs") and have("ntfs-3g")):
        pytest.skip("mkntfs/ntfs-3g missing")
    img = tmp_path / "ntfs.img"
    mkfs_populated(img, SIZE, {"data.bin": bytes(range(256)) * 4000}, tmp_path / "mnt")
    vol = Volume(img.read_bytes())
    size = vol.data_attr(2).data_size
    write_log(vol, [restart_page(10, False, size), restart_page(9, False, size)])
    img.write_bytes(vol.data)
    return img


def test_allocation_skips_free_clusters_only_for_a_quiesced_snapshot(open_log_disk: Path) -> None:
    source = FileSource(open_log_disk)
    try:
        crash, crash_notes = allocation_of(source)
        flushed, flushed_notes = allocation_of(source, quiesced=True)
    finally:
        source.close()
    assert crash is not None and flushed is not None
    assert crash.used_bytes == SIZE
    (note,) = crash_notes
    assert note.startswith("disk: ntfs taken whole (ntfs $LogFile is not clean and the snapshot")
    assert flushed.used_bytes < SIZE // 2 and flushed_notes == []


def test_disk_jobs_default_to_not_quiesced(open_log_disk: Path) -> None:
    source = FileSource(open_log_disk)
    try:
        assert DiskJob("disk0", source, None, "full", "first backup").quiesced is False
    finally:
        source.close()
