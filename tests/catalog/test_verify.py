"""verify on healthy repositories, its report, and the `vmaccel verify` command."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable

import pytest

from tests.catalog.conftest import PASSPHRASE, History, flip_byte, small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.verify import verify
from vmaccel.cli.app import main


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_undamaged_repository_verifies_ok(history: History, full: bool) -> None:
    with history.open() as repo:
        report = verify(repo, full=full, workers=2)
        rows = sum(len(repo.index.chunks_in_pack(p.id)) for p in repo.index.packs())
        packs = len(repo.index.packs())
    assert report.ok, report.summary()
    assert (report.damaged, report.affected, report.problems, report.info) == ((), (), (), ())
    assert (report.backups, report.images, report.packs, report.chunks) == (5, 8, packs, rows)
    assert report.nodes > 8
    assert report.chunks_read == (rows if full else 0)
    assert report.summary()[-1] == "ok: no damage found"
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_empty_repository_verifies_ok(tmp_path) -> None:  # type: ignore[no-untyped-def]
    Repository.init(tmp_path / "r", small_config())
    with Repository.open(tmp_path / "r") as repo:
        report = verify(repo, full=True)
    assert report.ok and report.packs == 0 and report.backups == 0


def test_encrypted_repository_verifies_ok(make_history: Callable[..., History]) -> None:
    h = make_history(encryption="repokey")
    with h.open() as repo:
        assert verify(repo, full=True).ok


def test_orphan_and_temporary_packs_are_info_not_damage(history: History) -> None:
    with history.open() as repo:
        pack = repo.index.packs()[0].name
    orphan = "ff" + pack[2:]
    (history.path / "packs" / "ff").mkdir(exist_ok=True)
    shutil.copy(history.pack_path(pack), history.path / "packs" / "ff" / orphan)
    (history.path / "packs" / "tmp").mkdir(exist_ok=True)
    (history.path / "packs" / "tmp" / "half-written").write_bytes(b"VMAPACK")

    with history.open() as repo:
        report = verify(repo, full=True)
    assert report.ok
    assert [(i.subject, i.name) for i in report.info] == [
        ("pack", orphan),
        ("pack", "tmp/half-written"),
    ]
    assert "garbage for gc" in report.info[0].reason


def test_verify_never_modifies_the_repository(history: History) -> None:
    before = {p: p.read_bytes() for p in history.path.rglob("*") if p.is_file()}
    with history.open() as repo:
        verify(repo, full=True)
    after = {p: p.read_bytes() for p in history.path.rglob("*") if p.is_file()}
    packs = {p: b for p, b in before.items() if "packs" in p.parts}
    assert {p: after[p] for p in packs} == packs
    assert {p.name for p in after} >= {p.name for p in before}


def test_report_names_damage_in_summary_and_dict(history: History) -> None:
    cid = history.block_chunk(1, "disk0", 0)
    loc = history.location(cid)
    flip_byte(history.pack_path(loc.pack), loc.offset + 1)
    with history.open() as repo:
        report = verify(repo, full=True)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["ok"] is False
    assert doc["damaged"][0]["id"] == cid.hex()
    assert doc["damaged"][0]["used_by"][0]["ranges"][0] == {"offset": 0, "length": 4096}
    text = "\n".join(report.summary())
    assert cid.hex() in text and loc.pack in text and "vm1/disk0" in text
    assert report.summary()[-1].startswith("NOT OK")


def test_cli_verify_ok(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--repo", str(history.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["backups"] == 5


def test_cli_verify_reports_damage(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    cid = history.block_chunk(3, "disk1", 0)
    loc = history.location(cid)
    flip_byte(history.pack_path(loc.pack), loc.offset + 2)

    assert main(["verify", "--repo", str(history.path), "--json"]) == 0  # quick: data unread
    capsys.readouterr()
    code = main(["verify", "--repo", str(history.path), "--full", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code != 0
    assert doc["ok"] is False
    assert [d["id"] for d in doc["damaged"]] == [cid.hex()]
    assert {(u["backup_id"], u["disk"]) for u in doc["damaged"][0]["used_by"]} >= {(3, "disk1")}

    code = main(["verify", "--repo", str(history.path), "--full"])
    out = capsys.readouterr().out
    assert code != 0 and cid.hex() in out


def test_cli_verify_encrypted(
    make_history: Callable[..., History],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_history(encryption="repokey")
    monkeypatch.setenv("VMACCEL_PASSPHRASE", PASSPHRASE)
    assert main(["verify", "--repo", str(h.path), "--full", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
