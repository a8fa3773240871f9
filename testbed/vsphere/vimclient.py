"""Plain pyVmomi calls the bed's self-tests make, written the way production code must make them.

Properties are read through the PropertyCollector with explicit paths (pyVmomi's attribute
access uses `Fetch`, which vcsim answers with a crash for unset properties), and tasks are
polled the same way (`WaitForTask` trips over vcsim's RemoveSnapshot task entity).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from testbed.vsphere.bed import VsphereBed, verified_session

Extent = tuple[int, int]  # (offset, length) in bytes


@contextmanager
def connect(bed: VsphereBed) -> Iterator[vim.ServiceInstance]:
    host, port = bed.host.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(bed.ca_file))
    si = SmartConnect(host=host, port=int(port), user=bed.user, pwd=bed.password,
                      sslContext=context)
    try:
        yield si
    finally:
        Disconnect(si)


def props(si: vim.ServiceInstance, obj: Any, *paths: str) -> dict[str, Any]:
    """Read properties of one managed object; unset properties are absent from the result."""
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))])
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    if result is None:
        return {}
    return {p.name: p.val for p in result.objects[0].propSet}


def vm_by_moref(si: vim.ServiceInstance, moref: str) -> vim.VirtualMachine:
    return vim.VirtualMachine(moref, si._stub)


def wait_task(si: vim.ServiceInstance, task: vim.Task, timeout: float = 30.0) -> Any:
    """Wait for a task; return its result or raise its fault (a pyVmomi exception)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = props(si, task, "info.state", "info.error", "info.result")
        if info["info.state"] == "success":
            return info.get("info.result")
        if info["info.state"] == "error":
            fault: vmodl.MethodFault = info["info.error"]  # pyVmomi unwraps LocalizedMethodFault
            raise fault
        time.sleep(0.05)
    raise TimeoutError(f"task {task} did not finish")


def enable_cbt(si: vim.ServiceInstance, vm: vim.VirtualMachine, enabled: bool = True) -> None:
    wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))


def create_snapshot(si: vim.ServiceInstance, vm: vim.VirtualMachine, name: str,
                    quiesce: bool = False) -> vim.vm.Snapshot:
    task = vm.CreateSnapshot_Task(name=name, description="", memory=False, quiesce=quiesce)
    snapshot: vim.vm.Snapshot = wait_task(si, task)
    return snapshot


def remove_snapshot(si: vim.ServiceInstance, snapshot: vim.vm.Snapshot) -> None:
    wait_task(si, snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True))


def snapshot_disks(si: vim.ServiceInstance,
                   snapshot: vim.vm.Snapshot) -> list[vim.vm.device.VirtualDisk]:
    devices = props(si, snapshot, "config.hardware.device")["config.hardware.device"]
    return [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]


def changed_extents(vm: vim.VirtualMachine, snapshot: vim.vm.Snapshot | None, key: int,
                    capacity: int, change_id: str) -> tuple[list[Extent], int]:
    """The QueryChangedDiskAreas loop of reference/vsphere.md 1.3; returns (extents, calls)."""
    offset, calls, out = 0, 0, []
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=snapshot, deviceKey=key, startOffset=offset,
                                        changeId=change_id)
        calls += 1
        assert info.startOffset == offset and info.length > 0
        out += [(a.start, a.length) for a in info.changedArea or ()]
        offset = int(info.startOffset) + int(info.length)
    assert offset == capacity
    return out, calls


def folder_url(bed: VsphereBed, file_name: str) -> str:
    """The /folder URL of a datastore path such as "[LocalDS_0] vm/disk1-flat.vmdk"."""
    datastore, path = file_name[1:].split("] ", 1)
    return f"https://{bed.host}/folder/{path}?dcPath=DC0&dsName={datastore}"


def read_range(bed: VsphereBed, si: vim.ServiceInstance, file_name: str, start: int,
               length: int) -> requests.Response:
    """GET a byte range of a datastore file with the SOAP session cookie, as the http
    transport does."""
    session = verified_session(bed.ca_file)
    cookie = si._stub.cookie  # 'vmware_soap_session="..."; Path=/; ...'
    return session.get(folder_url(bed, file_name), timeout=30,
                       headers={"Cookie": cookie.split(";", 1)[0],
                                "Range": f"bytes={start}-{start + length - 1}"})
