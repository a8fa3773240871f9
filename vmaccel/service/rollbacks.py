"""CBT rollback: put a VM that still exists back to a backup by writing only what changed since.

Checks first, changes after: the VM is found by the instance UUID saved with the backup; each
disk restored must still have the device key, backing UUID and capacity its image recorded
(its invariant-3 baseline); the VM must have no snapshots (its disks would be deltas); the
transport must write ranges (the datastore ``/folder`` interface cannot). Only then is the VM
powered off (after ``confirm``), and ``QueryChangedDiskAreas`` asked, with no snapshot (a
powered-off VM's current state), for the areas changed since the backup's changeId. Those
areas are written back from the image (data written, holes zeroed). A disk whose changeId
cannot be used (none stored, tracking reset, refused by vSphere) is written in full, and the
reason is in the report. CBT is reset afterwards: writes that bypass the host (file, some NBD
servers) are not tracked, so the next backup must read the disks in full.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.catalog.repository import Repository
from vmaccel.service.vmrestores import (
    Confirm,
    DiskWrite,
    Tracker,
    VmRestoreReport,
    VmRestoreRequest,
    saved_key,
    write_disk,
)
from vmaccel.vocabulary.errors import Interrupted, RestoreError, VmNotFound

if TYPE_CHECKING:
    from vmaccel.catalog.index.meta import Baseline
    from vmaccel.guestfs.extent import Extent
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.models import DiskRef, VmRef


def roll_back(
    vc: VCenter,
    r: Repository,
    row: BackupRow,
    images: list[ImageRow],
    req: VmRestoreRequest,
    track: Tracker,
    confirm: Confirm,
    start: float,
) -> VmRestoreReport:
    """Roll the backed-up VM back to ``row`` (see the module docstring)."""
    from vmaccel.plugin.sink.choose import sink_kind
    from vmaccel.plugin.vcenter import vmcreate

    vm = _find(vc, row)
    pairs = [(image, _same_disk(vm, image)) for image in images]
    for _, disk in pairs:
        sink_kind(req.transport_config(), disk, in_place=True)
    if vm.power_state != "poweredOff":
        if not confirm(f"power off {vm.name} to roll it back to backup {row.id}?"):
            raise Interrupted(f"{vm.name} was left running: nothing was rolled back")
        vmcreate.power_off(vc, vm.moref)
    written: list[DiskWrite] = []
    for image, disk in pairs:
        baseline = image.meta.baseline
        assert baseline is not None  # noqa: S101 - _same_disk refused images without one
        areas, reason = _changed(vc, vm, disk, baseline)
        written.append(write_disk(vc, r, image, vm.moref, disk, req, track, areas, reason))
    reset = vm.cbt_enabled
    if reset:
        vmcreate.reset_cbt(vc, vm.moref)
    if req.power_on:
        vmcreate.power_on(vc, vm.moref)
    notes = ("CBT reset: the next backup of this VM reads its disks in full",) if reset else ()
    return VmRestoreReport(
        row.id,
        row.vm,
        "in-place",
        vm.name,
        vm.moref,
        tuple(written),
        time.monotonic() - start,
        powered_on=req.power_on,
        cbt_reset=reset,
        notes=notes,
    )


def _find(vc: VCenter, row: BackupRow) -> VmRef:
    from vmaccel.plugin.vcenter.inventory import list_vms
    from vmaccel.plugin.vcenter.vmcreate import find_by_instance_uuid

    wanted = row.meta.instance_uuid
    if not wanted:
        raise RestoreError(f"backup {row.id} does not record the VM's instance UUID")
    moref = find_by_instance_uuid(vc, wanted)
    found = list_vms(vc, lambda m, name, folder: m == moref) if moref else []
    if not found:
        raise VmNotFound(
            f"no VM with the instance UUID {wanted} of {row.vm} in vCenter; restore it as a "
            "new VM instead (without --in-place)"
        )
    vm = found[0]
    if vm.snapshots:
        raise RestoreError(
            f"{vm.name} has snapshots ({', '.join(s.name for s in vm.snapshots)}): its disks are "
            "deltas; remove the snapshots or restore as a new VM"
        )
    return vm


def _same_disk(vm: VmRef, image: ImageRow) -> DiskRef:
    """The VM's disk the image was taken from, checked to be the same disk still."""
    baseline = image.meta.baseline
    if baseline is None:
        raise RestoreError(f"image {image.disk} records no disk identity; restore as a new VM")
    key = saved_key(image)
    disk = next((d for d in vm.disks if d.key == key), None)
    if disk is None:
        raise RestoreError(f"{vm.name} no longer has the disk {image.disk} (device key {key})")
    if baseline.backing_uuid and disk.uuid and disk.uuid != baseline.backing_uuid:
        raise RestoreError(
            f"{disk.label} of {vm.name} is another disk now (backing uuid {disk.uuid}, the "
            f"backup's {baseline.backing_uuid}); restore as a new VM or with --into-vm"
        )
    if disk.capacity != baseline.capacity or disk.capacity < image.size:
        raise RestoreError(
            f"{disk.label} of {vm.name} holds {disk.capacity} bytes, the backup's "
            f"{baseline.capacity}: a resized disk cannot be rolled back; restore as a new VM"
        )
    return disk


def _changed(
    vc: VCenter, vm: VmRef, disk: DiskRef, baseline: Baseline
) -> tuple[Sequence[Extent] | None, str]:
    """(areas changed since the backup, "") or (None, why the disk is written in full)."""
    from vmaccel.plugin.vcenter.cbt import changed_areas
    from vmaccel.vocabulary.errors import ChangeTrackingError

    if not baseline.change_id:
        return None, "the backup stored no changeId for this disk (CBT was not active)"
    if not vm.cbt_enabled:
        return None, f"CBT is off on {vm.name} now"
    stored = baseline.change_id.split("/", 1)[0]
    if disk.change_id and disk.change_id.split("/", 1)[0] != stored:
        return None, f"CBT was reset since the backup (changeId {disk.change_id})"
    try:
        areas = changed_areas(vc, vm.moref, None, disk.key, disk.capacity, baseline.change_id)
    except ChangeTrackingError as exc:
        return None, f"the CBT chain does not reach back to the backup: {exc}"
    return areas, ""
