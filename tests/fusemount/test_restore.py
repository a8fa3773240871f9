"""Disk restore: byte-identical, sparse, atomic, verified; and `vmaccel restore disk`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from catalog import Repository
from catalog.errors import DamageError
from fusemount.errors import RestoreError
from fusemount.restore import PARTIAL_SUFFIX, restore_disk
from plugin.cli.app import main
from tests.fusemount.conftest import BS, Ext4Disk, MakeRepo, backup_image
from tests.fusemount.corrupt import corrupt_block


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
