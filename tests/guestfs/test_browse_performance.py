"""Listing a tree of 1000 files reads little and is fast.

Figures are logged (run with -s -o log_cli=true to see them); the asserts are on bytes read,
never on wall-clock time (DESIGN: benchmarks never gate CI on absolute time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.guestfs.imaging import MiB, have, mkfs_xfs, run
from tests.guestfs.test_browse_trees import walk
from tests.guestfs.test_performance import CountingReader
from vmaccel.guestfs.browse import browse_disk
from vmaccel.guestfs.filesystem import FileSystem

logger = logging.getLogger(__name__)
DIRS, PER_DIR = 20, 50


def _tree(src: Path) -> dict[str, bytes]:
    files = {
        f"d{d:02d}/f{i:03d}.txt": f"{d} {i}\n".encode() for d in range(DIRS) for i in range(PER_DIR)
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


def _ext4(img: Path, src: Path, files: dict[str, bytes]) -> None:
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    run("mkfs.ext4", "-q", "-F", "-d", src, img)


def _xfs(img: Path, src: Path, files: dict[str, bytes]) -> None:
    mkfs_xfs(img, 320 * MiB, files, src)


@pytest.mark.parametrize(
    ("tool", "make"), [("mkfs.ext4", _ext4), ("mkfs.xfs", _xfs)], ids=["ext4", "xfs"]
)
def test_listing_1000_files(tmp_path: Path, tool: str, make: Callable[..., None]) -> None:
    if not have(tool):
        pytest.skip(f"needs {tool}")
    files = _tree(tmp_path / "src")
    img = tmp_path / "fs.img"
    make(img, tmp_path / "src", files)
    disk = CountingReader(img)
    with disk:
        started = time.perf_counter()
        (found,) = browse_disk(disk)  # type: ignore[arg-type]
        fs: FileSystem | None = found.filesystem
        assert fs is not None, found.reason
        tree = dict(walk(fs))
        listed = time.perf_counter() - started
        started = time.perf_counter()
        contents = {p: fs.open("/" + p).read() for p, st in tree.items() if st.kind == "file"}
        read = time.perf_counter() - started
    assert contents == files
    logger.info(
        "%s: listed %d entries in %.3f s (%d reads, %d KiB), read all files in %.3f s",
        found.fstype,
        len(tree),
        listed,
        disk.reads,
        disk.bytes // 1024,
        read,
    )
    assert len(tree) == DIRS * (PER_DIR + 1) + (found.fstype != "xfs")  # + lost+found
    assert disk.bytes < 16 * MiB, "listing must read metadata, not the volume"
