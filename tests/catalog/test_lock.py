"""vmaccel.catalog.lock: one writer at a time, readers alongside; waiting for the lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.lock import FileLock
from vmaccel.vocabulary.errors import RepositoryLocked

HOLDER = """
import sys, time
from pathlib import Path
from vmaccel.catalog import Repository
with Repository.open(Path(sys.argv[1]), write=True):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    Repository.init(tmp_path / "r", RepositoryConfig())
    return tmp_path / "r"


def _hold_in_subprocess(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_at_once(repo_path: Path) -> None:
    proc = _hold_in_subprocess(repo_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(RepositoryLocked, match="locked by another writer"):
            Repository.open(repo_path, write=True)
        assert time.monotonic() - t0 < 1.0
    finally:
        proc.kill()
        proc.wait()
    # a killed writer leaves no stale lock
    with Repository.open(repo_path, write=True):
        pass


def test_lock_wait_succeeds_when_the_first_writer_releases(repo_path: Path) -> None:
    proc = _hold_in_subprocess(repo_path, 1.0)
    try:
        t0 = time.monotonic()
        with Repository.open(repo_path, write=True, lock_wait=20) as repo:
            assert repo.writable
        waited = time.monotonic() - t0
        assert 0.3 < waited < 15
    finally:
        proc.kill()
        proc.wait()


def test_lock_wait_gives_up_after_the_deadline(repo_path: Path) -> None:
    first = Repository.open(repo_path, write=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(RepositoryLocked):
            Repository.open(repo_path, write=True, lock_wait=0.5)
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        first.close()


def test_lock_wait_in_a_thread(repo_path: Path) -> None:
    """flock locks are per open file description, so two opens in one process conflict too."""
    first = Repository.open(repo_path, write=True)
    threading.Timer(0.5, first.close).start()
    with Repository.open(repo_path, write=True, lock_wait=10) as second:
        assert second.writable


def test_readers_coexist_with_a_writer_and_each_other(repo_path: Path) -> None:
    proc = _hold_in_subprocess(repo_path, 30)
    try:
        with Repository.open(repo_path) as r1, Repository.open(repo_path) as r2:
            assert not r1.writable and not r2.writable
            assert r1.backups() == r2.backups() == []
            # gc's exclusive readers lock cannot be taken while readers are open
            gc_lock = r1.readers_lock()
            assert not gc_lock.try_acquire()
        assert gc_lock.try_acquire()  # every reader gone: gc may delete packs
        gc_lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_file_lock_release_is_idempotent(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "l", exclusive=True)
    with lock:
        assert not FileLock(tmp_path / "l", exclusive=False).try_acquire()
    lock.release()
    with FileLock(tmp_path / "l", exclusive=False), FileLock(tmp_path / "l", exclusive=False):
        pass
