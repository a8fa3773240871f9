"""A missing, empty or zeroed index is never silently replaced (issue: a fresh index reused
backup ids, rebuild-index then dropped a manifest, gc deleted live packs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.catalog.conftest import flip_byte
from tests.catalog.standalone import Cli, random_image, rewrite_blocks
from vmaccel.catalog.codec import ChunkCodec
from vmaccel.catalog.index import BackupRow, ImageRow, Index
from vmaccel.catalog.manifest import decode_manifest
from vmaccel.catalog.rebuild import assign_ids

MiB = 1 << 20
REBUILD_HINT = "run `vmaccel repo rebuild-index`"


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("VMACCEL_REPO", raising=False)
    monkeypatch.delenv("VMACCEL_PASSPHRASE", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


class Repo:
    """A repository with two backups of VM "a" (full, then 3/4 of the blocks rewritten)."""

    def __init__(self, cli: Cli, tmp_path: Path) -> None:
        self.cli, self.tmp = cli, tmp_path
        self.path = tmp_path / "repo"
        self.image = tmp_path / "a.img"
        cli.ok("repo", "init", "--repo", self.path)
        first = random_image(self.image, MiB, 1)
        self.expected = {cli.backup(self.path, self.image, "a"): first}
        second = rewrite_blocks(self.image, first, 4, 2)
        self.expected[cli.backup(self.path, self.image, "a")] = second

    def check_restores(self, expected: dict[int, bytes] | None = None) -> None:
        for bid, data in (expected or self.expected).items():
            assert self.cli.restored(self.path, bid, self.tmp / "out.img") == data, bid

    def manifests(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (self.path / "backups").iterdir()}


@pytest.fixture
def repo(cli: Cli, tmp_path: Path) -> Repo:
    return Repo(cli, tmp_path)


def _missing(path: Path) -> None:
    path.unlink()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _zeroed(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": _missing,
    "empty": _empty,
    "zeroed": _zeroed,
}


def index_state(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_backup_after_the_index_was_deleted_is_refused(repo: Repo, cli: Cli) -> None:
    """The exact case: delete index.db, back up again."""
    (repo.path / "index.db").unlink()
    result = cli(
        "backup", "--repo", repo.path, "--source", f"file:{repo.image}", "--name", "a",
        "--no-file-index",
    )  # fmt: skip
    assert result.rc == 6
    (line,) = result.err.strip().splitlines()
    assert "index" in line and "is missing" in line and REBUILD_HINT in line
    assert not (repo.path / "index.db").exists()
    assert len(repo.manifests()) == 2  # no manifest of a backup numbered 1 again

    report = cli.ok("repo", "rebuild-index", "--repo", repo.path, "--json").json
    assert (report["backups"], report["renumbered"], report["lost"]) == (2, [], [])
    repo.check_restores()
    assert cli.backup(repo.path, repo.image, "a") == 3  # numbering continues


def _commands(repo: Repo) -> list[list[str | Path]]:
    """Every command that opens a repository (rebuild-index aside)."""
    mountpoint = repo.tmp / "mnt"
    mountpoint.mkdir(exist_ok=True)
    image = f"file:{repo.image}"
    return [
        ["backup", "--source", image, "--name", "a", "--no-file-index"],
        ["backup", "--source", image, "--name", "b"],
        ["backups", "list"],
        ["backups", "show", "1"],
        ["restore", "disk", "1", "disk0", "--to", repo.tmp / "restored.img"],
        ["restore", "file", "1", "p1/etc", "--to", repo.tmp / "files"],
        ["files", "find", "*.conf"],
        ["mount", mountpoint],
        ["verify"],
        ["verify", "--full"],
        ["prune", "--keep-last", "1"],
        ["gc", "--grace", "0"],
        ["gc", "--grace", "0", "--dry-run"],
        ["repo", "stats"],
    ]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_command_refuses_a_damaged_index(repo: Repo, cli: Cli, damage: str) -> None:
    index = repo.path / "index.db"
    DAMAGE[damage](index)
    before = index_state(index)
    manifests = repo.manifests()
    for command in _commands(repo):
        result = cli(*command, "--repo", repo.path)
        assert result.rc == 6, (command, result.err, result.out)
        (line,) = result.err.strip().splitlines()
        assert line.startswith("vmaccel: error: the catalog index") and REBUILD_HINT in line
        assert index_state(index) == before, command  # never created, migrated or emptied
        assert repo.manifests() == manifests, command
    assert not (repo.tmp / "restored.img").exists()

    report = cli.ok("repo", "rebuild-index", "--repo", repo.path, "--json").json
    assert (report["backups"], report["complete"]) == (2, True)
    repo.check_restores()
    cli.ok("verify", "--full", "--repo", repo.path)


def test_an_index_without_tables_is_refused(repo: Repo, cli: Cli) -> None:
    """A valid SQLite file with no schema is as empty as a 0-byte one."""
    index = repo.path / "index.db"
    index.unlink()
    Index(index, create=True).close()  # an SQLite database, no tables
    result = cli("verify", "--repo", repo.path)
    assert result.rc == 6 and "is empty (no tables)" in result.err
    cli.ok("repo", "rebuild-index", "--repo", repo.path)
    repo.check_restores()


def _fresh_generation(repo: Repo, cli: Cli) -> dict[int, bytes]:
    """What the old code did: a fresh, empty index, and two more backups written against it
    (ids 1 and 2 again; the second an incremental of the first). Returns their bytes by the
    ids rebuild-index gives them (3 and 4)."""
    index = repo.path / "index.db"
    index.unlink()
    fresh = Index(index, create=True)
    fresh.migrate()
    fresh.close()
    third = random_image(repo.image, MiB, 3)
    assert cli.backup(repo.path, repo.image, "a") == 1
    fourth = rewrite_blocks(repo.image, third, 2, 4)
    assert cli.backup(repo.path, repo.image, "a") == 2
    return {3: third, 4: fourth}


def test_gc_refuses_while_manifests_are_not_indexed(repo: Repo, cli: Cli) -> None:
    _fresh_generation(repo, cli)
    packs = sorted((repo.path / "packs").rglob("*"))
    result = cli("gc", "--repo", repo.path, "--grace", "0")
    assert result.rc == 6
    (line,) = result.err.strip().splitlines()
    assert "2 backup manifest(s)" in line and "run `vmaccel repo rebuild-index` first" in line
    assert sorted((repo.path / "packs").rglob("*")) == packs  # nothing deleted


def test_rebuild_renumbers_clashing_manifests_and_drops_none(repo: Repo, cli: Cli) -> None:
    newer = _fresh_generation(repo, cli)
    rebuilt = cli.ok("repo", "rebuild-index", "--repo", repo.path, "--json").json
    assert (rebuilt["backups"], rebuilt["images"], rebuilt["lost"]) == (4, 4, [])
    assert len(rebuilt["renumbered"]) == 2
    assert all("manifest rewritten" in r for r in rebuilt["renumbered"])
    listed = cli.ok("backups", "list", "--repo", repo.path, "--json").json
    assert [b["id"] for b in listed] == [1, 2, 3, 4]  # the old ids kept, the clashes after
    repo.check_restores({**repo.expected, **newer})

    codec = ChunkCodec(3, None)
    ids = {}
    for name, data in repo.manifests().items():
        doc = decode_manifest(codec, data, name)
        ids[doc["backup"]["id"]] = doc["images"][0]
    assert sorted(ids) == [1, 2, 3, 4]  # the manifests say the new ids too
    assert ids[4]["parent_id"] == ids[3]["id"]  # the incremental follows its own parent

    again = cli.ok("repo", "rebuild-index", "--repo", repo.path, "--json").json
    assert (again["backups"], again["renumbered"]) == (4, [])  # stable from now on
    cli.ok("verify", "--full", "--repo", repo.path)
    cli.ok("gc", "--repo", repo.path, "--grace", "0")
    repo.check_restores({**repo.expected, **newer})


def test_rebuild_exits_non_zero_naming_what_it_could_not_restore(repo: Repo, cli: Cli) -> None:
    newer = _fresh_generation(repo, cli)
    listed = {b["id"]: b["uuid"] for b in cli.ok("backups", "list", "--repo", repo.path,
                                                 "--json").json}  # fmt: skip
    damaged = listed[2]  # of the fresh generation
    flip_byte(repo.path / "backups" / damaged, 60)
    result = cli("repo", "rebuild-index", "--repo", repo.path)
    assert result.rc == 6
    lines = [line for line in result.out.splitlines() if line.startswith("NOT RESTORED")]
    assert len(lines) == 1 and damaged in lines[0]
    assert sum(line.startswith("renumbered") for line in result.out.splitlines()) == 1
    repo.check_restores({**repo.expected, 3: newer[3]})


def test_assign_ids_keeps_the_first_claim_and_follows_parents() -> None:
    def backup(bid: int, started: float) -> BackupRow:
        return BackupRow(bid, f"u{started}", "vm", started, started + 1, "complete")

    def image(iid: int, bid: int, parent: int | None) -> ImageRow:
        return ImageRow(iid, bid, "disk0", 1, 1, 1, 1, None, parent, None)

    docs = [
        (backup(1, 10), [image(1, 1, None)]),
        (backup(2, 20), [image(2, 2, 1)]),
        (backup(1, 30), [image(1, 1, None)]),  # written against a fresh index
        (backup(2, 40), [image(2, 2, 1)]),
        (backup(5, 50), [image(7, 5, 2)]),  # no clash: kept, parent is the latest image 2
    ]
    out = assign_ids(docs)
    assert [(b.id, [(i.id, i.backup_id, i.parent_id) for i in imgs]) for b, imgs in out] == [
        (1, [(1, 1, None)]),
        (2, [(2, 2, 1)]),
        (6, [(8, 6, None)]),
        (7, [(9, 7, 8)]),
        (5, [(7, 5, 9)]),
    ]
