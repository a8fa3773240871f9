"""Fixtures for fusemount: repositories written from raw disk images, and real FUSE mounts.

- `make_repo(name)`: an empty repository in tmp_path (64 KiB blocks).
- `backup_image(repo, vm, {disk: raw image path}, meta)`: one backup through the catalog
  library, reading only the images' data extents (SEEK_DATA), like a CBT full read.
- `ext4_disk` (session): a 64 MiB raw disk, GPT with one ext4 partition (sgdisk + mkfs.ext4
  -d) holding a few MiB of files; returns (image path, source tree, partition offset).
- `mount_repo(repo, **opts)`: mounts with `vmaccel mount -f` in a subprocess; yields the mount
  point; always unmounts (fusermount -u, then a lazy umount) and reaps the process.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import BackupRow

BS = 64 * 1024
MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = "import sys; from vmaccel.cli.app import run; sys.argv[0] = 'vmaccel'; run()"

fuse_available = os.path.exists("/dev/fuse") and shutil.which("fusermount") is not None
needs_fuse = pytest.mark.skipif(not fuse_available, reason="needs /dev/fuse and fusermount")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)")


def data_extents(path: Path) -> Iterator[tuple[int, int]]:
    """(offset, length) runs of a sparse file that hold data, from SEEK_DATA/SEEK_HOLE."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        fd, pos = f.fileno(), 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end - start
            pos = end


def backup_image(
    repo_path: Path,
    vm: str,
    disks: Mapping[str, Path],
    meta: dict[str, Any] | None = None,
) -> BackupRow:
    """Back up raw images as one backup of `vm` (full reads of their data extents)."""
    meta = meta or {"config": {"name": vm, "numCPU": 2}}
    with Repository.open(repo_path, write=True) as repo, repo.begin_backup(vm, meta=meta) as bw:
        for disk, path in disks.items():
            size = path.stat().st_size
            w = bw.image_writer(disk, size)
            with open(path, "rb") as f:
                for start, length in data_extents(path):
                    lo = start // BS * BS
                    hi = min(size, -(-(start + length) // BS) * BS)
                    for off in range(lo, hi, 8 * MiB):
                        w.write(off, os.pread(f.fileno(), min(8 * MiB, hi - off), off))
            bw.finish_image(disk, w, meta={"adapter_type": "lsilogic"})
        return bw.commit()


MakeRepo = Callable[..., Path]


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    def make(name: str = "repo") -> Path:
        path = tmp_path / name
        Repository.init(path, RepositoryConfig(block_size=BS))
        return path

    return make


@dataclass(frozen=True)
class Ext4Disk:
    image: Path
    tree: Path
    offset: int  # byte offset of the ext4 partition in the image


def _make_tree(root: Path, seed: int) -> None:
    rnd = random.Random(seed)
    (root / "etc" / "nginx").mkdir(parents=True)
    (root / "etc" / "nginx" / "nginx.conf").write_text("worker_processes 2;\n")
    (root / "data").mkdir()
    for i in range(6):
        (root / "data" / f"blob-{i}.bin").write_bytes(rnd.randbytes(rnd.randint(1, 700_000)))
    (root / "data" / "empty").write_bytes(b"")
    (root / "naïve name with spaces.txt").write_text("unicode\n")
    (root / "link-to-conf").symlink_to("etc/nginx/nginx.conf")


@pytest.fixture(scope="session")
def ext4_disk(tmp_path_factory: pytest.TempPathFactory) -> Ext4Disk:
    base = tmp_path_factory.mktemp("ext4disk")
    tree = base / "tree"
    tree.mkdir()
    _make_tree(tree, seed=7)
    image = base / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    offset = 1 * MiB
    subprocess.run(
        ["sgdisk", "-n", "1:2048:+40M", "-t", "1:8300", str(image)],
        check=True, capture_output=True,
    )
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", "-d", str(tree), str(image), "40M"],
        check=True, capture_output=True,
    )
    return Ext4Disk(image, tree, offset)


def mounts() -> dict[str, str]:
    with open("/proc/self/mounts") as f:
        return {line.split()[1]: line.split()[2] for line in f}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def force_unmount(mnt: Path) -> None:
    if str(mnt) in mounts():
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True, check=False)
    if str(mnt) in mounts():
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@dataclass
class Mounted:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def mount_repo(tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """Mount a repository with `vmaccel mount -f` (a subprocess); always cleaned up."""
    made: list[Mounted] = []

    def mount(repo: Path, *args: str, name: str = "mnt") -> Mounted:
        mnt = tmp_path / name
        mnt.mkdir()
        log = tmp_path / f"{name}.log"
        cmd = [sys.executable, "-c", CHILD, "mount", "--repo", str(repo), str(mnt), "-f", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=REPO_ROOT)
        m = Mounted(mnt, proc, log)
        made.append(m)
        wait_for(lambda: str(mnt) in mounts() or proc.poll() is not None, 30, "the mount")
        assert proc.poll() is None, m.output()
        return m

    try:
        yield mount
    finally:
        for m in made:
            force_unmount(m.path)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=10)
            if m.proc.poll() is None:
                m.proc.send_signal(signal.SIGKILL)
                m.proc.wait()
            force_unmount(m.path)
