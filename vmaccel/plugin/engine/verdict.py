"""The verdict step at the end of a backup: gather the signals, judge, store the verdict.

Runs after the file catalog (the file signals need it) and reads only the index: the
image stats of the backup and of the VM's earlier backups, and the file listings of the
backup and of the previous one, the allocation summaries of the backup's images and of the
previous backup's, and the VM's accepted patterns. Earlier backups whose own verdict is
suspicious and not acknowledged are left out of the baseline (an attack must not become the
norm). The thresholds are the repository's ``anomaly.toml`` for the VM
(:mod:`vmaccel.catalog.anomalyconfig`), read at every verdict.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import replace

from vmaccel.catalog.anomaly import (
    DiskSignals,
    Thresholds,
    Verdict,
    VolumeChanges,
    judge,
)
from vmaccel.catalog.anomalyconfig import load_thresholds
from vmaccel.catalog.anomalypatterns import AcceptedPattern, acceptor, decode_findings
from vmaccel.catalog.filediff import FileChange, diff_listings
from vmaccel.catalog.index import BackupRow, FileRecord, ImageRow
from vmaccel.catalog.index.meta import VolumeAllocation
from vmaccel.catalog.repository import Repository
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)

BASELINE_RUNS = 30  # newest earlier backups of the VM the baseline is taken from


def verdict_step(repo: Repository, backup_id: int) -> list[str]:
    """The verdict step of a run: :func:`assess_backup`, its outcome as warnings for the
    run's report (one line when the backup is unusual or suspicious; one when the verdict
    could not be computed: the restore point is complete either way)."""
    try:
        verdict = assess_backup(repo, repo.backup(backup_id))
    except VmaccelError as exc:
        return [f"backup {backup_id}: no anomaly verdict: {exc}"]
    if verdict.level == "normal":
        return []
    return [f"backup {backup_id} is {verdict.level}: {'; '.join(verdict.reasons)}"]


def assess_backup(
    repo: Repository, backup: BackupRow, thresholds: Thresholds | None = None
) -> Verdict:
    """Judge ``backup`` (see :mod:`vmaccel.catalog.anomaly`) and store the verdict in its
    meta; returns it. ``thresholds`` default to the repository's for the VM; a malformed
    ``anomaly.toml`` raises UsageError (the verdict step reports it as a warning)."""
    t = thresholds or load_thresholds(repo.path, backup.vm)
    earlier = [b for b in repo.backups(backup.vm) if b.id < backup.id]
    previous = earlier[-1] if earlier else None
    baseline = [b for b in earlier if not b.meta.protected][-BASELINE_RUNS:]
    history: dict[str, list[ImageRow]] = {}
    for b in baseline:
        for img in repo.images(b):
            history.setdefault(img.disk, []).append(img)
    before = {i.disk: i for i in repo.images(previous)} if previous else {}
    disks = [
        DiskSignals(
            img.disk,
            img.stats,
            tuple(h.stats for h in history.get(img.disk, [])),
            tuple(volume_changes(repo, before.get(img.disk), img, t)),
            img.meta.allocation,
            _allocation(before.get(img.disk)),
        )
        for img in repo.images(backup)
    ]
    accept = acceptor(accepted_patterns(repo, backup.vm), t.pattern_tolerance)
    verdict = judge(disks, len(earlier), t, accept)
    repo.set_backup_meta(backup, replace(backup.meta, verdict=verdict))
    logger.info("verdict of backup %d: %s %s", backup.id, verdict.level, list(verdict.reasons))
    return verdict


def accepted_patterns(repo: Repository, vm: str) -> list[AcceptedPattern]:
    """The accepted patterns of ``vm``, oldest first."""
    return [
        AcceptedPattern(p.id, p.vm, p.backup_id, p.created, decode_findings(p.findings))
        for p in repo.index.patterns(vm)
    ]


def _allocation(img: ImageRow | None) -> tuple[VolumeAllocation, ...] | None:
    return img.meta.allocation if img is not None else None


def volume_changes(
    repo: Repository, old: ImageRow | None, new: ImageRow, t: Thresholds
) -> Iterator[VolumeChanges]:
    """The file changes of every volume catalogued in both ``old`` and ``new``."""
    if old is None:
        return
    before = {v.volume: v for v in repo.files.image_volumes(old.id)}
    for vol in repo.files.image_volumes(new.id):
        prior = before.get(vol.volume)
        if prior is None:
            continue
        if prior.listing_id == vol.listing_id:
            yield VolumeChanges(vol.volume, 0, 0, 0, 0, 0, 0, (), ())
            continue
        seen = _Seen()
        changes = diff_listings(
            seen.count(repo.files.listing_entries(prior.listing_id, None)),
            repo.files.listing_entries(vol.listing_id, None),
        )
        yield _summarise(vol.volume, changes, seen, t)


def _summarise(
    volume: str, changes: Iterable[FileChange], seen: _Seen, t: Thresholds
) -> VolumeChanges:
    """Count ``changes`` of everything but directories (whose mtimes move with every name
    added or removed below them)."""
    counts = dict.fromkeys(("modified", "renamed", "removed", "added"), 0)
    new_ext: dict[str, int] = {}
    notes: list[str] = []
    for c in changes:
        entry = c.new or c.old
        if entry is None or entry.kind == "dir":
            continue
        if c.change in counts:
            counts[c.change] += 1
        if c.change in ("added", "renamed") and entry.kind == "file":
            name = posixpath.basename(c.path).lower()
            ext = extension(name)
            if ext and ext not in seen.extensions:
                new_ext[ext] = new_ext.get(ext, 0) + 1
            if c.change == "added" and name in t.ransom_notes:
                notes.append(c.path)
    return VolumeChanges(
        volume,
        seen.files,
        counts["modified"],
        counts["renamed"],
        counts["removed"],
        counts["added"],
        sum(new_ext.values()),
        tuple(sorted(new_ext, key=lambda e: -new_ext[e])),
        tuple(notes),
    )


def extension(name: str) -> str:
    """The lower-case extension of a base name (``""`` for none or a dot file)."""
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem and len(ext) <= 16 else ""


class _Seen:
    """Counts the files of a listing, and collects their extensions, as it streams by."""

    def __init__(self) -> None:
        self.files = 0
        self.extensions: set[str] = set()

    def count(self, records: Iterable[FileRecord]) -> Iterator[FileRecord]:
        for r in records:
            if r.kind == "file":
                self.files += 1
                self.extensions.add(extension(posixpath.basename(r.path)))
            yield r
