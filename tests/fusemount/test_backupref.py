"""vmaccel.fusemount.backupref: ID, UUID, VM@latest, VM@<directory name> and VM@<time>."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fusemount.conftest import MakeRepo, backup_image
from vmaccel.catalog import Repository
from vmaccel.catalog.index import BackupRow
from vmaccel.fusemount.backupref import resolve_backup, select_backup
from vmaccel.fusemount.tree import iso_time
from vmaccel.vocabulary.errors import BackupNotFound, UsageError


def row(i: int, started: float, vm: str = "v") -> BackupRow:
    return BackupRow(i, f"u{i}", vm, started, started + 1, "complete", {})


ROWS = [row(1, 1_000_000_000.5), row(2, 1_000_000_000.9), row(3, 1_000_086_400.0)]


@pytest.mark.parametrize(
    ("when", "expect"),
    [
        ("latest", 3),
        ("2001-09-09T01:46:40Z", 1),  # a directory name: the first of that second
        ("2001-09-09T01:46:40Z_2", 2),  # the second one's name
        ("2001-09-09T01:46:41Z", 2),  # a time: newest at or before
        ("2001-09-10", 2),  # a date is its midnight (UTC)
        ("2001-09-10T03:46:40+02:00", 3),  # zones are honoured
        ("2030-01-01T00:00", 3),
    ],
)
def test_select_backup(when: str, expect: int) -> None:
    assert select_backup(list(reversed(ROWS)), when).id == expect


def test_select_backup_errors() -> None:
    with pytest.raises(BackupNotFound, match="at or before"):
        select_backup(ROWS, "1999-01-01")
    with pytest.raises(UsageError, match="ISO 8601"):
        select_backup(ROWS, "yesterday")


def test_resolve_backup_in_a_repository(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo_path = make_repo()
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"x" * 65536)
    first = backup_image(repo_path, "web@prod", {"disk0": disk})
    second = backup_image(repo_path, "web@prod", {"disk0": disk})
    other = backup_image(repo_path, "db", {"disk0": disk})
    with Repository.open(repo_path) as r:
        assert resolve_backup(r, str(first.id)).id == first.id
        assert resolve_backup(r, first.uuid).id == first.id
        assert resolve_backup(r, "web@prod@latest").id == second.id  # '@' in a VM name
        assert resolve_backup(r, f"web@prod@{iso_time(first.started)}").id == first.id
        assert resolve_backup(r, "db@latest").id == other.id
        with pytest.raises(BackupNotFound, match="'nope' has no complete backups"):
            resolve_backup(r, "nope@latest")
        with pytest.raises(BackupNotFound):
            resolve_backup(r, "999")
        with pytest.raises(UsageError):
            resolve_backup(r, "@latest")
