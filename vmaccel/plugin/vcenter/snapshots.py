"""Backup snapshots: created with a marker, always removed, leftovers cleaned; user
snapshots are never touched (DESIGN invariant 7).

A backup snapshot is named ``vmaccel-<run id>`` and its description is a JSON marker
``{"vmaccel": 1, "run": ...}``; only snapshots carrying both are ours.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from pyVmomi import SoapAdapter, vim

from vmaccel.plugin.vcenter.connection import TaskFailed, VCenter
from vmaccel.plugin.vcenter.inventory import disk_refs
from vmaccel.plugin.vcenter.models import BackupSnapshot, SnapshotRef, VmRef
from vmaccel.vocabulary.errors import SnapshotFailed

logger = logging.getLogger(__name__)

PREFIX = "vmaccel-"


def is_ours(snap: SnapshotRef) -> bool:
    if not snap.name.startswith(PREFIX):
        return False
    try:
        marker = json.loads(snap.description)
    except ValueError:
        return False
    return isinstance(marker, dict) and marker.get("vmaccel") == 1


def remove(vc: VCenter, moref: str, what: str) -> None:
    snap = vc.ref(vim.vm.Snapshot, moref)
    try:
        vc.wait_task(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True), what)
    except TaskFailed as exc:
        raise SnapshotFailed(str(exc)) from None


def remove_leftovers(vc: VCenter, vm: VmRef) -> list[str]:
    """Remove vmaccel snapshots an interrupted run left behind; returns their names."""
    removed = []
    for snap in vm.snapshots:
        if is_ours(snap):
            remove(vc, snap.moref, f"removing leftover snapshot {snap.name} of {vm.name}")
            removed.append(snap.name)
    return removed


def create(vc: VCenter, vm: VmRef, quiesce: bool = True) -> BackupSnapshot:
    """Snapshot ``vm`` (no memory). A failed quiesced snapshot is retried crash-consistent."""
    run = uuid.uuid4().hex[:12]
    name = f"{PREFIX}{run}"
    marker = json.dumps({"vmaccel": 1, "run": run, "created": int(time.time())})
    obj = vc.ref(vim.VirtualMachine, vm.moref)
    quiesced = quiesce and vm.power_state == "poweredOn"
    try:
        snap = _create(vc, obj, name, marker, quiesced, vm.name)
    except TaskFailed as exc:
        if not quiesced:
            raise SnapshotFailed(str(exc)) from None
        logger.warning(
            "quiesced snapshot of %s failed (%s); retrying crash-consistent", vm.name, exc
        )
        quiesced = False
        try:
            snap = _create(vc, obj, name, marker, False, vm.name)
        except TaskFailed as exc2:
            raise SnapshotFailed(str(exc2)) from None
    props = vc.props(snap, "config")
    config = props["config"]
    return BackupSnapshot(
        snapshot=SnapshotRef(snap._moId, name, marker),
        quiesced=quiesced,
        disks=disk_refs(config.hardware.device),
        config_xml=SoapAdapter.Serialize(config, version=vc.api_version).decode(),
        api_version=vc.api_version,
    )


def _create(
    vc: VCenter,
    obj: vim.VirtualMachine,
    name: str,
    marker: str,
    quiesce: bool,
    vm_name: str,
) -> vim.vm.Snapshot:
    task = obj.CreateSnapshot_Task(name=name, description=marker, memory=False, quiesce=quiesce)
    snapshot: vim.vm.Snapshot = vc.wait_task(task, f"snapshot of {vm_name}")
    return snapshot
