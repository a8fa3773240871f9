"""vmaccel.catalog.prune: metadata only, dry runs, interrupted removals, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.catalog.conftest import History
from vmaccel.catalog.prune import finish_deleting, prune
from vmaccel.catalog.retention import RetentionPolicy
from vmaccel.vocabulary.errors import UsageError


def pack_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (path / "packs").glob("[0-9a-f][0-9a-f]/*")}


def test_prune_removes_metadata_only(history: History) -> None:
    packs_before = pack_files(history.path)
    with history.open(write=True) as repo:
        chunks_before = repo.index.chunk_totals()
        report = prune(repo, RetentionPolicy(last=1))
        # vm1 had backups 1, 3, 5 and vm2 2, 4: the newest of each stays
        assert [b.id for b in report.removed] == [3, 1, 2]
        assert {v.vm: [k.backup.id for k in v.kept] for v in report.vms} == {
            "vm1": [5],
            "vm2": [4],
        }
        assert [b.id for b in repo.backups()] == [4, 5]
        assert repo.backups(state=None) == repo.backups()  # no row left behind
        assert repo.index.chunk_totals() == chunks_before
        assert sorted(repo.manifest_names()) == sorted(b.uuid for b in repo.backups())
    assert pack_files(history.path) == packs_before
    for (bid, disk), data in history.expected.items():
        if bid in (4, 5):
            assert history.read(bid, disk) == data


def test_dry_run_changes_nothing(history: History) -> None:
    manifests = sorted(p.name for p in (history.path / "backups").iterdir())
    db = (history.path / "index.db").read_bytes()
    with history.open(write=True) as repo:
        report = prune(repo, RetentionPolicy(last=2), dry_run=True)
        assert report.dry_run
        assert [b.id for b in report.removed] == [1]
        assert len(repo.backups()) == 5
    assert sorted(p.name for p in (history.path / "backups").iterdir()) == manifests
    assert (history.path / "index.db").read_bytes() == db
    assert "would remove 1 backup(s)" in report.summary()[-1]


def test_report_to_dict_is_json_and_names_reasons(history: History) -> None:
    with history.open(write=True) as repo:
        report = prune(repo, RetentionPolicy(last=1, yearly=1))
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["removed_count"] == 3
    kept = doc["vms"]["vm1"]["kept"]
    assert [k["id"] for k in kept] == [5]
    assert kept[0]["reasons"][0] == "last"
    assert kept[0]["reasons"][1].startswith("yearly ")
    assert any("removed" in line for line in report.summary())


def test_interrupted_removal_is_finished_by_the_next_prune(history: History) -> None:
    with history.open(write=True) as repo:
        victim = repo.backup(1)
        with repo.index.writing():  # a prune that died after its first step
            repo.index.set_backup_state(victim.id, "deleting")
        assert [b.id for b in repo.backups()] == [2, 3, 4, 5]
        assert victim.uuid in repo.manifest_names()
        report = prune(repo, RetentionPolicy(last=5))
        assert [b.uuid for b in report.finished] == [victim.uuid]
        assert report.removed == ()
        assert repo.index.backup(victim.id) is None
        assert victim.uuid not in repo.manifest_names()
        assert repo.index.images(victim.id) == []


def test_interrupted_after_manifest_deletion(history: History) -> None:
    with history.open(write=True) as repo:
        victim = repo.backup(2)
        with repo.index.writing():
            repo.index.set_backup_state(victim.id, "deleting")
        repo.delete_manifest(victim)
        assert [b.id for b in finish_deleting(repo)] == [2]
        assert repo.index.backup(2) is None


def test_prune_needs_the_writer_lock(history: History) -> None:
    with history.open() as repo, pytest.raises(UsageError, match="writing"):
        prune(repo, RetentionPolicy(last=1))


def test_refuses_a_policy_that_keeps_nothing(history: History) -> None:
    with pytest.raises(UsageError):
        RetentionPolicy(last=0)
    with history.open(write=True) as repo:
        report = prune(repo, RetentionPolicy(allow_empty=True))
        assert len(report.removed) == 5
        assert repo.backups() == []
        assert repo.manifest_names() == []
