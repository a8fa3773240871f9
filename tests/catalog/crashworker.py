"""A repository writer that runs until it is killed, for the crash tests (test_crash.py).

    python -m tests.catalog.crashworker REPO JOURNAL SEED [--die-at HOOK:N]

In a loop, deterministically from SEED and from what the repository holds, it takes full and
incremental backups of two small VMs (random changed runs, copied runs for dedup, zeroed runs
as holes, now and then an aborted backup), prunes and collects garbage (grace 0). It appends
to JOURNAL (one JSON object per line, fsynced) only *after* the library call returned:

    {"ev": "commit", "uuid": ..., "vm": ..., "sha256": ...}   a backup is complete
    {"ev": "prune-begin"} / {"ev": "prune-end", "removed": [uuid, ...]}
    {"ev": "die", "hook": ...}                                 about to kill itself
    {"ev": "start", "seed": ...}                               a new worker begins

``--die-at HOOK:N`` makes it SIGKILL itself at the N-th pass through HOOK (see ``HOOKS``), so
that kills land inside pack sealing, the commit transaction and gc's sweep for certain;
without it the test kills it at random times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmaccel.catalog import Repository
from vmaccel.catalog.gc import collect_garbage
from vmaccel.catalog.index import ImageRow, Index
from vmaccel.catalog.localstore import _LocalUpload
from vmaccel.catalog.packstore import PackStore
from vmaccel.catalog.prune import prune
from vmaccel.catalog.retention import RetentionPolicy

BLOCK = 4096
DISK_SIZE = 2 * 1024 * 1024
VMS = ("vm1", "vm2")
DISK = "disk0"

# hook name -> (owner, method, die before the call (else after it returns))
HOOKS: dict[str, tuple[Any, str, bool]] = {
    "seal-before-rename": (_LocalUpload, "commit", True),  # sealed bytes only in packs/tmp
    "seal-before-rows": (_LocalUpload, "commit", False),  # pack in place, rows uncommitted
    "commit-txn": (Index, "finish_backup", False),  # inside the completing transaction
    "commit-before-manifest": (Repository, "write_manifest", True),  # complete, uncommitted
    "commit-manifest": (Repository, "write_manifest", False),  # manifest durable, no COMMIT
    "remove-manifest": (Repository, "delete_manifest", False),  # prune/gc mid-removal
    "remove-rows": (Index, "delete_backup", False),  # inside the row-deleting transaction
    "gc-mark-deleting": (Index, "set_pack_state", False),  # inside a sweep transaction
    "gc-move-chunks": (Index, "move_chunks", False),  # inside a repack transaction
    "gc-delete-file": (PackStore, "delete", True),  # pack row gone, file not yet
}


class Journal:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **event: Any) -> None:
        os.write(self._fd, (json.dumps(event, sort_keys=True) + "\n").encode())
        os.fsync(self._fd)


def install_hook(spec: str, journal: Journal) -> None:
    """Make the process SIGKILL itself at the N-th pass through hook ``name:N``."""
    name, _, count = spec.partition(":")
    owner, method, before = HOOKS[name]
    original: Callable[..., Any] = getattr(owner, method)
    passes = [int(count)]

    def die() -> None:
        journal.write(ev="die", hook=name)
        os.kill(os.getpid(), signal.SIGKILL)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        passes[0] -= 1
        if passes[0] == 0 and before:
            die()
        result = original(*args, **kwargs)
        if passes[0] == 0:
            die()
        return result

    setattr(owner, method, wrapper)


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class VmState:
    data: bytearray
    parent: ImageRow | None


def load_state(repo: Repository, vm: str) -> VmState:
    """The disk as its latest complete backup holds it (zeros if there is none)."""
    backups = repo.backups(vm=vm)
    if not backups:
        return VmState(bytearray(DISK_SIZE), None)
    img = repo.image(backups[-1], DISK)
    reader = repo.open_image(img, workers=2)
    try:
        data = bytearray(reader.read())
    finally:
        reader.close()
    return VmState(data, img)


def mutate(rng: random.Random, data: bytearray) -> list[tuple[int, int]]:
    """Change a few runs of blocks in place; returns the changed (first block, count)."""
    blocks = len(data) // BLOCK
    changed = []
    for _ in range(rng.randint(1, 10)):
        count = rng.randint(1, 24)
        first = rng.randrange(blocks - count)
        lo, hi = first * BLOCK, (first + count) * BLOCK
        kind = rng.random()
        if kind < 0.5:
            data[lo:hi] = rng.randbytes(hi - lo)
        elif kind < 0.7:
            data[lo:hi] = bytes(hi - lo)  # becomes holes
        elif kind < 0.9:
            src = rng.randrange(blocks - count) * BLOCK  # duplicate data: deduplicated
            data[lo:hi] = data[src : src + hi - lo]
        else:
            pattern = b"compressible %d " % rng.randrange(9)
            data[lo:hi] = (pattern * ((hi - lo) // len(pattern) + 1))[: hi - lo]
        changed.append((first, count))
    assert len(data) == blocks * BLOCK
    return changed


class _Abort(Exception):
    """Raised inside a backup to abort it (the backup becomes 'failed')."""


def backup(repo: Repository, vm: str, state: VmState, rng: random.Random, j: Journal) -> None:
    data = bytearray(state.data)
    changed = mutate(rng, data)
    full = state.parent is None or rng.random() < 0.2
    parent = None if full else state.parent
    try:
        with repo.begin_backup(vm, meta={"full": full}) as bw:
            w = bw.image_writer(DISK, len(data), parent=parent)
            if full:
                w.write(0, bytes(data))
            else:
                for first, count in changed:
                    piece = bytes(data[first * BLOCK : (first + count) * BLOCK])
                    if piece.count(0) == len(piece):
                        w.punch(first * BLOCK, len(piece))
                    else:
                        w.write(first * BLOCK, piece)
            bw.finish_image(DISK, w, parent, change_id=f"52 {vm}/{rng.random()}")
            if rng.random() < 0.08:
                raise _Abort
            row = bw.commit()
    except _Abort:
        return
    j.write(ev="commit", uuid=row.uuid, vm=vm, sha256=sha256(data))
    state.data, state.parent = data, repo.image(row, DISK)


def run(path: Path, journal: Path, seed: int, die_at: str | None) -> None:
    j = Journal(journal)
    if die_at:
        install_hook(die_at, j)
    rng = random.Random(seed)
    j.write(ev="start", seed=seed)
    with Repository.open(path, write=True, lock_wait=30) as repo:
        states = {vm: load_state(repo, vm) for vm in VMS}
        while True:
            action = rng.choices(["backup", "prune", "gc"], weights=[5, 1, 1.5])[0]
            if action == "backup":
                vm = rng.choice(VMS)
                backup(repo, vm, states[vm], rng, j)
            elif action == "prune":
                j.write(ev="prune-begin")
                report = prune(repo, RetentionPolicy(last=rng.randint(2, 4)))
                j.write(ev="prune-end", removed=[b.uuid for b in report.removed])
            else:
                collect_garbage(repo, grace_seconds=0, repack_threshold=rng.choice([0.2, 0.5]))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repo", type=Path)
    p.add_argument("journal", type=Path)
    p.add_argument("seed", type=int)
    p.add_argument("--die-at")
    a = p.parse_args(argv)
    run(a.repo, a.journal, a.seed, a.die_at)


if __name__ == "__main__":
    main(sys.argv[1:])
