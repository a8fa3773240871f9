"""Changed Block Tracking: enabling it, and asking what changed since a changeId.

``QueryChangedDiskAreas`` answers one window per call; the loop walks ``startOffset`` until the
capacity is covered and checks every answer (reference: Bareos and the VDDK guide). Any fault
or inconsistency raises :class:`ChangeTrackingError`, which makes that disk a full read.
"""

from __future__ import annotations

from pyVmomi import vim, vmodl

from vmaccel.guestfs.extent import Extent, merge
from vmaccel.plugin.vcenter.connection import TaskFailed, VCenter
from vmaccel.vocabulary.errors import ChangeTrackingError


def enable(vc: VCenter, vm_moref: str, vm_name: str) -> None:
    """Turn CBT on. Only call with no snapshots present (else incrementals can be silently
    incomplete); it takes effect at the next stun, which the backup snapshot provides."""
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
    try:
        vc.wait_task(
            vc.ref(vim.VirtualMachine, vm_moref).ReconfigVM_Task(spec=spec),
            f"enabling CBT on {vm_name}",
        )
    except TaskFailed as exc:
        raise ChangeTrackingError(str(exc)) from None


def changed_areas(
    vc: VCenter,
    vm_moref: str,
    snapshot_moref: str | None,
    disk_key: int,
    capacity: int,
    change_id: str,
) -> tuple[Extent, ...]:
    """Every extent changed since ``change_id`` up to the snapshot (a superset is allowed);
    with no snapshot, up to the current state of a powered-off VM's disk."""
    vm = vc.ref(vim.VirtualMachine, vm_moref)
    snap = vc.ref(vim.vm.Snapshot, snapshot_moref) if snapshot_moref else None
    offset, found = 0, []
    while offset < capacity:
        try:
            info = vm.QueryChangedDiskAreas(
                snapshot=snap, deviceKey=disk_key, startOffset=offset, changeId=change_id
            )
        except vmodl.MethodFault as exc:  # any fault, on any page: the disk is read whole
            raise ChangeTrackingError(
                f"QueryChangedDiskAreas refused changeId {change_id!r} at {offset}: "
                f"{type(exc).__name__}: {getattr(exc, 'msg', '') or exc}"
            ) from None
        if info.startOffset != offset or info.length <= 0:
            raise ChangeTrackingError(
                f"inconsistent DiskChangeInfo (asked {offset}, "
                f"got {info.startOffset}+{info.length})"
            )
        end = info.startOffset + info.length
        for area in info.changedArea or ():
            if area.start < offset or area.start + area.length > min(end, capacity):
                raise ChangeTrackingError(f"changed area {area.start}+{area.length} outside window")
            found.append(Extent(int(area.start), int(area.length)))
        offset = end
    if offset != capacity:
        raise ChangeTrackingError(f"changed areas cover {offset} bytes, the disk has {capacity}")
    return merge(found)
