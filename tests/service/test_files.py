"""vmaccel.service.files: which backups and volumes a file diff compares, and what it says
when a side has no file catalog (never a silent empty diff)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fusemount.conftest import MakeRepo, backup_image, make_repo
from vmaccel.catalog import Repository
from vmaccel.catalog.filecatalog import attach_listing, store_listing
from vmaccel.catalog.index.records import FileRecord
from vmaccel.service.context import Context
from vmaccel.service.files import diff_files, file_history
from vmaccel.vocabulary.errors import BackupNotFound, UsageError

__all__ = ["make_repo"]  # fixture

T0 = 1_700_000_000 * 10**9
V1 = [FileRecord("/etc", "dir", 4096, T0, 2, 0o755), FileRecord("/etc/a", "file", 1, T0, 9, 0)]
V2 = [FileRecord("/etc", "dir", 4096, T0, 2, 0o755), FileRecord("/etc/b", "file", 1, T0, 9, 0)]


def _attach(repo_path: Path, backup_id: int, volume: str, records: list[FileRecord]) -> None:
    with Repository.open(repo_path, write=True) as r, r.files.writing():
        image = r.image(r.backup(backup_id), "disk0")
        attach_listing(r.files, image.id, volume, "ext4", store_listing(r.files, records))


@pytest.fixture
def backups(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, list[int]]:
    repo_path = make_repo()
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"x" * 65536)
    ids = [backup_image(repo_path, "web", {"disk0": disk}).id for _ in range(3)]
    backup_image(repo_path, "db", {"disk0": disk})
    return repo_path, ids


def test_volumes_without_listing_are_reported_not_silently_empty(
    backups: tuple[Path, list[int]],
) -> None:
    repo_path, (first, second, third) = backups
    ctx = Context(repo_path)
    bare = diff_files(ctx, str(first))
    assert (bare.a.backup_id, bare.b.backup_id) == (first, second)  # B: the next one
    [vol] = bare.volumes
    assert (vol.disk, vol.volume, vol.status) == ("disk0", "", "no_listing")
    assert vol.reason and f"backup {first}" in vol.reason

    _attach(repo_path, first, "p1", V1)
    _attach(repo_path, second, "p1", V1)
    _attach(repo_path, third, "p1", V2)
    _attach(repo_path, first, "p2", V1)
    statuses = {v.volume: (v.status, v.reason) for v in diff_files(ctx, str(first)).volumes}
    assert statuses["p1"] == ("identical", None)
    assert statuses["p2"][0] == "no_listing" and f"backup {second}" in str(statuses["p2"][1])

    later = diff_files(ctx, "@-1", "@latest", vm="web", path="/etc/")
    [p1] = later.volumes
    assert later.path == "/etc" and p1.status == "compared"
    assert [(c.change, c.path, c.old_path) for c in p1.changes] == [("renamed", "/etc/b", "/etc/a")]
    assert p1.to_dict()["counts"] == {
        "added": 0,
        "removed": 0,
        "modified": 0,
        "type_changed": 0,
        "renamed": 1,
    }


def test_references_are_checked(backups: tuple[Path, list[int]]) -> None:
    repo_path, (_, _, third) = backups
    ctx = Context(repo_path)
    with pytest.raises(BackupNotFound, match="newest complete backup of web"):
        diff_files(ctx, str(third))
    with pytest.raises(UsageError, match="not of 'web'"):
        diff_files(ctx, "db@latest", vm="web")
    with pytest.raises(BackupNotFound, match="'nope' has no complete backups"):
        file_history(ctx, "/etc/a", vm="nope")


def test_history_of_a_renamed_file(backups: tuple[Path, list[int]]) -> None:
    repo_path, (first, second, third) = backups
    for backup, records in ((first, V1), (second, V1), (third, V2)):
        _attach(repo_path, backup, "p1", records)
    report = file_history(Context(repo_path), "etc/a/", vm="web")
    assert report.path == "/etc/a"
    assert [(e.backup_id, e.change) for e in report.events] == [
        (third, "disappeared"),
        (first, "appeared"),
    ]
