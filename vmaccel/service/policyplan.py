"""What a policy run would do now, per VM and disk (``vmaccel policy test``), and when a VM is
due for its periodic rescan. Decisions come from the engine's own rules
(:func:`vmaccel.plugin.engine.baseline.decide`, the disk exclusions of the selection), fed with
the live disks and the catalog's latest images.

The prediction is for a snapshot taken now: the live disk's changeId is the one the last
snapshot left unless the guest wrote since, and the next snapshot always advances it, so
an unchanged sequence is predicted as one step further (an incremental), a smaller one as a
reverted disk (a full read), exactly as the engine will decide on the snapshot's changeId.
Where vCenter shows no changeId for a running disk with CBT on, the parent's next one is
assumed: a CBT reset since then shows only at the snapshot (and the run reads that disk whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.index import Baseline
from vmaccel.catalog.repository import Repository
from vmaccel.plugin.engine.baseline import decide, split_change_id
from vmaccel.plugin.engine.plan import FULL, RESCAN
from vmaccel.plugin.engine.selection import excluded_disks

if TYPE_CHECKING:
    from vmaccel.plugin.vcenter.models import DiskRef, VmRef

DAY = 86400.0
CHECKS = (FULL, RESCAN)  # image modes that read every allocated block


@dataclass(frozen=True)
class DiskPlanLine:
    """One disk: ``mode`` full, incremental, rescan or skipped, and ``reason``."""

    disk: str
    label: str
    mode: str
    reason: str


@dataclass(frozen=True)
class VmPlan:
    vm: str
    disks: tuple[DiskPlanLine, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_check(repo: Repository, vm: str) -> float | None:
    """When the newest backup of ``vm`` with a full read or a rescan of a disk started."""
    for backup in reversed(repo.backups(vm)):
        if any(img.meta.mode in CHECKS for img in repo.images(backup)):
            return backup.started
    return None


def rescan_due(repo: Repository, vm: str, days: int, now: float) -> bool:
    """Whether ``vm`` needs its periodic rescan (``days`` 0: never; no check yet: not before
    its first backup, which reads everything anyway)."""
    if days <= 0:
        return False
    checked = last_check(repo, vm)
    if checked is None:
        return bool(repo.backups(vm))
    return now - checked >= days * DAY


def _predicted(live: str | None, parent: Baseline | None, cbt: bool) -> str | None:
    """The changeId the next snapshot will carry (see the module docstring)."""
    if parent is None or parent.change_id is None:
        return live
    if live is None:  # not shown for the running disk: the snapshot will carry the next one
        then = split_change_id(parent.change_id)
        return f"{then[0]}/{then[1] + 1}" if cbt and then is not None else None
    now, then = split_change_id(live), split_change_id(parent.change_id)
    if now is None or then is None or now[0] != then[0] or now[1] != then[1]:
        return live
    return f"{now[0]}/{now[1] + 1}"


def plan_vm(repo: Repository, vm: VmRef, exclude_disks: Sequence[str], rescan: bool) -> VmPlan:
    """Per disk of ``vm``: what a backup started now would do, and why."""
    excluded, notes = excluded_disks(exclude_disks, vm.name, vm.disks)
    parents = repo.latest_images(vm.name, vm.instance_uuid, [d.name for d in vm.disks])
    lines = []
    for disk in vm.disks:
        skip = _skip(disk, excluded)
        if skip:
            lines.append(DiskPlanLine(disk.name, disk.label, "skipped", skip))
            continue
        parent = parents.get(disk.name)
        base = parent.meta.baseline if parent else None
        change_id = _predicted(disk.change_id, base, vm.cbt_enabled)
        current = Baseline(vm.instance_uuid, disk.key, disk.uuid, disk.capacity, change_id)
        mode, reason = decide(current, base)
        if not vm.cbt_enabled and base is not None:
            mode, reason = FULL, "CBT is off: this run enables it and reads the disk whole"
        if rescan and mode != FULL:
            mode, reason = RESCAN, "periodic rescan due (rescan_days)"
        lines.append(DiskPlanLine(disk.name, disk.label, mode, reason))
    return VmPlan(vm.name, tuple(lines), notes)


def _skip(disk: DiskRef, excluded: frozenset[str]) -> str | None:
    if disk.name in excluded:
        return "excluded by the policy (exclude_disks)"
    if disk.independent:
        return f"independent disk ({disk.disk_mode}): snapshots do not freeze it"
    if disk.physical_rdm:
        return "physical-mode RDM: not captured by snapshots"
    return None
