"""``prune``: remove the backups a retention policy does not keep. Metadata only.

Prune never touches chunks or packs (DESIGN invariant 2): the space of a removed backup is
freed by the next ``gc``, which alone decides what nobody references any more.

Write order for each removed backup (crash safe at every step):

1. one transaction sets its state to ``deleting``: from now on it is invisible to readers
   and to ``gc``'s mark phase, and a crash leaves a row that says what to finish;
2. its manifest is deleted (durably), so ``rebuild-index`` cannot resurrect it, and so is
   its boot-test screenshot (catalog.bootcheck), if any;
3. one transaction deletes its image rows and its backup row.

Backups a crash left in ``deleting`` are finished by the next ``prune`` (or ``gc``) before
anything else. The repository must be open for maintenance (the exclusive ``lock``).

Beside running backups (catalog.lease): prune removes complete backups only, never an
``in_progress`` one, so it cannot remove a running backup. It may remove the parent a
running backup of the same VM started from; that backup keeps reading the parent's map
nodes and referencing its chunks, which stay: gc only condemns them (they are unreferenced
once the parent is gone) and deletes them only after every lease that was live when they
were condemned has ended, by which time the running backup is complete and its own map
references them (catalog.condemn).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.bootcheck import delete_screenshot
from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.retention import RetentionPolicy, select
from vmaccel.vocabulary.errors import UsageError
from vmaccel.vocabulary.units import format_time

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptBackup:
    backup: BackupRow
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class VmPrune:
    """What prune kept and removed of one VM's complete backups (newest first)."""

    vm: str
    kept: tuple[KeptBackup, ...]
    removed: tuple[BackupRow, ...]


@dataclass(frozen=True)
class PruneReport:
    """The outcome of one prune. With ``dry_run`` nothing was changed (``removed`` would go).

    ``finished`` are backups an interrupted earlier prune had left ``deleting`` and this run
    removed (never in a dry run).
    """

    policy: RetentionPolicy
    dry_run: bool
    vms: tuple[VmPrune, ...]
    finished: tuple[BackupRow, ...] = ()

    @property
    def removed(self) -> tuple[BackupRow, ...]:
        return tuple(b for v in self.vms for b in v.removed)

    @property
    def kept(self) -> tuple[KeptBackup, ...]:
        return tuple(k for v in self.vms for k in v.kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy.counts(),
            "vms": {
                v.vm: {
                    "kept": [
                        {**_backup_dict(k.backup), "reasons": list(k.reasons)} for k in v.kept
                    ],
                    "removed": [_backup_dict(b) for b in v.removed],
                }
                for v in self.vms
            },
            "finished": [_backup_dict(b) for b in self.finished],
            "kept_count": len(self.kept),
            "removed_count": len(self.removed),
        }

    def summary(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        lines = []
        for v in self.vms:
            lines.append(f"{v.vm}: keeping {len(v.kept)}, {verb} {len(v.removed)}")
            for k in v.kept:
                lines.append(f"  keep    {_label(k.backup)}  ({', '.join(k.reasons)})")
            for b in v.removed:
                lines.append(f"  {'remove' if self.dry_run else 'removed':7} {_label(b)}")
        if self.finished:
            lines.append(f"finished removing {len(self.finished)} interrupted deletion(s)")
        lines.append(
            f"{verb} {len(self.removed)} backup(s), kept {len(self.kept)} "
            f"(policy: {self.policy.describe()})"
            + (
                "; run `vmaccel gc` to free their space"
                if self.removed and not self.dry_run
                else ""
            )
        )
        return lines


def prune(
    repo: Repository,
    policy: RetentionPolicy,
    dry_run: bool = False,
    only_vms: Collection[str] | None = None,
) -> PruneReport:
    """Remove every complete backup ``policy`` does not keep, VM by VM (see module doc);
    with ``only_vms``, only backups of those VMs are considered (a backup policy's own VMs).

    Returns after every removal is durable. ``dry_run`` decides and reports, changing nothing.
    """
    if not repo.maintenance:
        raise UsageError("prune needs the repository opened for writing (maintenance: write=True)")
    finished = () if dry_run else finish_deleting(repo)
    by_vm: dict[str, list[BackupRow]] = {}
    for b in repo.backups(state="complete"):
        if only_vms is None or b.vm in only_vms:
            by_vm.setdefault(b.vm, []).append(b)
    vms = []
    for vm in sorted(by_vm):
        decision = select(by_vm[vm], policy)
        if not dry_run:
            for b in decision.remove:
                remove_backup(repo, b)
        kept = tuple(KeptBackup(b, reasons) for b, reasons in decision.keep)
        vms.append(VmPrune(vm, kept, decision.remove))
    report = PruneReport(policy, dry_run, tuple(vms), finished)
    logger.info("prune: %s", report.summary()[-1])
    return report


def remove_backup(repo: Repository, backup: BackupRow) -> None:
    """Remove one backup's metadata in the crash-safe order of the module docstring."""
    if backup.state != "deleting":
        with repo.index.writing():
            repo.index.set_backup_state(backup.id, "deleting")
    repo.delete_manifest(backup)
    delete_screenshot(repo.store, backup.uuid)
    with repo.index.writing():
        repo.index.delete_backup(backup.id)
    logger.debug("removed backup %s (%s) of %s", backup.id, backup.uuid, backup.vm)


def finish_deleting(repo: Repository) -> tuple[BackupRow, ...]:
    """Finish removing backups an interrupted prune or gc left in state ``deleting``."""
    left = tuple(repo.backups(state="deleting"))
    for b in left:
        remove_backup(repo, b)
    if left:
        logger.info("finished removing %d backup(s) left 'deleting' by a crash", len(left))
    return left


def _backup_dict(b: BackupRow) -> dict[str, Any]:
    return {"id": b.id, "uuid": b.uuid, "vm": b.vm, "started": b.started, "state": b.state}


def _label(b: BackupRow) -> str:
    return f"#{b.id} {format_time(b.started)} {b.uuid}"
