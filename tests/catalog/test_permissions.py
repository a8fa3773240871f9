"""Repository files are 0600 and directories 0700, whatever the umask; init never overwrites.

Each test walks the whole repository tree while a writer still has it open, so the index's
``-wal`` and ``-shm`` files are checked too, and again after gc and rebuild-index, which make
new packs and a new index.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.conftest import PASSPHRASE, build_history, small_config
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.gc import collect_garbage
from vmaccel.catalog.prune import prune
from vmaccel.catalog.rebuild import rebuild_index
from vmaccel.catalog.retention import RetentionPolicy
from vmaccel.vocabulary.errors import RepositoryExists


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of ``root`` and everything below it."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not wrong, f"not 0600/0700: {wrong}"
    return found


def test_init_and_backups_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    hist = build_history(tmp_path / "repo", small_config(encryption="repokey"), PASSPHRASE)
    with hist.open(write=True):
        found = assert_private(hist.path)
    assert {"config", "key", "index.db", "index.db-wal", "index.db-shm"} <= found.keys()
    assert {"lock", "readers.lock", "packs", "packs/tmp", "backups"} <= found.keys()
    assert sum(name.startswith("backups/") for name in found) == 5
    assert sum(bool(re.fullmatch(r"packs/[0-9a-f]{2}/[0-9a-f]{32}", n)) for n in found) > 2


def test_gc_and_rebuild_index_keep_the_repository_private(tmp_path: Path, umask: int) -> None:
    hist = build_history(tmp_path / "repo", small_config())
    with hist.open(write=True) as repo:
        assert prune(repo, RetentionPolicy(last=1)).removed
        collected = collect_garbage(repo, grace_seconds=0, repack_threshold=0.01)
    assert collected.packs_repacked and collected.packs_written
    rebuild_index(hist.path, None)
    with hist.open(write=True):
        found = assert_private(hist.path)
    assert any(name.startswith("index.db.broken-") for name in found)


def test_init_makes_an_existing_empty_directory_private(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "mnt"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    Repository.init(target, RepositoryConfig())
    assert_private(target)


@pytest.mark.parametrize("leftover", ["notes.txt", ".hidden", "packs/"])
def test_init_refuses_a_non_empty_directory_and_writes_nothing(
    tmp_path: Path, leftover: str
) -> None:
    target = tmp_path / "r"
    target.mkdir()
    if leftover.endswith("/"):
        (target / leftover).mkdir()
    else:
        (target / leftover).write_text("keep me")
    before = modes(target)
    with pytest.raises(RepositoryExists, match="not empty"):
        Repository.init(target, RepositoryConfig())
    assert modes(target) == before


def test_init_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.write_bytes(b"data")
    with pytest.raises(RepositoryExists, match="not a directory"):
        Repository.init(target, RepositoryConfig())
    assert target.read_bytes() == b"data"
