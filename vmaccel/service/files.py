"""What changed between restore points, file by file, from the file catalog alone.

No image is opened and no data is read: both use cases compare the listings the file
catalog keeps per volume (:mod:`vmaccel.catalog.filediff`). Volumes are matched by disk and
volume name; a volume whose listing is missing on either side is reported as such, never as
an empty difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.filediff import (
    FileChange,
    PathEvent,
    VolumeDiff,
    diff_listings,
    path_history,
)
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.index.records import VolumeListing
from vmaccel.catalog.repository import Repository
from vmaccel.service.backups import resolve_backup
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import BackupNotFound, UsageError

__all__ = ["FileChange", "FileDiffReport", "FileHistoryReport", "diff_files", "file_history"]


@dataclass(frozen=True)
class RestorePoint:
    """A backup as a diff names it; ``started`` in UNIX seconds."""

    backup_id: int
    vm: str
    started: float

    @classmethod
    def of(cls, b: BackupRow) -> RestorePoint:
        return cls(b.id, b.vm, b.started)

    def to_dict(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "vm": self.vm, "started": self.started}


@dataclass(frozen=True)
class FileDiffReport:
    """``files diff``: the volumes of restore point ``a`` against those of the later ``b``,
    limited to ``path`` and below when given. ``to_dict`` is documented in docs/json.md."""

    a: RestorePoint
    b: RestorePoint
    path: str | None
    volumes: tuple[VolumeDiff, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "path": self.path,
            "volumes": [v.to_dict() for v in self.volumes],
        }


@dataclass(frozen=True)
class FileHistoryReport:
    """``files history``: where ``path`` changed (of VM ``vm`` or all), newest first."""

    path: str
    vm: str | None
    events: tuple[PathEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "vm": self.vm, "events": [e.to_dict() for e in self.events]}


def normal_path(path: str) -> str:
    """``path`` as the catalog spells it: absolute, no trailing ``/`` (but the root)."""
    return "/" + path.strip("/") if path.strip("/") else "/"


def diff_files(
    ctx: Context, a: str, b: str | None = None, vm: str | None = None, path: str | None = None
) -> FileDiffReport:
    """The differences from backup ``a`` to backup ``b`` (any backup references; ``b``
    defaults to the next complete backup of ``a``'s VM). With ``vm``, references may be
    given as ``@latest``, ``@TIME`` (that VM's) and must name backups of that VM.
    Raises :class:`BackupNotFound` when ``a`` is the VM's newest backup and ``b`` is None."""
    prefix = normal_path(path) if path else None
    with ctx.open() as r:
        older = _resolve(r, a, vm)
        newer = _resolve(r, b, vm) if b is not None else _next_backup(r, older)
        volumes = tuple(_diff_backups(r, older, newer, prefix))
    return FileDiffReport(RestorePoint.of(older), RestorePoint.of(newer), prefix, volumes)


def file_history(ctx: Context, path: str, vm: str | None = None) -> FileHistoryReport:
    """Every restore point (of ``vm``, or every VM) where ``path`` appeared, changed or
    disappeared on a catalogued volume, newest first."""
    where = normal_path(path)
    with ctx.open() as r:
        if vm is not None and not r.backups(vm):
            raise BackupNotFound(f"VM {vm!r} has no complete backups in {r.path}")
        events = path_history(r.files.path_versions(where, vm))
    return FileHistoryReport(where, vm, tuple(events))


def _resolve(r: Repository, ref: str, vm: str | None) -> BackupRow:
    if vm is not None and ref.strip().startswith("@"):
        ref = vm + ref.strip()
    found = resolve_backup(r, ref)
    if vm is not None and found.vm != vm:
        raise UsageError(f"backup {ref} is one of VM {found.vm!r}, not of {vm!r}")
    return found


def _next_backup(r: Repository, older: BackupRow) -> BackupRow:
    later = [b for b in r.backups(older.vm) if (b.started, b.id) > (older.started, older.id)]
    if not later:
        raise BackupNotFound(
            f"backup {older.id} is the newest complete backup of {older.vm} in {r.path}: "
            "name the backup to compare it with"
        )
    return min(later, key=lambda b: (b.started, b.id))


def _diff_backups(
    r: Repository, older: BackupRow, newer: BackupRow, prefix: str | None
) -> Iterator[VolumeDiff]:
    images = {b.id: {i.disk: i for i in r.images(b)} for b in (older, newer)}
    for disk in sorted(images[older.id].keys() | images[newer.id].keys()):
        sides = [(b, images[b.id].get(disk)) for b in (older, newer)]
        vols = [{v.volume: v for v in _volumes(r, img)} for _, img in sides]
        if not vols[0] and not vols[1]:
            why = "; ".join(_missing(b, img, disk, None) for b, img in sides)
            yield VolumeDiff(disk, "", None, "no_listing", reason=why)
        for volume in sorted(vols[0].keys() | vols[1].keys()):
            va, vb = vols[0].get(volume), vols[1].get(volume)
            either = vb or va
            fstype = either.fstype if either is not None else None
            if va is None or vb is None:
                (b, img) = sides[0] if va is None else sides[1]
                reason = _missing(b, img, disk, volume)
                yield VolumeDiff(disk, volume, fstype, "no_listing", reason=reason)
            elif va.listing_id == vb.listing_id:
                yield VolumeDiff(disk, volume, fstype, "identical")
            else:
                changes = diff_listings(
                    r.files.listing_entries(va.listing_id, prefix),
                    r.files.listing_entries(vb.listing_id, prefix),
                )
                yield VolumeDiff(disk, volume, fstype, "compared", tuple(changes))


def _volumes(r: Repository, img: ImageRow | None) -> list[VolumeListing]:
    return r.files.image_volumes(img.id) if img is not None else []


def _missing(b: BackupRow, img: ImageRow | None, disk: str, volume: str | None) -> str:
    """Why backup ``b`` has no listing for ``volume`` of ``disk`` (any volume when None)."""
    what = f"volume {volume} of {disk}" if volume else f"the volumes of {disk}"
    if img is None:
        return f"backup {b.id} has no disk {disk}"
    if not b.meta.catalogued:
        return (
            f"backup {b.id} has no file catalog yet (the next backup of {b.vm} builds it): "
            f"{what} cannot be compared"
        )
    if volume is None:
        return f"backup {b.id}: no filesystem of {disk} is catalogued"
    return f"backup {b.id} has no listing of {what} (no readable filesystem there)"
