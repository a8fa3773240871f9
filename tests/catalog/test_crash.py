"""Crash safety: SIGKILL a writer (backups, prune, gc) at many points, then check everything.

After every kill: ``verify(full=True)`` passes, every backup the journal recorded as complete
reads back byte-identical unless a prune recorded (or an interrupted prune may have) removed
it, and a new backup over the latest image succeeds and reads back. Half of the runs kill the
worker at a random time, the other half let it kill itself at a chosen hook (pack sealing, the
commit transaction, prune's removal, gc's sweep) so those windows are certainly hit.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.catalog.crashworker import BLOCK, DISK, HOOKS
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.gc import collect_garbage
from vmaccel.catalog.verify import verify

ROOT = Path(__file__).resolve().parents[2]
RUNS = 24


@dataclass
class Journal:
    committed: dict[str, str] = field(default_factory=dict)  # uuid -> sha256
    removed: set[str] = field(default_factory=set)
    maybe_removed: set[str] = field(default_factory=set)  # an interrupted prune's candidates
    hooks: list[str] = field(default_factory=list)


def read_journal(path: Path) -> Journal:
    """Parse the journal; a prune that began but never ended (its worker was killed) may
    have removed any backup committed before it."""
    j = Journal()
    candidates: set[str] | None = None  # set while a prune is open
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev["ev"] == "commit":
            j.committed[ev["uuid"]] = ev["sha256"]
        elif ev["ev"] == "prune-begin":
            candidates = set(j.committed) - j.removed
        elif ev["ev"] == "prune-end":
            candidates = None
            j.removed |= set(ev["removed"])
        elif ev["ev"] == "die":
            j.hooks.append(ev["hook"])
        elif ev["ev"] == "start" and candidates is not None:
            j.maybe_removed |= candidates
            candidates = None
    if candidates is not None:
        j.maybe_removed |= candidates
    return j


def image_bytes(repo: Repository, uuid: str) -> bytes:
    reader = repo.open_image(repo.image(repo.backup(uuid), DISK), workers=2)
    try:
        return reader.read()
    finally:
        reader.close()


def check_repository(path: Path, journal: Journal) -> None:
    with Repository.open(path) as repo:
        report = verify(repo, full=True)
        assert report.ok, "\n".join(report.summary())
        present = {b.uuid for b in repo.backups()}
        for uuid, digest in journal.committed.items():
            if uuid in journal.removed:
                assert uuid not in present, f"pruned backup {uuid} came back"
            elif uuid in present:
                assert hashlib.sha256(image_bytes(repo, uuid)).hexdigest() == digest, uuid
            else:
                assert uuid in journal.maybe_removed, f"complete backup {uuid} was lost"


def probe_backup(path: Path, rng: random.Random) -> None:
    """A new incremental backup over the latest image of vm1 succeeds and reads back."""
    with Repository.open(path, write=True) as repo:
        latest = repo.backups(vm="vm1")
        parent = repo.image(latest[-1], DISK) if latest else None
        base = bytearray(image_bytes(repo, latest[-1].uuid)) if latest else None
        size = parent.size if parent else 64 * BLOCK
        expected = base if base is not None else bytearray(size)
        with repo.begin_backup("probe") as bw:
            w = bw.image_writer(DISK, size, parent=parent)
            for _ in range(3):
                first = rng.randrange(size // BLOCK - 4)
                piece = rng.randbytes(4 * BLOCK)
                w.write(first * BLOCK, piece)
                expected[first * BLOCK : (first + 4) * BLOCK] = piece
            bw.finish_image(DISK, w, parent)
            row = bw.commit()
        assert image_bytes(repo, row.uuid) == bytes(expected)


def run_worker(repo: Path, journal: Path, seed: int, die_at: str | None, timer: float,
               log: Path) -> None:  # fmt: skip
    cmd = [sys.executable, "-m", "tests.catalog.crashworker", str(repo), str(journal), str(seed)]
    if die_at:
        cmd += ["--die-at", die_at]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=timer)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()


@pytest.mark.slow
def test_sigkill_anywhere_loses_nothing(tmp_path: Path) -> None:
    repo, journal = tmp_path / "repo", tmp_path / "journal"
    Repository.init(repo, RepositoryConfig(block_size=BLOCK, map_fanout=16, pack_size=32768))
    journal.touch()
    rng = random.Random(7)
    hooks = sorted(HOOKS)
    started = time.monotonic()
    for run in range(RUNS):
        die_at = None
        if run % 2:
            die_at = f"{hooks[(run // 2) % len(hooks)]}:{rng.randint(1, 3)}"
        timer = 8.0 if die_at else rng.uniform(0.5, 2.5)
        run_worker(repo, journal, 1000 + run, die_at, timer, tmp_path / f"worker{run}.log")
        j = read_journal(journal)
        check_repository(repo, j)
        probe_backup(repo, rng)
    j = read_journal(journal)
    fired = set(j.hooks)
    assert {"seal-before-rename", "seal-before-rows", "commit-txn"} <= fired, fired
    assert fired & {"gc-mark-deleting", "gc-move-chunks", "gc-delete-file"}, fired
    assert len(j.committed) > RUNS, "the worker made too little progress to mean anything"
    # a final gc cleans up whatever the crashes left; everything still reads back
    with Repository.open(repo, write=True) as r:
        collect_garbage(r, grace_seconds=0)
        assert r.backups(state=None) == r.backups()  # only complete backups are left
        assert r.index.packs(state="deleting") == []
        assert r.packs.temporary_names() == []
    check_repository(repo, j)
    assert time.monotonic() - started < 110
