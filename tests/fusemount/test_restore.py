"""Disk restore: byte-identical, sparse, atomic, verified; and `vmaccel restore disk`."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

import vmaccel.fusemount.restore as restore_mod
from tests.fusemount.conftest import BS, Ext4Disk, MakeRepo, backup_image, needs_root
from tests.fusemount.corrupt import corrupt_block
from vmaccel.catalog import Repository
from vmaccel.cli.app import main
from vmaccel.fusemount.restore import PARTIAL_SUFFIX, restore_disk
from vmaccel.vocabulary.errors import DamageError, RestoreError


@pytest.fixture
def repo_with_disk(make_repo: MakeRepo, ext4_disk: Ext4Disk) -> Path:
    repo = make_repo()
    backup_image(repo, "web", {"disk0": ext4_disk.image})
    return repo


def test_restore_is_identical_and_sparse(repo_with_disk: Path, ext4_disk: Ext4Disk,
                                         tmp_path: Path) -> None:
    target = tmp_path / "out.raw"
    seen: list[int] = []
    with Repository.open(repo_with_disk) as r:
        img = r.image(r.backups()[-1], "disk0")
        with r.open_image(img) as reader:
            report = restore_disk(reader, target, "web disk0", progress=seen.append)
    assert target.read_bytes() == ext4_disk.image.read_bytes()
    st = target.stat()
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < st.st_size // 4  # mostly holes
    assert st.st_mode & 0o777 == 0o600
    assert report.size == st.st_size and report.data_bytes + report.hole_bytes == report.size
    assert report.data_bytes <= st.st_blocks * 512 + BS and seen[-1] == report.size
    assert seen == sorted(seen)
    assert not (tmp_path / ("out.raw" + PARTIAL_SUFFIX)).exists()


def test_restore_refuses_to_replace_without_force(repo_with_disk: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.raw"
    target.write_bytes(b"precious")
    with Repository.open(repo_with_disk) as r, r.open_image(
        r.image(r.backups()[-1], "disk0")
    ) as reader:
        with pytest.raises(RestoreError, match="--force"):
            restore_disk(reader, target, "x")
        assert target.read_bytes() == b"precious"
        restore_disk(reader, target, "x", overwrite=True)
    assert target.stat().st_size == 64 << 20
    os.mkfifo(tmp_path / "fifo")
    with Repository.open(repo_with_disk) as r, r.open_image(
        r.image(r.backups()[-1], "disk0")
    ) as reader, pytest.raises(RestoreError, match="not a regular file"):
        restore_disk(reader, tmp_path / "fifo", "x", overwrite=True)


def test_damage_stops_the_restore_and_leaves_nothing(repo_with_disk: Path,
                                                     tmp_path: Path) -> None:
    with Repository.open(repo_with_disk) as r:
        img = r.image(r.backups()[-1], "disk0")
        damaged = corrupt_block(r, img, first_data=True)
        target = tmp_path / "out.raw"
        with r.open_image(img) as reader, pytest.raises(DamageError) as e:
            restore_disk(reader, target, "x")
    assert damaged.chunk_hex[:16] in str(e.value)
    assert not target.exists() and not (tmp_path / ("out.raw" + PARTIAL_SUFFIX)).exists()


def test_cli_restore_disk(repo_with_disk: Path, ext4_disk: Ext4Disk, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cli.raw"
    rc = main(["restore", "disk", "--repo", str(repo_with_disk), "web@latest", "disk0",
               "--to", str(target), "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(out)
    assert report["size"] == 64 << 20 and report["target"] == str(target)
    assert target.read_bytes() == ext4_disk.image.read_bytes()
    rc = main(["restore", "disk", "--repo", str(repo_with_disk), "web@latest", "nodisk",
               "--to", str(tmp_path / "x")])
    assert rc == 7 and "no disk 'nodisk'" in capsys.readouterr().err
    rc = main(["restore", "disk", "--repo", str(repo_with_disk), "web@latest", "disk0",
               "--to", str(target)])
    assert rc == 9 and "--force" in capsys.readouterr().err


@pytest.fixture
def odd_image(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, Path]:
    """A repository holding a 3 MiB + 1234 byte image (not a multiple of 4096: its last
    piece cannot be written with O_DIRECT): random data, a hole, data up to the odd end."""
    rnd = random.Random(5)
    image = tmp_path / "odd.raw"
    data = bytearray(3 * (1 << 20) + 1234)
    data[: 1 << 20] = rnd.randbytes(1 << 20)
    data[2 << 20 :] = rnd.randbytes(len(data) - (2 << 20))
    image.write_bytes(bytes(data))
    repo = make_repo()
    backup_image(repo, "odd", {"disk0": image})
    return repo, image


def _restore(repo: Path, target: Path) -> None:
    with Repository.open(repo) as r, r.open_image(r.image(r.backups()[-1], "disk0")) as reader:
        restore_disk(reader, target, "odd disk0", overwrite=True)


def test_restore_odd_size_many_pieces(odd_image: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pieces reuse the writer's few buffers many times; the unaligned tail is written
    through the page cache, the rest with O_DIRECT."""
    repo, image = odd_image
    monkeypatch.setattr(restore_mod, "IO_BYTES", 128 * 1024)
    target = tmp_path / "out.raw"
    _restore(repo, target)
    assert target.read_bytes() == image.read_bytes()


def test_restore_without_direct_io(odd_image: tuple[Path, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses O_DIRECT at open, or accepts it and refuses the writes
    (EINVAL), gets the same bytes through the page cache."""
    repo, image = odd_image
    monkeypatch.setattr(restore_mod, "_open_direct", lambda path: None)
    _restore(repo, tmp_path / "a.raw")
    assert (tmp_path / "a.raw").read_bytes() == image.read_bytes()
    monkeypatch.undo()

    direct: list[int] = []
    real_pwrite = os.pwrite

    def record(path: Path) -> int:  # a second descriptor (O_DIRECT or not: refused anyway)
        direct.append(os.open(path, os.O_WRONLY))
        return direct[-1]

    def refuse(fd: int, data: memoryview, offset: int) -> int:
        if fd in direct:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(restore_mod, "_open_direct", record)
    monkeypatch.setattr(os, "pwrite", refuse)
    _restore(repo, tmp_path / "b.raw")
    assert direct and (tmp_path / "b.raw").read_bytes() == image.read_bytes()


def test_write_error_stops_the_restore_and_leaves_nothing(
    repo_with_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    target = tmp_path / "out.raw"
    with Repository.open(repo_with_disk) as r, r.open_image(
        r.image(r.backups()[-1], "disk0")
    ) as reader, pytest.raises(OSError) as e:
        restore_disk(reader, target, "x")
    assert e.value.errno == errno.ENOSPC
    assert not target.exists() and not (tmp_path / ("out.raw" + PARTIAL_SUFFIX)).exists()


@needs_root
def test_restore_to_block_device(repo_with_disk: Path, ext4_disk: Ext4Disk,
                                 tmp_path: Path) -> None:
    """A device holding old data (0xff everywhere, 1 MiB larger than the image): data written
    with O_DIRECT, holes zeroed, the bytes past the image untouched."""
    backing = tmp_path / "dev.img"
    size = ext4_disk.image.stat().st_size
    backing.write_bytes(b"\xff" * (size + (1 << 20)))
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        with Repository.open(repo_with_disk) as r, r.open_image(
            r.image(r.backups()[-1], "disk0")
        ) as reader:
            report = restore_disk(reader, Path(dev), "web disk0")
        assert report.device
        with open(dev, "rb") as f:
            assert f.read(size) == ext4_disk.image.read_bytes()
            assert f.read() == b"\xff" * (1 << 20)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
