"""vmaccel.catalog.gc: mark and sweep, repacking, grace period, readers, leftovers of crashes."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.catalog.conftest import BLOCK, History
from vmaccel.catalog.gc import collect_garbage, mark
from vmaccel.catalog.prune import prune, remove_backup
from vmaccel.catalog.retention import RetentionPolicy
from vmaccel.catalog.verify import verify
from vmaccel.vocabulary.errors import ChunkMissing, UsageError


def pack_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (path / "packs").glob("[0-9a-f][0-9a-f]/*")}


def assert_intact(history: History, keep: set[int] | None = None) -> None:
    """verify --full passes and every remaining backup reads back exactly."""
    with history.open() as repo:
        report = verify(repo, full=True)
        assert report.ok, "\n".join(report.summary())
        present = {b.id for b in repo.backups()}
        rows = {p.name: p.size for p in repo.index.packs()}
    assert pack_files(history.path) == rows  # no file without a row, no row without a file
    if keep is not None:
        assert present == keep
    for (bid, disk), data in history.expected.items():
        if bid in present:
            assert history.read(bid, disk) == data, (bid, disk)


def prune_to_last(history: History, n: int) -> None:
    """Prune to the ``n`` newest backups per VM, after adding a 512 KiB backup of random
    data and removing it again, so there are whole packs of garbage."""
    with history.open(write=True) as repo:
        with repo.begin_backup("scratch") as bw:
            w = bw.image_writer("disk0", 128 * BLOCK)
            w.write(0, random.Random(3).randbytes(128 * BLOCK))
            bw.finish_image("disk0", w)
            remove_backup(repo, bw.commit())
        prune(repo, RetentionPolicy(last=n))


def test_gc_after_prune_frees_bytes_and_keeps_the_rest(history: History) -> None:
    prune_to_last(history, 1)
    before = sum(pack_files(history.path).values())
    with history.open(write=True) as repo:
        chunks_before = repo.index.chunk_totals()[0]
        report = collect_garbage(repo, grace_seconds=0)
        live = mark(repo)
        assert live <= {c.id for c in repo.index.chunks()}  # (dead ones may stay in live packs)
        assert repo.index.chunk_totals()[0] < chunks_before
    after = sum(pack_files(history.path).values())
    assert report.chunks_deleted > 0
    assert report.packs_deleted + report.packs_repacked > 0
    assert report.bytes_freed - report.bytes_written == before - after > 0
    assert report.packs_pending == ()
    assert_intact(history, keep={4, 5})
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["bytes_freed"] == report.bytes_freed
    assert any("freed" in line for line in report.summary())


def test_gc_without_garbage_changes_nothing(history: History) -> None:
    files = pack_files(history.path)
    with history.open(write=True) as repo:
        report = collect_garbage(repo, grace_seconds=0)
    assert (report.chunks_deleted, report.packs_deleted, report.packs_repacked) == (0, 0, 0)
    assert report.bytes_freed == 0
    assert pack_files(history.path) == files
    assert_intact(history, keep={1, 2, 3, 4, 5})


def test_dry_run_reports_what_gc_would_do_and_changes_nothing(history: History) -> None:
    prune_to_last(history, 1)
    files = pack_files(history.path)
    db = (history.path / "index.db").read_bytes()
    with history.open(write=True) as repo:
        dry = collect_garbage(repo, grace_seconds=0, dry_run=True)
    assert pack_files(history.path) == files
    assert (history.path / "index.db").read_bytes() == db
    assert dry.dry_run and dry.chunks_deleted > 0
    with history.open(write=True) as repo:
        real = collect_garbage(repo, grace_seconds=0)
    for name in ("chunks_deleted", "packs_deleted", "packs_repacked", "live_chunks"):
        assert getattr(dry, name) == getattr(real, name), name
    # repacking several packs into one saves their headers too, which the estimate leaves out
    assert 0 <= real.bytes_freed - dry.bytes_freed <= 64 * real.packs_repacked
    assert "would be" in " ".join(dry.summary())


def test_repack_moves_live_chunks_into_new_packs(history: History) -> None:
    prune_to_last(history, 1)
    with history.open(write=True) as repo:
        live = mark(repo)
        old_packs = {p.name for p in repo.index.packs()}
        report = collect_garbage(repo, grace_seconds=0, repack_threshold=0.0)
        assert report.packs_repacked > 0 and report.packs_written > 0
        locations = {c.id: c.pack for c in repo.index.chunks()}
    assert set(locations) == live  # every live chunk still has a location, nothing else does
    moved = {cid for cid, pack in locations.items() if pack not in old_packs}
    assert moved  # some live chunks now live in the new packs
    assert not set(pack_files(history.path)) - set(locations.values())  # no empty pack file
    assert_intact(history, keep={4, 5})


def test_grace_period_keeps_young_garbage(history: History) -> None:
    prune_to_last(history, 1)
    files = pack_files(history.path)
    with history.open(write=True) as repo:
        report = collect_garbage(repo)  # default grace: an hour; every pack is seconds old
        assert report.packs_young == len(files)
        assert (report.chunks_deleted, report.packs_deleted, report.packs_repacked) == (0, 0, 0)
    assert pack_files(history.path) == files
    assert_intact(history, keep={4, 5})


def test_a_reader_blocks_pack_deletion_until_it_closes(history: History) -> None:
    prune_to_last(history, 1)
    reader_repo = history.open()  # holds readers.lock (shared)
    try:
        reader = reader_repo.open_image(reader_repo.image(reader_repo.backup(5), "disk0"))
        with history.open(write=True) as repo:
            report = collect_garbage(repo, grace_seconds=0)
            pending = set(report.packs_pending)
            assert pending and report.bytes_freed <= 0
            assert {p.name for p in repo.index.packs(state="deleting")} == pending
        assert pending <= set(pack_files(history.path))  # files are still there
        assert reader.read() == history.expected[(5, "disk0")]  # reads through the gc
        reader.close()
    finally:
        reader_repo.close()
    with history.open(write=True) as repo:
        again = collect_garbage(repo, grace_seconds=0)
    assert again.packs_pending == () and again.bytes_freed > 0
    assert not pending & set(pack_files(history.path))
    assert_intact(history, keep={4, 5})


def test_unfinished_backups_and_their_chunks_are_removed(history: History) -> None:
    files = pack_files(history.path)
    with history.open(write=True) as repo:
        bw = repo.begin_backup("vm1")  # a writer that dies after sealing packs
        w = bw.image_writer("disk0", 64 * BLOCK)
        w.write(0, random.Random(5).randbytes(64 * BLOCK))
        bw.finish_image("disk0", w)
        repo.chunks.flush()
        failed = repo.begin_backup("vm2")  # an aborted one
        failed.abort()
        assert {b.state for b in repo.backups(state=None)} == {"complete", "in_progress", "failed"}
    assert len(pack_files(history.path)) > len(files)
    with history.open(write=True) as repo:
        report = collect_garbage(repo, grace_seconds=0)
        assert sorted(report.backups_removed) == sorted([bw.uuid, failed.uuid])
        assert {b.state for b in repo.backups(state=None)} == {"complete"}
    assert pack_files(history.path) == files
    assert_intact(history, keep={1, 2, 3, 4, 5})


def test_orphan_and_temporary_files_go_after_the_grace_period(history: History) -> None:
    files = pack_files(history.path)
    some = next(iter(files))
    orphan = "ff" + "0" * 30
    (history.path / "packs" / "ff").mkdir(exist_ok=True)
    shutil.copy(history.pack_path(some), history.pack_path(orphan))
    tmp = history.path / "packs" / "tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / ("ab" * 16)).write_bytes(b"VMAPACK\x01 half written")
    with history.open(write=True) as repo:
        young = collect_garbage(repo, grace_seconds=60)
        assert (young.orphans_deleted, young.temporary_deleted) == (0, 0)
    assert history.pack_path(orphan).exists()
    old = time.time() - 120
    os.utime(history.pack_path(orphan), (old, old))
    os.utime(tmp / ("ab" * 16), (old, old))
    with history.open(write=True) as repo:
        report = collect_garbage(repo, grace_seconds=60)
    assert (report.orphans_deleted, report.temporary_deleted) == (1, 1)
    assert report.bytes_freed == files[some] + len(b"VMAPACK\x01 half written")
    assert pack_files(history.path) == files
    assert list(tmp.iterdir()) == []


def test_deleting_packs_are_finished_even_when_their_file_is_gone(history: History) -> None:
    prune_to_last(history, 1)
    with history.open(), history.open(write=True) as repo:  # a reader keeps the files
        pending = collect_garbage(repo, grace_seconds=0).packs_pending
    assert len(pending) >= 2
    history.pack_path(pending[0]).unlink()  # as if a gc died between file and row
    with history.open(write=True) as repo:
        report = collect_garbage(repo, grace_seconds=0)
        assert report.packs_pending == ()
        assert repo.index.packs(state="deleting") == []
    assert not set(pending) & set(pack_files(history.path))
    assert_intact(history, keep={4, 5})


def test_a_damaged_map_stops_gc_before_it_deletes_anything(history: History) -> None:
    prune_to_last(history, 1)
    root = history.image(5, "disk1").root
    assert root is not None
    files = pack_files(history.path)
    with history.open(write=True) as repo:
        with repo.index.writing():
            repo.index.delete_chunks([root])
        with pytest.raises(ChunkMissing, match=r"disk 'disk1' of backup 5 \(vm1\)"):
            collect_garbage(repo, grace_seconds=0)
        assert repo.index.packs(state="deleting") == []
    assert pack_files(history.path) == files


def test_gc_needs_the_writer_lock_and_sane_arguments(history: History) -> None:
    with history.open() as repo, pytest.raises(UsageError, match="writing"):
        collect_garbage(repo)
    with history.open(write=True) as repo, pytest.raises(UsageError):
        collect_garbage(repo, grace_seconds=-1)


def test_a_reader_postpones_repacking_and_freed_bytes_are_never_negative(
    history: History,
) -> None:
    """Repacking while a reader holds the old packs would only grow the repository (the old
    report said "-15.0 MiB freed"): gc repacks nothing then, and reports the held-back bytes
    apart from what it freed."""
    prune_to_last(history, 1)
    files = pack_files(history.path)
    with history.open(), history.open(write=True) as repo:
        report = collect_garbage(repo, grace_seconds=0, repack_threshold=0.0)
    assert (report.packs_repacked, report.packs_written, report.bytes_written) == (0, 0, 0)
    assert report.bytes_freed == 0 and report.packs_pending
    assert report.bytes_pending == sum(files[n] for n in report.packs_pending)
    assert pack_files(history.path) == files
    text = "\n".join(report.summary())
    assert "-" not in text.split("freed")[0].splitlines()[-1]
    assert f"{len(report.packs_pending)} pack(s) (" in text and "not deleted yet" in text
    assert report.packs_not_repacked > 0 and "not repacked while a reader" in text

    with history.open(write=True) as repo:
        again = collect_garbage(repo, grace_seconds=0, repack_threshold=0.0)
    after = pack_files(history.path)
    assert again.packs_repacked > 0 and again.packs_pending == ()
    assert again.bytes_freed == sum(files.values()) - sum(
        size for name, size in files.items() if name in after
    )
    assert again.bytes_freed - again.bytes_written == sum(files.values()) - sum(after.values())
    assert_intact(history, keep={4, 5})
