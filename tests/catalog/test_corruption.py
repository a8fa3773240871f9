"""Corruption tests: damage a real repository, then check that verify names exactly what is
damaged and what depends on it, and that reads of damaged ranges fail while the rest read
back exactly."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tests.catalog.conftest import BLOCK, History, flip_byte, merge
from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.pack import FOOTER_SIZE
from vmaccel.catalog.verify import DamagedChunk, VerifyReport, verify
from vmaccel.vocabulary.errors import ChunkMissing, DamageError


def run_verify(h: History, full: bool) -> VerifyReport:
    with h.open() as repo:
        return verify(repo, full=full)


def affected(report: VerifyReport) -> dict[tuple[int, str], list[tuple[int, int]]]:
    return {
        (a.backup_id, a.disk): [(r.offset, r.length) for r in a.ranges] for a in report.affected
    }


def dependents(chunk: DamagedChunk) -> dict[tuple[int, str], list[tuple[int, int]]]:
    return {(d.backup_id, d.disk): [(r.offset, r.length) for r in d.ranges] for d in chunk.used_by}


def leaf_node(h: History, backup_id: int, disk: str, index: int) -> bytes:
    """The id of the ``index``-th leaf under the root of a two-level map."""
    img = h.image(backup_id, disk)
    assert img.depth == 2 and img.root is not None
    with h.open() as repo:
        entry = repo.blockmap.node(img.root, img.fanout)[1][index]
    assert entry != HOLE
    return entry


@pytest.mark.parametrize("block", [0, 1], ids=["random-chunk", "compressible-shared-chunk"])
def test_flipped_byte_in_data_chunk(history: History, block: int) -> None:
    cid = history.block_chunk(1, "disk0", block)
    loc = history.location(cid)
    want = history.ranges_using(cid)
    flip_byte(history.pack_path(loc.pack), loc.offset + loc.stored_len // 2)

    assert run_verify(history, full=False).ok  # quick reads no data: by design it cannot see it
    report = run_verify(history, full=True)

    assert not report.ok
    assert [(c.id, c.kind, c.pack, c.offset) for c in report.damaged] == [
        (cid.hex(), "data", loc.pack, loc.offset)
    ]
    assert "crc" in report.damaged[0].reason
    assert dependents(report.damaged[0]) == want
    assert affected(report) == want
    assert {(a.vm, a.disk) for a in report.affected} == {
        (("vm1" if bid in (1, 3, 5) else "vm2"), disk) for bid, disk in want
    }
    assert not report.problems
    history.check_reads(want)


def test_flipped_byte_in_leaf_map_node(history: History) -> None:
    node = leaf_node(history, 1, "disk0", 3)
    loc = history.location(node)
    want = history.ranges_using(node)
    assert want[(1, "disk0")] == [(3 * 16 * BLOCK, 16 * BLOCK)]  # the whole leaf's range
    flip_byte(history.pack_path(loc.pack), loc.offset + 3)

    for full in (False, True):
        report = run_verify(history, full=full)
        assert not report.ok
        assert [(c.id, c.kind, c.pack, c.offset) for c in report.damaged] == [
            (node.hex(), "node", loc.pack, loc.offset)
        ]
        assert affected(report) == want
    history.check_reads(want)


def test_flipped_byte_in_root_node_affects_the_whole_image(history: History) -> None:
    img = history.image(5, "disk1")
    assert img.root is not None
    loc = history.location(img.root)
    flip_byte(history.pack_path(loc.pack), loc.offset + 1)

    report = run_verify(history, full=False)
    assert [c.id for c in report.damaged] == [img.root.hex()]
    assert affected(report) == {(5, "disk1"): [(0, img.size)]}
    history.check_reads(affected(report))


def test_truncated_pack(history: History) -> None:
    cid = history.block_chunk(3, "disk0", 4)
    loc = history.location(cid)
    with history.open() as repo:
        pack = next(p for p in repo.index.packs() if p.name == loc.pack)
        rows = repo.index.chunks_in_pack(pack.id)
    cut = loc.offset + 10
    os.truncate(history.pack_path(loc.pack), cut)
    lost = {r.id for r in rows if r.offset + r.stored_len > cut}
    want: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for c in lost:
        for key, ranges in history.ranges_using(c).items():
            want[key] = want.get(key, []) + ranges

    report = run_verify(history, full=False)
    assert {bytes.fromhex(c.id) for c in report.damaged} == lost
    assert all(c.pack == loc.pack and "outside" in c.reason for c in report.damaged)
    assert {p.name for p in report.problems} == {loc.pack}
    got = affected(report)
    assert set(got) == set(want)
    assert got == {k: merge(v) for k, v in want.items()}
    assert (cid.hex() in {c.id for c in report.damaged}) and (3, "disk0") in got
    full = run_verify(history, full=True)
    assert {c.id for c in full.damaged} == {c.id for c in report.damaged}
    history.check_reads(got)


def test_deleted_pack(history: History) -> None:
    cid = history.block_chunk(2, "disk0", 0)
    loc = history.location(cid)
    with history.open() as repo:
        pack = next(p for p in repo.index.packs() if p.name == loc.pack)
        rows = {r.id for r in repo.index.chunks_in_pack(pack.id)}
    history.pack_path(loc.pack).unlink()

    report = run_verify(history, full=False)
    assert {bytes.fromhex(c.id) for c in report.damaged} == rows
    assert all(c.reason == f"pack {loc.pack} is missing" for c in report.damaged)
    assert [(p.subject, p.name) for p in report.problems] == [("pack", loc.pack)]
    assert (2, "disk0") in affected(report)
    assert affected(run_verify(history, full=True)) == affected(report)
    history.check_reads(affected(report))
    with history.open() as repo, pytest.raises(ChunkMissing, match=loc.pack):
        repo.chunks.load(cid)


def test_deleted_chunk_rows(history: History) -> None:
    data_id = history.block_chunk(1, "disk1", 3)
    node_id = leaf_node(history, 2, "disk0", 5)
    data_loc = history.location(data_id)
    want = history.ranges_using(data_id)
    for key, ranges in history.ranges_using(node_id).items():
        want[key] = sorted(want.get(key, []) + ranges)
    with sqlite3.connect(history.path / "index.db") as db:
        db.executemany("DELETE FROM chunk WHERE id = ?", [(data_id,), (node_id,)])
    db.close()

    report = run_verify(history, full=False)
    by_id = {c.id: c for c in report.damaged}
    assert set(by_id) == {data_id.hex(), node_id.hex()}
    data = by_id[data_id.hex()]
    assert (data.kind, data.pack, data.offset) == ("data", data_loc.pack, data_loc.offset)
    assert "not in the index" in data.reason and "rebuild-index" in data.reason
    assert by_id[node_id.hex()].kind == "node"
    assert "not in the index" in by_id[node_id.hex()].reason
    assert affected(report) == want
    history.check_reads(want)


def test_index_row_disagreeing_with_pack_trailer(history: History) -> None:
    cid = history.block_chunk(4, "disk0", 0)
    with sqlite3.connect(history.path / "index.db") as db:
        db.execute('UPDATE chunk SET "offset" = "offset" + 1 WHERE id = ?', (cid,))
    db.close()

    report = run_verify(history, full=False)
    assert [c.id for c in report.damaged] == [cid.hex()]
    assert "disagrees with the pack trailer" in report.damaged[0].reason
    history.check_reads(affected(report))


def test_damaged_pack_trailer_is_a_problem_not_chunk_damage(history: History) -> None:
    with history.open() as repo:
        pack = repo.index.packs()[0]
    flip_byte(history.pack_path(pack.name), pack.size - FOOTER_SIZE - 3)

    report = run_verify(history, full=True)
    assert not report.ok
    assert not report.damaged
    assert [(p.subject, p.name) for p in report.problems] == [("pack", pack.name)]
    assert "damaged index" in report.problems[0].reason
    history.check_reads({})


def test_damaged_manifest(history: History) -> None:
    with history.open() as repo:
        backup = repo.backup(3)
    flip_byte(history.path / "backups" / backup.uuid, 60)

    report = run_verify(history, full=False)
    assert not report.ok
    assert not report.damaged
    assert [(p.subject, p.name) for p in report.problems] == [("manifest", backup.uuid)]
    assert "damaged" in report.problems[0].reason
    history.check_reads({})


def test_missing_manifest(history: History) -> None:
    with history.open() as repo:
        backup = repo.backup(2)
    (history.path / "backups" / backup.uuid).unlink()

    report = run_verify(history, full=False)
    assert [(p.subject, p.name) for p in report.problems] == [("manifest", backup.uuid)]
    assert "no manifest" in report.problems[0].reason


def test_damage_in_encrypted_repository(make_history) -> None:  # type: ignore[no-untyped-def]
    h: History = make_history(encryption="repokey")
    cid = h.block_chunk(1, "disk0", 0)
    loc = h.location(cid)
    want = h.ranges_using(cid)
    flip_byte(h.pack_path(loc.pack), loc.offset + 20)

    report = run_verify(h, full=True)
    assert [c.id for c in report.damaged] == [cid.hex()]
    assert affected(report) == want
    h.check_reads(want)


def test_damage_raises_never_wrong_bytes(history: History) -> None:
    cid = history.block_chunk(1, "disk0", 0)
    loc = history.location(cid)
    flip_byte(history.pack_path(loc.pack), loc.offset + 5)
    with history.open() as repo:
        reader = repo.open_image(repo.image(repo.backup(1), "disk0"))
        with pytest.raises(DamageError):
            reader.read()
        reader.close()


def test_backup_rows_dropped_from_the_index(history: History) -> None:
    with history.open() as repo:
        backup = repo.backup(4)
    with sqlite3.connect(history.path / "index.db") as db:
        db.execute("DELETE FROM image WHERE backup_id = 4")
        db.execute("DELETE FROM backup WHERE id = 4")
    db.close()

    report = run_verify(history, full=False)
    assert not report.damaged
    assert [(p.subject, p.name) for p in report.problems] == [("index", backup.uuid)]
