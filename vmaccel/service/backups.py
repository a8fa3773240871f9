"""Restore points: list, show and acknowledge them; resolve a backup reference and a disk name.

Every backup carries the anomaly verdict computed when it was taken
(:mod:`vmaccel.catalog.anomaly`). A *clean* restore point is one before the VM's first
backup whose verdict is suspicious and not acknowledged; acknowledging (``ack``) says a
suspicious verdict was a false alarm: the backup counts as clean and prune may remove it.

Every use case that takes a backup calls :func:`resolve_backup`, so each accepts every form
of :mod:`vmaccel.vocabulary.backupref`; every one that takes a disk calls :func:`resolve_disk`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from vmaccel.catalog.anomalypatterns import AcceptedPattern
from vmaccel.catalog.disks import find_image
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.service.anomaly import accept_pattern
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
    pattern: AcceptedPattern | None = None  # the pattern ``ack --pattern`` accepted

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
        verdict = self.backup.meta.verdict
        doc["verdict"] = verdict.to_json() if verdict is not None else None
        doc["acked"] = self.backup.meta.acked
        boot = self.backup.meta.boot
        doc["boot"] = boot.to_json() if boot is not None else None
        doc["images"] = [
            {k: v for k, v in i.to_json().items() if k not in _INTERNAL} for i in self.images
        ]
        if self.pattern is not None:
            doc["pattern"] = self.pattern.to_json()
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


def list_backups(ctx: Context, vm: str | None = None, clean: bool = False) -> list[BackupDetail]:
    """Complete backups (of ``vm``, or all), oldest first; with ``clean`` only each VM's
    restore points before its first suspicious, unacknowledged backup."""
    with ctx.open() as r:
        found = r.backups(vm)
        if clean:
            found = clean_points(found)
        return [BackupDetail(b, tuple(r.images(b))) for b in found]


def clean_points(found: list[BackupRow]) -> list[BackupRow]:
    """Of ``found`` (oldest first), each VM's backups before its first protected one
    (suspicious and not acknowledged: ``BackupMeta.protected``)."""
    tainted: set[str] = set()
    out = []
    for b in sorted(found, key=lambda b: (b.started, b.id)):
        if b.meta.protected:
            tainted.add(b.vm)
        if b.vm not in tainted:
            out.append(b)
    return out


def ack_backup(ctx: Context, ref: str, pattern: bool = False) -> BackupDetail:
    """Acknowledge the verdict of the backup ``ref`` names: record the time (UTC, ISO 8601)
    in its meta, so prune no longer keeps it for being suspicious and ``--clean`` counts it
    as clean. Acknowledging again keeps the first time. With ``pattern``, also accept what
    fired as a pattern of the VM (:func:`vmaccel.service.anomaly.accept_pattern`; checked
    first, so a backup with nothing to accept is not acknowledged either)."""
    with ctx.open(lease="backup") as r:
        b = resolve_backup(r, ref)
        accepted = accept_pattern(r, b) if pattern else None
        if not b.meta.acked:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            b = r.set_backup_meta(b, replace(b.meta, acked=now))
        return BackupDetail(b, tuple(r.images(b)), accepted)


def show_backup(ctx: Context, ref: str) -> BackupDetail:
    """The backup ``ref`` names, with its images."""
    with ctx.open() as r:
        b = resolve_backup(r, ref)
        return BackupDetail(b, tuple(r.images(b)))
