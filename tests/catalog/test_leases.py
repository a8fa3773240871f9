"""vmaccel.catalog.lease and gc beside backups: leases, condemned chunks, resurrection."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.catalog.conftest import BLOCK, small_config
from vmaccel.catalog import Repository
from vmaccel.catalog import gc as gc_module
from vmaccel.catalog.backup import BackupWriter
from vmaccel.catalog.condemn import Verdict
from vmaccel.catalog.gc import collect_garbage, mark
from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.lease import LEASES, is_held
from vmaccel.catalog.prune import remove_backup
from vmaccel.catalog.verify import verify
from vmaccel.vocabulary.errors import RepositoryLocked

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = 64  # 256 KiB per image: several 64 KiB packs

HOLDER = """
import sys, time
from pathlib import Path
from vmaccel.catalog import Repository
repo = Repository.open(Path(sys.argv[1]), lease="backup")
print(repo.lease.id, repo.lease.name, flush=True)
time.sleep(600)
"""

GC = """
import json, sys
from pathlib import Path
from vmaccel.catalog import Repository
from vmaccel.catalog.gc import collect_garbage, mark
with Repository.open(Path(sys.argv[1]), write=True) as repo:
    print(json.dumps(collect_garbage(repo, grace_seconds=0).to_dict()))
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    Repository.init(tmp_path / "r", small_config())
    return tmp_path / "r"


def data(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCKS * BLOCK)


def write_image(bw: BackupWriter, payload: bytes) -> None:
    w = bw.image_writer("disk0", len(payload))
    w.write(0, payload)
    bw.finish_image("disk0", w)


def back_up(repo: Repository, vm: str, payload: bytes) -> BackupRow:
    with repo.begin_backup(vm) as bw:
        write_image(bw, payload)
        return bw.commit()


def pruned(path: Path, *payloads: bytes) -> list[set[bytes]]:
    """Back up each payload as its own VM and remove the backup again (as prune does);
    returns the chunk ids each one added (now referenced by no complete backup)."""
    added = []
    with Repository.open(path, write=True) as repo:
        for i, payload in enumerate(payloads):
            before = {c.id for c in repo.index.chunks()}
            row = back_up(repo, f"gone{i}", payload)
            added.append({c.id for c in repo.index.chunks()} - before)
            remove_backup(repo, row)
    return added


def read_back(path: Path, backup_id: int) -> bytes:
    with Repository.open(path) as repo, repo.open_image(
        repo.image(repo.backup(backup_id), "disk0")
    ) as reader:
        return reader.read()


def run_gc(path: Path) -> dict[str, Any]:
    """gc --grace 0 in another process."""
    done = subprocess.run(
        [sys.executable, "-c", GC, str(path)], capture_output=True, text=True, cwd=ROOT,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def chunk_ids(path: Path) -> set[bytes]:
    with Repository.open(path) as repo:
        return {c.id for c in repo.index.chunks()}


def assert_clean(path: Path) -> None:
    with Repository.open(path) as repo:
        report = verify(repo, full=True)
    assert report.ok, "\n".join(report.summary())


# -- the lease itself ---------------------------------------------------------------------------


def test_a_lease_is_a_held_private_file_and_a_row_until_released(path: Path) -> None:
    with Repository.open(path, lease="backup") as first, Repository.open(
        path, lease="backup"
    ) as second:
        assert first.writable and not first.maintenance
        assert first.lease is not None and second.lease is not None
        assert second.lease.id > first.lease.id  # one global order
        lease_file = path / LEASES / first.lease.name
        assert is_held(lease_file)
        assert stat.S_IMODE(lease_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((path / LEASES).stat().st_mode) == 0o700
        rows = {r.name: r for r in first.index.leases()}
        assert set(rows) == {first.lease.name, second.lease.name}
        assert rows[first.lease.name].pid == os.getpid()
        assert rows[first.lease.name].what == "backup"
        name = first.lease.name
    assert not (path / LEASES / name).exists()
    with Repository.open(path) as repo:
        assert repo.index.leases() == []
        assert repo.index.last_lease_id() == 2  # ids are never reused


def test_two_backups_of_one_vm_exclude_each_other(path: Path) -> None:
    with Repository.open(path, lease="backup") as a, Repository.open(path, lease="backup") as b:
        with a.vm_lock("vm"):
            with pytest.raises(RepositoryLocked, match=r"locked by another writer.*--lock-wait"):
                b.vm_lock("vm").acquire()
            with b.vm_lock("other"):  # another VM runs beside it
                pass
        with b.vm_lock("vm"):
            pass


def test_a_killed_lease_holder_leaves_a_stale_lease_that_gc_clears(path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    lease_id, name = proc.stdout.readline().split()
    assert is_held(path / LEASES / name)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not is_held(path / LEASES / name)  # the flock died with its holder
    with Repository.open(path) as repo:
        assert [r.id for r in repo.index.leases()] == [int(lease_id)]  # the row is stale
    report = run_gc(path)
    assert report["leases_cleared"] == 1 and report["leases_live"] == 0
    assert not (path / LEASES / name).exists()
    with Repository.open(path) as repo:
        assert repo.index.leases() == []


# -- gc beside a backup ---------------------------------------------------------------------------


def test_gc_beside_a_backup_deletes_nothing_the_backup_then_commits(path: Path) -> None:
    """A backup that deduplicated against chunks only a pruned backup referenced, before gc
    ran: gc condemns them but keeps them (and the backup's in_progress row); after the commit
    everything reads back and verifies; the next gc deletes only the truly dead chunks."""
    shared, dead = data(1), data(2)
    shared_ids, dead_ids = pruned(path, shared, dead)
    writer = Repository.open(path, lease="backup")
    try:
        bw = writer.begin_backup("vm")
        write_image(bw, shared)  # dedup lookups happen here, before gc
        assert bw.chunks.stored_bytes < BLOCK  # nothing of the data was stored again
        report = run_gc(path)
        assert report["leases_live"] == 1 and report["chunks_deleted"] == 0
        assert report["chunks_condemned"] >= len(shared_ids | dead_ids)
        assert report["chunks_waiting"] >= len(shared_ids | dead_ids)
        assert report["backups_left"] == [bw.uuid]
        assert shared_ids | dead_ids <= chunk_ids(path)
        row = bw.commit()
    finally:
        writer.close()
    assert read_back(path, row.id) == shared
    assert_clean(path)
    report = run_gc(path)  # no lease now
    assert report["leases_live"] == 0 and report["chunks_deleted"] >= len(dead_ids - shared_ids)
    left = chunk_ids(path)
    assert not (dead_ids - shared_ids) & left and shared_ids <= left
    with Repository.open(path) as repo:
        assert not repo.index.condemned_chunks()  # the used ones were absolved
    assert read_back(path, row.id) == shared
    assert_clean(path)


def test_a_backup_after_the_condemnation_stores_the_data_again(path: Path) -> None:
    """Condemned chunks are hidden from dedup: a backup started after gc condemned them
    stores them anew, which resurrects their rows in its own pack."""
    payload = data(3)
    (ids,) = pruned(path, payload)
    with Repository.open(path, lease="backup"):  # an idle writer: gc may condemn only
        report = run_gc(path)
        assert report["chunks_deleted"] == 0 and report["chunks_waiting"] >= len(ids)
    with Repository.open(path) as repo:
        condemned = repo.index.condemned_chunks()
        old = {cid: repo.index.chunk(cid) for cid in ids}
    assert ids <= set(condemned)
    with Repository.open(path, lease="backup") as writer:
        with writer.begin_backup("vm") as bw:
            write_image(bw, payload)
            assert bw.chunks.stored_bytes > len(payload) // 2  # stored again, not deduplicated
            row = bw.commit()
        now = {cid: writer.index.chunk(cid) for cid in ids}
        assert not ids & set(writer.index.condemned_chunks())  # resurrected
    moved = [cid for cid in ids if now[cid] != old[cid]]
    assert moved and all(now[c].pack != old[c].pack for c in moved)  # type: ignore[union-attr]
    assert read_back(path, row.id) == payload
    report = run_gc(path)
    assert read_back(path, row.id) == payload
    assert_clean(path)
    assert report["leases_live"] == 0


def test_a_resurrection_racing_gc_wins_over_its_conditional_deletes(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc has judged condemned chunks deletable; before it deletes them a backup (whose lease
    is newer than the condemnation) resurrects them: gc's deletes, conditional on the pack and
    the condemnation, leave the resurrected rows alone."""
    payload = data(4)
    (ids,) = pruned(path, payload)
    real_judge = gc_module.judge
    raced: list[BackupRow] = []

    def judge_then_race(*args: Any, **kwargs: Any) -> Verdict:
        verdict = real_judge(*args, **kwargs)
        assert ids <= verdict.deletable  # no lease: deletable at once
        with Repository.open(path, lease="backup") as writer:
            raced.append(back_up(writer, "vm", payload))  # stores anew: resurrects
        return verdict

    monkeypatch.setattr(gc_module, "judge", judge_then_race)
    with Repository.open(path, write=True) as repo:
        report = collect_garbage(repo, grace_seconds=0)
    (row,) = raced
    assert report.chunks_deleted < len(ids)
    assert ids <= chunk_ids(path)
    assert read_back(path, row.id) == payload
    assert_clean(path)


def assert_no_complete_backup_uses_a_condemned_chunk(path: Path) -> None:
    with Repository.open(path) as repo:
        assert not mark(repo) & set(repo.index.condemned_chunks())


def test_a_pruned_parent_reused_by_a_running_backup_keeps_its_chunks(path: Path) -> None:
    """The hole the condemned rule alone leaves: P's chunks are condemned while P is being
    written, P completes, B (a newer lease) reuses P's map, P is pruned, and gc runs beside B.
    P's commit absolved them, so gc condemns them anew for B's lease and keeps them."""
    first = data(5)
    with Repository.open(path, lease="backup") as writer, writer.begin_backup("vm") as bw:
        write_image(bw, first)
        assert run_gc(path)["chunks_waiting"] > 0  # condemned while P is written
        parent = bw.commit()
    assert_no_complete_backup_uses_a_condemned_chunk(path)
    second = bytearray(first)
    second[:BLOCK] = data(6)[:BLOCK]
    with Repository.open(path, lease="backup") as writer:
        parent_img = writer.latest_images("vm")["disk0"]
        with writer.begin_backup("vm") as bw:
            w = bw.image_writer("disk0", len(second), parent=parent_img)
            w.write(0, bytes(second[:BLOCK]))
            bw.finish_image("disk0", w, parent=parent_img)
            with Repository.open(path, write=True) as maintenance:
                remove_backup(maintenance, maintenance.backup(parent.id))  # prune P
            report = run_gc(path)
            assert report["leases_live"] == 1 and report["chunks_deleted"] == 0
            child = bw.commit()
    assert read_back(path, child.id) == bytes(second)
    assert_no_complete_backup_uses_a_condemned_chunk(path)
    run_gc(path)
    assert read_back(path, child.id) == bytes(second)
    assert_clean(path)


def test_a_backup_completing_during_the_mark_is_not_condemned(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc's condemning transaction marks backups that completed after its mark began."""
    payload = data(7)
    writer = Repository.open(path, lease="backup")
    try:
        bw = writer.begin_backup("vm")
        write_image(bw, payload)
        real_judge = gc_module.judge

        def complete_then_judge(*args: Any, **kwargs: Any) -> Verdict:
            bw.commit()  # after the mark, before the condemning transaction
            return real_judge(*args, **kwargs)

        monkeypatch.setattr(gc_module, "judge", complete_then_judge)
        with Repository.open(path, write=True) as repo:
            report = collect_garbage(repo, grace_seconds=0)
        assert report.chunks_deleted == 0
    finally:
        writer.close()
    assert_no_complete_backup_uses_a_condemned_chunk(path)
    assert read_back(path, 1) == payload
    assert_clean(path)


def test_a_backup_starting_during_a_quiet_gc_is_left_alone(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lease when gc's mark began, one by its sweep: gc leaves the new writer's
    in_progress backup and its files alone, and the backup commits and reads back."""
    payload = data(8)
    (dead,) = pruned(path, data(9))
    started: list[tuple[Repository, BackupWriter]] = []
    real_judge = gc_module.judge

    def judge_then_start(*args: Any, **kwargs: Any) -> Verdict:
        verdict = real_judge(*args, **kwargs)
        writer = Repository.open(path, lease="backup")
        bw = writer.begin_backup("vm")
        write_image(bw, payload)
        bw.chunks.flush()  # its packs are in place and indexed, its backup in_progress
        started.append((writer, bw))
        return verdict

    monkeypatch.setattr(gc_module, "judge", judge_then_start)
    try:
        with Repository.open(path, write=True) as repo:
            report = collect_garbage(repo, grace_seconds=0)
        ((_, bw),) = started
        assert report.backups_left == (bw.uuid,) and not report.backups_removed
        assert report.chunks_deleted >= len(dead)  # judged before the writer: deleted
        row = bw.commit()
    finally:
        for w, _ in started:
            w.close()
    assert read_back(path, row.id) == payload
    assert_clean(path)
