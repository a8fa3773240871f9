"""Naming a backup on the command line: ``ID``, ``UUID``, ``VM@latest`` or ``VM@<time>``.

``<time>`` is either a backup directory name as the mount shows it
(``2026-05-01T10:00:00Z``, or ``..._<id>`` for a second backup within that second) or any
ISO 8601 time (``2026-05-01``, ``2026-05-01T12:00``, ``...+02:00``; no zone means UTC). A time
selects the newest backup of that VM started at or before it, which is how one asks for
"the state before Tuesday".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.repository import Repository
from vmaccel.fusemount.repoview import backup_info
from vmaccel.fusemount.tree import LATEST, backup_dir_names, iso_time
from vmaccel.vocabulary.errors import BackupNotFound, UsageError


def resolve_backup(repo: Repository, ref: str) -> BackupRow:
    """The complete backup ``ref`` names in ``repo``; raises :class:`BackupNotFound`."""
    vm, sep, when = ref.rpartition("@")
    if not sep:
        return repo.backup(ref.strip())
    if not vm or not when:
        raise UsageError(f"{ref!r} is not a backup reference (ID, VM@latest or VM@<time>)")
    backups = repo.backups(vm=vm)
    if not backups:
        raise BackupNotFound(f"VM {vm!r} has no complete backups in {repo.path}")
    return select_backup(backups, when)


def select_backup(backups: Sequence[BackupRow], when: str) -> BackupRow:
    """Pick from one VM's backups (any order) by ``latest``, directory name or time."""
    ordered = sorted(backups, key=lambda b: (b.started, b.id))
    if when == LATEST:
        return ordered[-1]
    by_id = {b.id: b for b in ordered}
    named = backup_dir_names([backup_info(b) for b in ordered])
    if when in named:
        return by_id[named[when].id]
    limit = parse_time(when).timestamp()
    before = [b for b in ordered if int(b.started) <= limit]
    if not before:
        raise BackupNotFound(
            f"no backup of {ordered[0].vm} at or before {when} "
            f"(the oldest started {iso_time(ordered[0].started)})"
        )
    return before[-1]


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r} is neither 'latest', a backup directory name, nor an ISO 8601 time "
            "(for example 2026-05-01T10:00:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
