"""Building the map reads only metadata: measured on 512 MiB filesystems.

Figures are logged (run with -s -o log_cli=true to see them); asserts are on bytes read and
memory, never on wall-clock time.
"""

from __future__ import annotations

import io
import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from tests.guestfs.imaging import MiB, have, run
from vmaccel.guestfs.allocation import build_allocation_map

logger = logging.getLogger(__name__)


class CountingReader(io.RawIOBase):
    """A file wrapper counting reads and bytes read."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.reads = 0
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = self._f.readinto(buffer)
        self.reads += 1
        self.bytes += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _make(kind: str, img: Path) -> None:
    with open(img, "wb") as f:
        f.truncate(512 * MiB)
    if kind == "ext4":
        run("mkfs.ext4", "-q", "-F", img)
    elif kind == "xfs":
        run("mkfs.xfs", "-q", "-f", img)
    elif kind == "vfat":
        run("mkfs.vfat", "-F", "32", img)
    else:
        run("mkntfs", "-q", "-F", "-Q", img)


@pytest.mark.parametrize("kind", ["ext4", "xfs", "vfat", "ntfs"])
def test_map_of_512mib_filesystem_reads_only_metadata(kind: str, tmp_path: Path) -> None:
    tool = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "vfat": "mkfs.vfat", "ntfs": "mkntfs"}[kind]
    if not have(tool):
        pytest.skip(f"{tool} missing")
    img = tmp_path / "fs.img"
    _make(kind, img)
    reader = CountingReader(img)
    tracemalloc.start()
    start = time.perf_counter()
    amap = build_allocation_map(reader)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reader.close()
    logger.warning(
        "%s 512 MiB: %.1f ms, %d reads, %d KiB read, peak %d KiB, used %d MiB",
        kind,
        elapsed * 1000,
        reader.reads,
        reader.bytes // 1024,
        peak // 1024,
        amap.used_bytes // MiB,
    )
    assert amap.volumes[0].whole_reason is None
    assert reader.bytes < 512 * MiB // 100  # under 1% of the disk
    assert peak < 16 * MiB
