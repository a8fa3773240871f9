"""vmaccel.service.backups: every backup reference form resolved in a real repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fusemount.conftest import MakeRepo, backup_image, make_repo
from vmaccel.catalog import Repository
from vmaccel.service.backups import list_backups, resolve_backup, show_backup
from vmaccel.service.context import Context
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.errors import BackupNotFound, UsageError

__all__ = ["make_repo"]  # fixture


def test_every_form_resolves(make_repo: MakeRepo, tmp_path: Path) -> None:
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
        assert resolve_backup(r, "web@prod@-1").id == first.id
        assert resolve_backup(r, f"web@prod@{dir_time(first.started)}").id == first.id
        assert resolve_backup(r, "db@latest").id == other.id
        with pytest.raises(BackupNotFound, match="'nope' has no complete backups"):
            resolve_backup(r, "nope@latest")
        with pytest.raises(BackupNotFound):
            resolve_backup(r, "999")
        with pytest.raises(UsageError):
            resolve_backup(r, "@latest")
    ctx = Context(repo_path)
    assert [b.backup.id for b in list_backups(ctx, "web@prod")] == [first.id, second.id]
    shown = show_backup(ctx, "web@prod@latest")
    assert shown.backup.id == second.id
    assert [i.disk for i in shown.images] == ["disk0"]
    assert "root" not in shown.to_dict()["images"][0]
