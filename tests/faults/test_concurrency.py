"""Concurrency: two writers, a writer and readers, racing on one repository.

Real `vmaccel` processes race (tests/faults/contention.py): two backups of one name, a backup
and gc beside each other (either started first), `restore file` while gc repacks and
deletes, and a real FUSE mount reading a backup's raw image while prune removes that backup
and `gc --grace 0` runs. After
every race: `verify --full` is clean and every committed backup restores byte-identical;
readers get the right bytes or EIO, never other bytes. Each race counts as one
``concurrency`` event (tests/faults/tally.py); the long run repeats every race more times.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.contention import (
    LOCKED_EXIT,
    Ledger,
    MiB,
    one_error_line,
    random_image,
    slow_source,
    start,
    vmaccel,
    wait_locked,
)
from tests.faults.tally import Tally, record, scale
from tests.fusemount.conftest import (
    Ext4Disk,
    Mounted,
    ext4_disk,
    force_unmount,
    mount_repo,
    needs_fuse,
)
from vmaccel.catalog.lease import vm_lock
from vmaccel.catalog.lock import FileLock
from vmaccel.vocabulary.backupref import dir_time

__all__ = ["ext4_disk", "mount_repo"]  # fixtures, imported for pytest to find

SUITE = "test_concurrency"


@pytest.fixture
def tally() -> Iterator[Tally]:
    t = Tally(SUITE, "concurrency")
    yield t
    record(t)
    assert (t.damaged, t.lost, t.wrong_bytes) == (0, 0, 0), t


def final_check(ledger: Ledger, tally: Tally) -> None:
    """At the end of a test: every backup still remembered restores byte-identical."""
    lost, wrong = ledger.restores(every=True)
    tally.lost += int(bool(lost))
    tally.wrong_bytes += int(bool(wrong))


def new_ledger(tmp_path: Path, name: str = "repo") -> Ledger:
    repo = tmp_path / name
    done = vmaccel("repo", "init", "--repo", repo)
    assert done.returncode == 0, done.stderr
    scratch = tmp_path / f"{name}-scratch"
    scratch.mkdir()
    return Ledger(repo, scratch)


def settle(ledger: Ledger, tally: Tally, note: str, wrong_reads: bool = False) -> None:
    """Count one race: verify clean, nothing lost, nothing wrong (``wrong_reads``: what the
    racing reader got was already wrong)."""
    clean = ledger.verify_clean()
    lost, wrong = ledger.restores()
    wrong += int(wrong_reads)
    tally.add(damaged=not clean, lost=bool(lost), wrong=bool(wrong))
    if not clean or lost or wrong:
        tally.notes.append(f"{note}: clean={clean} lost={lost} wrong={wrong}")


def assert_refused(done: subprocess.CompletedProcess[str], what: str) -> None:
    """A writer that found the repository locked: exit 4 and one line saying so."""
    assert done.returncode == LOCKED_EXIT, f"{what}: {done.stderr}"
    line = one_error_line(done.stderr)
    assert "locked by another writer" in line and "--lock-wait" in line, line


# -- --lock-wait: what it does ------------------------------------------------------------------


def test_lock_wait_waits_then_proceeds_or_refuses_when_it_runs_out(tmp_path: Path) -> None:
    """``writers.lock`` held exclusively (as rebuild-index holds it: no backup may write):
    ``--lock-wait 0`` refuses at once (exit 4, one line), ``--lock-wait S`` polls until the
    holder lets go (then runs) or S seconds pass (then refuses, after about S seconds)."""
    ledger = new_ledger(tmp_path)
    image = random_image(tmp_path / "a.raw", 2 * MiB, seed=1)
    args = ("backup", "--repo", ledger.repo, "--source", f"file:{image}", "--name", "a")
    with FileLock(ledger.repo / "writers.lock", exclusive=True):
        assert_refused(vmaccel(*args), "no wait")
        t0 = time.monotonic()
        assert_refused(vmaccel(*args, "--lock-wait", "1.5"), "short wait")
        assert time.monotonic() - t0 >= 1.5
        waiting = start(*args, "--lock-wait", "60", "--json")
        time.sleep(1.0)
        assert waiting.proc.poll() is None  # still waiting while the lock is held
    done = waiting.finish()
    assert done.returncode == 0, done.stderr
    ledger.remember(done, image)
    assert ledger.verify_clean() and ledger.restores() == (0, 0)


# -- two backups of one name --------------------------------------------------------------------


def test_two_backups_of_one_name_at_once(tmp_path: Path, tally: Tally) -> None:
    """A backup of "vm" over a slowed transport holds the VM's lock (``leases/vm-<sha256>``)
    for seconds; a second backup of "vm" started meanwhile waits (``--lock-wait``) and then
    runs, or (no wait) refuses with exit 4 and one line. Whatever happens, the two never
    write at once: the committed backups' run times do not overlap."""
    ledger = new_ledger(tmp_path)
    slow_image = random_image(tmp_path / "slow.raw", 8 * MiB, seed=9)
    images = [random_image(tmp_path / f"v{i}.raw", 8 * MiB, seed=10 + i) for i in range(2)]
    outcomes = {"waited": 0, "refused": 0, "ran after": 0}
    with slow_source(slow_image) as slow:
        for i in range(scale(2, 24)):
            wait = "120" if i % 2 else "0"
            second = images[i % 2]
            a = start("backup", "--repo", ledger.repo, "--source", slow, "--name", "vm",
                      "--json")  # fmt: skip
            held = wait_locked(vm_lock(ledger.repo, "vm", 0).path, a)
            b = start("backup", "--repo", ledger.repo, "--source", f"file:{second}",
                      "--name", "vm", "--json", "--lock-wait", wait)  # fmt: skip
            done_a, done_b = a.finish(), b.finish()
            assert done_a.returncode == 0, done_a.stderr
            ids = [ledger.remember(done_a, slow_image)]
            if done_b.returncode == 0:
                ids.append(ledger.remember(done_b, second))
                outcomes["waited" if wait != "0" else "ran after"] += 1
            else:
                assert wait == "0" and held, done_b.stderr
                assert_refused(done_b, "second backup")
                outcomes["refused"] += 1
            listed = ledger.listed()
            runs = sorted((listed[x]["started"], listed[x]["finished"]) for x in ids)
            assert all(f <= s for (_, f), (s, _) in itertools.pairwise(runs)), runs
            settle(ledger, tally, f"two backups #{i}")
    final_check(ledger, tally)
    assert outcomes["waited"] == scale(2, 24) // 2
    tally.notes.append(f"second backup: {outcomes}")


# -- backup and gc ------------------------------------------------------------------------------


def test_backup_and_gc_in_either_order(tmp_path: Path, tally: Tally) -> None:
    """gc with ``--grace 0`` and a backup whose data is exactly what the last prune made
    garbage, started one after the other: neither waits for the other, both complete, and
    the backup's chunks are never deleted (it deduplicates before gc condemned them, and gc
    keeps them while its lease lives; or it finds them condemned or deleted and stores them
    again, resurrecting condemned rows). The backup restores byte-identical."""
    ledger = new_ledger(tmp_path)
    for i in range(scale(2, 20)):
        doomed = random_image(tmp_path / "doomed.raw", 12 * MiB, seed=100 + i)
        keeper = random_image(tmp_path / "keeper.raw", 2 * MiB, seed=200 + i)
        ledger.backup(doomed, "g")
        ledger.backup(keeper, "g")
        pruned = vmaccel("prune", "--repo", ledger.repo, "--keep-last", "1", "--json")
        assert pruned.returncode == 0, pruned.stderr
        ledger.forget({b["id"] for v in json.loads(pruned.stdout)["vms"].values()
                       for b in v["removed"]})  # fmt: skip
        backup_args = ("backup", "--repo", ledger.repo, "--source", f"file:{doomed}",
                       "--name", "vm", "--json", "--lock-wait", "120")  # fmt: skip
        gc_args = ("gc", "--repo", ledger.repo, "--grace", "0", "--json", "--lock-wait", "120")
        gc_first = i % 2 == 0
        a = start(*(gc_args if gc_first else backup_args))
        wait_locked(ledger.repo / ("lock" if gc_first else "writers.lock"), a)
        b = start(*(backup_args if gc_first else gc_args))
        done_a, done_b = a.finish(), b.finish()
        done_gc, done_backup = (done_a, done_b) if gc_first else (done_b, done_a)
        assert done_gc.returncode == 0, done_gc.stderr
        assert done_backup.returncode == 0, done_backup.stderr
        ledger.remember(done_backup, doomed)
        settle(ledger, tally, f"{'gc' if gc_first else 'backup'} first #{i}")
    final_check(ledger, tally)


# -- restore file while gc ----------------------------------------------------------------------


def _ext4_with_junk(disk: Ext4Disk, path: Path, seed: int) -> Path:
    """The ext4 test disk with random bytes after its partition: once pruned, that junk makes
    the pack it shares with the filesystem's chunks mostly dead, so gc repacks it."""
    shutil.copyfile(disk.image, path)
    junk = random_image(path.with_suffix(".junk"), 16 * MiB, seed)
    with path.open("r+b") as f:
        f.seek(44 * MiB)
        f.write(junk.read_bytes())
    junk.unlink()
    return path


def _same_tree(restored: Path, source: Path) -> bool:
    for p in source.rglob("*"):
        q = restored / p.relative_to(source)
        if p.is_file() and (not q.is_file() or q.read_bytes() != p.read_bytes()):
            return False
    return True


def test_restore_file_while_gc_repacks(tmp_path: Path, ext4_disk: Ext4Disk, tally: Tally) -> None:
    """`restore file` racing `gc --grace 0` that repacks the very pack the files are in: the
    restored tree is byte-identical, or the restore fails with one line; never other bytes."""
    outcomes = {"identical": 0, "failed": 0}
    for i in range(scale(2, 12)):
        ledger = new_ledger(tmp_path, f"repo{i}")
        ledger.backup(_ext4_with_junk(ext4_disk, tmp_path / f"junk{i}.raw", 300 + i), "fs")
        ledger.backup(ext4_disk.image, "fs")
        pruned = vmaccel("prune", "--repo", ledger.repo, "--keep-last", "1")
        assert pruned.returncode == 0, pruned.stderr
        ledger.forget({min(ledger.expected)})  # the junk backup, pruned
        target = tmp_path / f"restored{i}"
        restore = ("restore", "file", "fs@latest", "p1/data", "p1/etc", "--repo", ledger.repo,
                   "--to", target)  # fmt: skip
        gc = ("gc", "--repo", ledger.repo, "--grace", "0", "--json", "--lock-wait", "60")
        first, second = (gc, restore) if i % 2 else (restore, gc)
        a = start(*first)
        time.sleep(random.uniform(0, 0.4))
        b = start(*second)
        done_a, done_b = a.finish(), b.finish()
        done_gc, done_restore = (done_a, done_b) if i % 2 else (done_b, done_a)
        assert done_gc.returncode == 0, done_gc.stderr
        report = json.loads(done_gc.stdout)
        wrong = False
        if done_restore.returncode == 0:
            wrong = not _same_tree(target / "data", ext4_disk.tree / "data")
            outcomes["identical"] += int(not wrong)
        else:
            one_error_line(done_restore.stderr)
            outcomes["failed"] += 1
        pending = report["packs_pending"]
        tally.notes.append(f"gc #{i}: {report['packs_repacked']} repacked, {len(pending)} pending")
        if pending:  # the restore held the repository: the next gc finishes the job
            again = vmaccel("gc", "--repo", ledger.repo, "--grace", "0", "--json")
            assert again.returncode == 0 and not json.loads(again.stdout)["packs_pending"]
        settle(ledger, tally, f"restore file vs gc #{i}", wrong)
    tally.notes.append(f"restore file: {outcomes}")


# -- a mount reading while prune and gc remove its backup ---------------------------------------


class Reader(threading.Thread):
    """Reads random ranges of a mounted image file in a loop and compares them with the
    source image: counts right reads, EIO, and anything else (wrong bytes, other errors)."""

    def __init__(self, mounted: Path, source: bytes) -> None:
        super().__init__(daemon=True)
        self.mounted, self.source = mounted, source
        self.stop = threading.Event()
        self.right = self.eio = self.wrong = 0
        self.other: list[str] = []

    def run(self) -> None:
        rnd = random.Random(7)
        fd = os.open(self.mounted, os.O_RDONLY)
        try:
            while not self.stop.is_set():
                off = rnd.randrange(0, len(self.source) // 4096) * 4096
                length = min(rnd.choice((4096, 65536, 300_000)), len(self.source) - off)
                try:
                    got = os.pread(fd, length, off)
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        self.eio += 1
                    else:
                        self.other.append(f"{off}: {exc}")
                    continue
                if got == self.source[off : off + length]:
                    self.right += 1
                else:
                    self.wrong += 1
        finally:
            os.close(fd)


@needs_fuse
def test_mount_reads_while_prune_and_gc_remove_the_backup(
    tmp_path: Path, mount_repo: Callable[..., Mounted], tally: Tally
) -> None:
    """A real FUSE mount reads backup 1's raw image in a loop while `prune` removes backup 1
    and `gc --grace 0` runs: every read returns the source's bytes or fails with EIO. gc
    cannot delete pack files under the mount (they stay pending); once it is unmounted, gc
    completes and the repository verifies clean."""
    for i in range(scale(2, 10)):
        ledger = new_ledger(tmp_path, f"repo{i}")
        old = random_image(tmp_path / f"old{i}.raw", 16 * MiB, seed=400 + i)
        new = random_image(tmp_path / f"new{i}.raw", 4 * MiB, seed=500 + i)
        ledger.backup(old, "web")
        ledger.backup(new, "web")
        first = min(ledger.expected)
        started = ledger.listed()[first]["started"]
        m = mount_repo(ledger.repo, name=f"mnt{i}")
        reader = Reader(m.path / "web" / dir_time(started) / "disk0.raw", old.read_bytes())
        reader.start()
        time.sleep(0.5)
        pruned = vmaccel("prune", "--repo", ledger.repo, "--keep-last", "1")
        assert pruned.returncode == 0, pruned.stderr
        ledger.forget({first})
        gc = vmaccel("gc", "--repo", ledger.repo, "--grace", "0", "--json")
        assert gc.returncode == 0, gc.stderr
        assert json.loads(gc.stdout)["packs_pending"], gc.stdout  # the mount holds them
        time.sleep(1.0)
        reader.stop.set()
        reader.join(30)
        force_unmount(m.path)
        m.proc.wait(30)
        again = vmaccel("gc", "--repo", ledger.repo, "--grace", "0", "--json")
        assert again.returncode == 0, again.stderr
        assert not json.loads(again.stdout)["packs_pending"], again.stdout
        assert reader.right > 0, "the reader never read anything"
        tally.notes.append(f"mount #{i}: {reader.right} right, {reader.eio} EIO reads")
        assert not reader.other, reader.other[:3]
        settle(ledger, tally, f"mount vs prune+gc #{i}", reader.wrong > 0)
