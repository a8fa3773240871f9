"""vmaccel.catalog.repository: init, open, format versions, lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.config import parse_compression
from vmaccel.vocabulary.errors import (
    BackupNotFound,
    ImageNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
)


def test_init_creates_layout(tmp_path: Path) -> None:
    path = tmp_path / "new" / "repo"
    Repository.init(path, RepositoryConfig())
    assert {p.name for p in path.iterdir()} >= {"config", "index.db", "packs", "backups"}
    assert not (path / "key").exists()
    with Repository.open(path) as repo:
        assert repo.config.block_size == 64 * 1024
        assert not repo.writable
        assert repo.backups() == []


def test_init_accepts_an_empty_existing_directory(tmp_path: Path) -> None:
    Repository.init(tmp_path, RepositoryConfig())
    assert (tmp_path / "config").is_file()


def test_init_refuses_existing_repository(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig())
    before = (tmp_path / "r" / "config").read_text()
    with pytest.raises(RepositoryExists, match="already holds"):
        Repository.init(tmp_path / "r", RepositoryConfig())
    assert (tmp_path / "r" / "config").read_text() == before


def test_init_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("keep me")
    with pytest.raises(RepositoryExists, match="not empty"):
        Repository.init(tmp_path / "r", RepositoryConfig())
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["precious.txt"]


def test_open_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound, match=str(tmp_path / "nothing")):
        Repository.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):  # also a builtin FileNotFoundError
        Repository.open(tmp_path / "empty", write=True)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unsupported_format_version_is_refused(tmp_path: Path, version: object) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig())
    cfg = tmp_path / "r" / "config"
    doc = json.loads(cfg.read_text())
    doc["format"] = version
    cfg.write_text(json.dumps(doc))
    with pytest.raises(UnsupportedFormat, match="not supported"):
        Repository.open(tmp_path / "r")


def test_damaged_config_is_a_repository_error(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig())
    (tmp_path / "r" / "config").write_text("{not json")
    with pytest.raises(RepositoryError, match="not valid JSON"):
        Repository.open(tmp_path / "r")


def test_config_round_trip_and_validation() -> None:
    cfg = RepositoryConfig(block_size=1 << 20, map_fanout=64, compression="none")
    assert RepositoryConfig.from_json(cfg.to_json()) == cfg
    for bad in (
        {"block_size": 3000},
        {"block_size": 8 << 20},
        {"map_fanout": 8},
        {"compression": "lz4"},
        {"compression_level": 0},
        {"encryption": "aes"},
        {"pack_size": 100},
    ):
        with pytest.raises(UsageError):
            RepositoryConfig(**bad)  # type: ignore[arg-type]
    assert parse_compression("zstd:7") == ("zstd", 7)
    assert parse_compression("none") == ("none", 0)
    with pytest.raises(UsageError):
        parse_compression("zstd:x")


def test_backups_images_and_lookups(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig(block_size=4096))
    with Repository.open(tmp_path / "r", write=True) as repo:
        with repo.begin_backup("vm1", meta={"k": 1}) as bw:
            w = bw.image_writer("disk0", 8192)
            w.write(0, b"a" * 8192)
            bw.finish_image("disk0", w, change_id="52 aa/1")
            row = bw.commit()
        with pytest.raises(UsageError), repo.begin_backup("vm1") as bw:
            bw.image_writer("disk0", 4096)
            bw.commit()  # an unfinished disk: refused, and the backup is aborted
    with Repository.open(tmp_path / "r") as repo:
        assert [b.id for b in repo.backups()] == [row.id]
        assert repo.backups(vm="other") == []
        assert repo.backup(row.uuid) == repo.backup(row.id) == row
        assert row.meta.to_json() == {"k": 1}
        img = repo.image(row, "disk0")
        assert img.change_id == "52 aa/1"
        with pytest.raises(ImageNotFound):
            repo.image(row, "disk9")
        with pytest.raises(BackupNotFound):
            repo.backup(9999)
        failed = repo.backups(state="failed")
        assert len(failed) == 1
        with pytest.raises(BackupNotFound):
            repo.backup(failed[0].id)  # only complete backups are visible
        assert row.uuid in repo.manifest_names()
        with pytest.raises(UsageError, match="read-only"):
            repo.begin_backup("vm1")


def _backup(repo: Repository, vm: str, uuid: str, disks: dict[str, bytes]) -> int:
    with repo.begin_backup(vm, meta={"instance_uuid": uuid}) as bw:
        for disk, data in disks.items():
            w = bw.image_writer(disk, len(data))
            w.write(0, data)
            bw.finish_image(disk, w)
        return bw.commit().id


def test_latest_images_are_the_newest_of_each_disk_of_that_vm(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig(block_size=4096))
    with Repository.open(tmp_path / "r", write=True) as repo:
        first = _backup(repo, "vm1", "u1", {"a": b"1" * 4096, "b": b"2" * 4096})
        second = _backup(repo, "vm1", "u1", {"a": b"3" * 4096})  # disk b left out
        other = _backup(repo, "vm1", "u2", {"a": b"4" * 4096})  # a new VM of the same name
        latest = repo.latest_images("vm1", "u1")
        assert {d: img.backup_id for d, img in latest.items()} == {"a": second, "b": first}
        assert {d: i.backup_id for d, i in repo.latest_images("vm1").items()} == {
            "a": other,
            "b": first,
        }
        assert repo.latest_images("vm2") == {}


def test_latest_images_of_named_disks_stop_at_the_newest_backup_holding_them(
    tmp_path: Path,
) -> None:
    Repository.init(tmp_path / "r", RepositoryConfig(block_size=4096))
    with Repository.open(tmp_path / "r", write=True) as repo:
        first = _backup(repo, "vm1", "u1", {"a": b"1" * 4096, "b": b"2" * 4096})
        second = _backup(repo, "vm1", "u1", {"a": b"3" * 4096})
        latest = repo.latest_images("vm1", "u1", disks=["a", "b"])
        assert {d: img.backup_id for d, img in latest.items()} == {"a": second, "b": first}
        assert list(repo.latest_images("vm1", disks=["a"])) == ["a"]
        assert repo.latest_images("vm1", disks=["c"]) == {}
