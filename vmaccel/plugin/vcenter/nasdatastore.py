"""The vSphere side of instant recovery: NAS datastores on a host, and moving a VM's disks.

Every function is idempotent where the instant session's clean-up needs it: removing a
datastore that is gone, or detaching disks from a VM that has none, is not an error. Names
are inventory names (host, datastore); morefs are returned as strings.
"""

from __future__ import annotations

import logging
from typing import Any

from pyVmomi import vim

from vmaccel.plugin.vcenter.connection import TaskFailed, VCenter
from vmaccel.vocabulary.errors import NotFound, VCenterError

logger = logging.getLogger(__name__)


def find_host(vc: VCenter, name: str) -> str:
    """The moref of the host called ``name``; :class:`NotFound` if none."""
    for moref, props in sorted(vc.all_of(vim.HostSystem, ("name",)).items()):
        if props.get("name") == name:
            return moref
    raise NotFound(f"no host named {name!r} in vCenter")


def find_datastore(vc: VCenter, name: str) -> str | None:
    """The moref of the datastore called ``name``, or None."""
    for moref, props in sorted(vc.all_of(vim.Datastore, ("name",)).items()):
        if props.get("name") == name:
            return moref
    return None


def _datastore_system(vc: VCenter, host: str) -> Any:
    ref = vc.ref(vim.HostSystem, host)
    dss = vc.props(ref, "configManager.datastoreSystem").get("configManager.datastoreSystem")
    if dss is None:
        raise VCenterError(f"host {host} has no datastore system")
    return dss


def create_nas_datastore(
    vc: VCenter, host: str, name: str, remote_host: str, remote_path: str
) -> str:
    """Mount ``remote_host:remote_path`` (NFS v3, read-write) on ``host`` as datastore
    ``name``; returns its moref. The host mounts it at once: an export it cannot reach fails
    here (:class:`VCenterError` with vSphere's message)."""
    spec = vim.host.NasVolume.Specification(
        remoteHost=remote_host, remotePath=remote_path, localPath=name,
        accessMode="readWrite", type="NFS",
    )
    try:
        ds = _datastore_system(vc, host).CreateNasDatastore(spec=spec)
    except vim.fault.DuplicateName:
        raise VCenterError(f"a datastore named {name!r} exists already") from None
    except (vim.fault.HostConfigFault, vim.fault.AlreadyExists) as exc:
        raise VCenterError(
            f"host {host} could not mount {remote_host}:{remote_path}: {_message(exc)}"
        ) from None
    logger.info("datastore %s mounted on host %s from %s:%s", name, host, remote_host, remote_path)
    return str(ds._moId)


def remove_datastore(vc: VCenter, host: str, name: str) -> bool:
    """Unmount datastore ``name`` from ``host``; False if it did not exist."""
    moref = find_datastore(vc, name)
    if moref is None:
        return False
    try:
        _datastore_system(vc, host).RemoveDatastore(datastore=vc.ref(vim.Datastore, moref))
    except vim.fault.ResourceInUse as exc:
        raise VCenterError(f"datastore {name} is still in use: {_message(exc)}") from None
    logger.info("datastore %s removed from host %s", name, host)
    return True


def disk_files(vc: VCenter, vm: str) -> dict[int, str]:
    """Device key -> datastore path of each virtual disk of ``vm``."""
    devices = vc.props(vc.ref(vim.VirtualMachine, vm), "config.hardware.device").get(
        "config.hardware.device", ())
    return {
        int(d.key): str(getattr(d.backing, "fileName", ""))
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk) and hasattr(d.backing, "fileName")
    }


def relocate_disks(vc: VCenter, vm: str, datastore: str) -> dict[int, str]:
    """Storage vMotion of the VM's disks (thin) to ``datastore`` while it runs; the VM's home
    stays where it is. Returns the new disk paths by device key once the move completed."""
    ds_moref = find_datastore(vc, datastore)
    if ds_moref is None:
        raise NotFound(f"no datastore named {datastore!r} in vCenter")
    ds = vc.ref(vim.Datastore, ds_moref)
    locators = [
        vim.vm.RelocateSpec.DiskLocator(
            diskId=key, datastore=ds,
            diskBackingInfo=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True),
        )
        for key in disk_files(vc, vm)
    ]
    spec = vim.vm.RelocateSpec(disk=locators)
    ref = vc.ref(vim.VirtualMachine, vm)
    try:
        vc.wait_task(ref.RelocateVM_Task(spec=spec, priority="defaultPriority"),
                     f"moving {vm} to {datastore}")
    except TaskFailed as exc:
        raise VCenterError(str(exc)) from None
    return disk_files(vc, vm)


def detach_disks(vc: VCenter, vm: str) -> int:
    """Detach every disk from ``vm`` without deleting its files; returns how many."""
    ref = vc.ref(vim.VirtualMachine, vm)
    devices = vc.props(ref, "config.hardware.device").get("config.hardware.device", ())
    changes = [
        vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
        for d in devices if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    if changes:
        try:
            vc.wait_task(ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)),
                         f"detaching the disks of {vm}")
        except TaskFailed as exc:
            raise VCenterError(str(exc)) from None
    return len(changes)


def vm_exists(vc: VCenter, vm: str) -> bool:
    return vm in vc.all_of(vim.VirtualMachine, ("name",))


def vm_datastores(vc: VCenter, vm: str) -> list[str]:
    """Names of the datastores the VM uses."""
    refs = vc.props(vc.ref(vim.VirtualMachine, vm), "datastore").get("datastore", ())
    names = vc.props_of(list(refs), vim.Datastore, ("name",))
    return sorted(str(p.get("name")) for p in names.values())


def _message(fault: BaseException) -> str:
    return str(getattr(fault, "msg", "") or fault)
