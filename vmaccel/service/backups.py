"""Restore points: list and show them; resolve a backup reference and a disk name.

Every use case that takes a backup calls :func:`resolve_backup`, so each accepts every form
of :mod:`vmaccel.vocabulary.backupref`; every one that takes a disk calls :func:`resolve_disk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.disks import find_image
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.service.context import Context
from vmaccel.vocabulary.backupref import BackupRef, dir_time
from vmaccel.vocabulary.errors import BackupNotFound

# The block map's shape is storage internals, never part of a report (docs/json.md).
_INTERNAL = frozenset({"root", "fanout", "depth"})


@dataclass(frozen=True)
class BackupDetail:
    """One complete backup and its images. ``to_dict`` is the ``backup`` of docs/json.md."""

    backup: BackupRow
    images: tuple[ImageRow, ...]

    @property
    def time(self) -> str:
        """The start time as the mount names it (UTC, ISO 8601)."""
        return dir_time(self.backup.started)

    @property
    def size(self) -> int:
        """Bytes of all disks (logical)."""
        return sum(i.size for i in self.images)

    @property
    def stored_bytes(self) -> int:
        """Bytes this backup added to the repository (after dedup and compression)."""
        return sum(i.stats.stored_bytes for i in self.images)

    def to_dict(self) -> dict[str, Any]:
        doc = self.backup.to_json()
        doc["time"] = self.time
        doc["images"] = [
            {k: v for k, v in i.to_json().items() if k not in _INTERNAL} for i in self.images
        ]
        return doc


def resolve_backup(repo: Repository, ref: str) -> BackupRow:
    """The complete backup ``ref`` names (any form of :class:`BackupRef`).

    Raises :class:`UsageError` for text that is no reference, :class:`BackupNotFound` when
    nothing matches."""
    parsed = BackupRef.parse(ref)
    if parsed.uuid is not None:
        return repo.backup(parsed.uuid)
    if parsed.id is not None:
        return repo.backup(ref.strip())
    try:
        return parsed.select(repo.backups(vm=parsed.vm))
    except BackupNotFound as exc:
        raise BackupNotFound(f"{exc} in {repo.path}") from None


def resolve_disk(repo: Repository, backup: BackupRow, disk: str) -> ImageRow:
    """The image of ``backup`` that ``disk`` names in any form of
    :mod:`vmaccel.vocabulary.disknames` (name, key, ``disk-KEY``, label, unit); raises
    :class:`ImageNotFound` listing the choices, :class:`UsageError` when it names two."""
    return find_image(repo.images(backup), disk, f"backup {backup.id} of {backup.vm}")


def list_backups(ctx: Context, vm: str | None = None) -> list[BackupDetail]:
    """Complete backups (of ``vm``, or all), oldest first."""
    with ctx.open() as r:
        return [BackupDetail(b, tuple(r.images(b))) for b in r.backups(vm)]


def show_backup(ctx: Context, ref: str) -> BackupDetail:
    """The backup ``ref`` names, with its images."""
    with ctx.open() as r:
        b = resolve_backup(r, ref)
        return BackupDetail(b, tuple(r.images(b)))
