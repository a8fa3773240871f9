"""Looking at the bed's VMs from outside the product, with plain pyVmomi (tests/vsphere)."""

from __future__ import annotations

import json

from testbed.vsphere import vimclient
from testbed.vsphere.bed import VsphereBed


def snapshots(bed: VsphereBed, moref: str) -> dict[str, str]:
    """Snapshot name -> description, for every snapshot of the VM."""
    with vimclient.connect(bed) as si:
        info = vimclient.props(si, vimclient.vm_by_moref(si, moref), "snapshot").get("snapshot")
    found: dict[str, str] = {}
    stack = list(info.rootSnapshotList) if info is not None else []
    while stack:
        node = stack.pop()
        found[node.name] = node.description or ""
        stack.extend(node.childSnapshotList or ())
    return found


def create_snapshot(bed: VsphereBed, moref: str, name: str, description: str = "") -> None:
    with vimclient.connect(bed) as si:
        vm = vimclient.vm_by_moref(si, moref)
        task = vm.CreateSnapshot_Task(
            name=name, description=description, memory=False, quiesce=False
        )
        vimclient.wait_task(si, task)


def leftover_marker() -> str:
    """The description a vmaccel backup snapshot carries (plugin/vcenter/snapshots.py)."""
    return json.dumps({"vmaccel": 1, "run": "deadbeef0000", "created": 1700000000})


def cbt_enabled(bed: VsphereBed, moref: str) -> bool:
    with vimclient.connect(bed) as si:
        props = vimclient.props(
            si, vimclient.vm_by_moref(si, moref), "config.changeTrackingEnabled"
        )
    return bool(props.get("config.changeTrackingEnabled"))
