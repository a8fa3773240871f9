"""rebuild-index: the catalog recreated from packs and manifests alone."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import vmaccel.catalog.rebuild as rebuild_module
from tests.catalog.conftest import PASSPHRASE, History, flip_byte
from vmaccel.catalog.pack import FOOTER_SIZE
from vmaccel.catalog.rebuild import rebuild_index
from vmaccel.catalog.verify import verify
from vmaccel.cli.app import main
from vmaccel.vocabulary.errors import PassphraseError, RepositoryLocked


def catalog_rows(h: History) -> tuple[list[Any], list[Any], int]:
    """Backups and images as the index has them (ids included), and the chunk row count."""
    with h.open() as repo:
        backups = repo.backups()
        images = [img for b in backups for img in repo.images(b)]
        chunks = sum(len(repo.index.chunks_in_pack(p.id)) for p in repo.index.packs())
    return backups, images, chunks


def assert_identical(h: History) -> None:
    for (bid, disk), data in h.expected.items():
        assert h.read(bid, disk) == data, f"backup {bid} {disk} differs after the rebuild"


def pack_files(h: History) -> list[Path]:
    return sorted(p for p in (h.path / "packs").glob("[0-9a-f][0-9a-f]/*"))


def test_rebuild_after_deleting_the_index(history: History) -> None:
    backups, images, chunks = catalog_rows(history)
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (history.path / name).unlink(missing_ok=True)

    report = rebuild_index(history.path, None)

    assert report.ok, report.summary()
    assert report.moved_aside is None
    assert (report.packs, report.chunks) == (len(pack_files(history)), chunks)
    assert (report.backups, report.images) == (5, 8)
    assert catalog_rows(history) == (backups, images, chunks)  # ids, parents, roots kept
    assert_identical(history)
    with history.open() as repo:
        assert verify(repo, full=True).ok


def test_rebuild_keeps_the_old_index(history: History) -> None:
    backups, _, _ = catalog_rows(history)
    report = rebuild_index(history.path, None)

    assert report.moved_aside is not None and report.moved_aside.startswith("index.db.broken-")
    old = history.path / report.moved_aside
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT COUNT(*) FROM backup").fetchone()[0] == len(backups)
    db.close()
    assert catalog_rows(history)[0] == backups
    assert_identical(history)

    second = rebuild_index(history.path, None)  # a second rebuild keeps both old indexes
    assert second.moved_aside != report.moved_aside
    assert (history.path / report.moved_aside).exists()
    assert (history.path / str(second.moved_aside)).exists()


def test_rebuild_replaces_an_unreadable_index(history: History) -> None:
    for name in ("index.db-wal", "index.db-shm"):
        (history.path / name).unlink(missing_ok=True)
    garbage = os.urandom(8192)
    (history.path / "index.db").write_bytes(garbage)

    report = rebuild_index(history.path, None)
    assert report.ok and report.backups == 5
    assert (history.path / str(report.moved_aside)).read_bytes() == garbage
    assert_identical(history)


def test_rebuild_restores_dropped_chunk_rows(history: History) -> None:
    cid = history.block_chunk(1, "disk0", 0)
    with sqlite3.connect(history.path / "index.db") as db:
        db.execute("DELETE FROM chunk WHERE id = ?", (cid,))
        db.execute("DELETE FROM image WHERE backup_id = 2")
        db.execute("DELETE FROM backup WHERE id = 2")
    db.close()
    with history.open() as repo:
        assert not verify(repo).ok

    rebuild_index(history.path, None)
    with history.open() as repo:
        assert verify(repo, full=True).ok
        assert [b.id for b in repo.backups()] == [1, 2, 3, 4, 5]
    assert_identical(history)


def test_rebuild_encrypted_repository(make_history: Callable[..., History]) -> None:
    h = make_history(encryption="repokey")
    backups, images, chunks = catalog_rows(h)
    (h.path / "index.db").unlink()

    with pytest.raises(PassphraseError):
        rebuild_index(h.path, "wrong passphrase")
    assert not list(h.path.glob("index.db.broken-*"))  # a failed open changes nothing

    report = rebuild_index(h.path, lambda: PASSPHRASE)
    assert report.ok, report.summary()
    assert catalog_rows(h) == (backups, images, chunks)
    assert_identical(h)


def test_rebuild_pack_with_damaged_trailer(history: History) -> None:
    _, _, chunks = catalog_rows(history)
    with history.open() as repo:
        pack = max(repo.index.packs(), key=lambda p: p.size)
    flip_byte(history.pack_path(pack.name), pack.size - FOOTER_SIZE - 3)

    report = rebuild_index(history.path, None)

    assert report.scanned_packs == (pack.name,)
    assert len(report.problems) == 1 and pack.name in report.problems[0]
    assert "recovered" in report.problems[0]
    assert report.complete  # every chunk recovered: a problem, nothing lost
    assert report.chunks == chunks and report.backups == 5
    assert_identical(history)
    with history.open() as repo:
        after = verify(repo, full=True)
    assert not after.damaged  # every chunk recovered; only the trailer stays damaged
    assert [(p.subject, p.name) for p in after.problems] == [("pack", pack.name)]


def test_rebuild_truncated_pack_reports_what_is_lost(history: History) -> None:
    cid = history.block_chunk(1, "disk0", 4)
    loc = history.location(cid)
    os.truncate(history.pack_path(loc.pack), loc.offset + 7)

    report = rebuild_index(history.path, None)
    assert report.scanned_packs == (loc.pack,)
    assert report.backups == 5
    assert not report.complete  # named, so the CLI exits 6
    assert report.lost and all("in no pack" in lost for lost in report.lost)
    assert any(lost.startswith("backup 1 ") and "vm1/disk0" in lost for lost in report.lost)
    with history.open() as repo:
        assert repo.index.chunk(cid) is None  # cut off: lost, and verify says so
        after = verify(repo)
    assert cid.hex() in {c.id for c in after.damaged}
    history.check_reads(
        {(a.backup_id, a.disk): [(r.offset, r.length) for r in a.ranges] for a in after.affected}
    )


def test_rebuild_with_damaged_manifest(history: History) -> None:
    with history.open() as repo:
        lost = repo.backup(4)
    flip_byte(history.path / "backups" / lost.uuid, 50)

    report = rebuild_index(history.path, None)
    assert report.backups == 4 and report.images == 7
    assert len(report.problems) == 1 and lost.uuid in report.problems[0]
    assert report.lost == report.problems and not report.complete
    with history.open() as repo:
        assert [b.id for b in repo.backups()] == [1, 2, 3, 5]
    del history.expected[(4, "disk0")]
    assert_identical(history)


def test_rebuild_refuses_while_a_reader_is_open(history: History) -> None:
    with history.open(), pytest.raises(RepositoryLocked):
        rebuild_index(history.path, None)
    assert (history.path / "index.db").exists()
    assert not list(history.path.glob("index.db.broken-*"))


def test_cli_rebuild_index(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    (history.path / "index.db").unlink()
    assert main(["repo", "rebuild-index", "--repo", str(history.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backups"] == 5 and doc["ok"] is True
    assert_identical(history)


def test_interrupted_rebuild_never_replaces_the_index(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    (history.path / "index.db.rebuilding").write_bytes(b"left by an earlier crash")
    monkeypatch.setattr(rebuild_module, "_add_backups", crash)
    with pytest.raises(KeyboardInterrupt):
        rebuild_index(history.path, None)
    assert not list(history.path.glob("index.db.broken-*"))
    assert_identical(history)  # the old index is still the live one

    monkeypatch.undo()
    report = rebuild_index(history.path, None)  # discards the partial index and finishes
    assert report.ok and report.backups == 5
    assert not (history.path / "index.db.rebuilding").exists()
    assert_identical(history)
