"""NFC import: a new VM created with ``ResourcePool.ImportVApp`` and an ``HttpNfcLease`` whose
device URLs take one streamOptimized VMDK per disk (what govc and ovftool do; works on VMFS,
NFS, vSAN and vVols, no VDDK).

The lease must be kept alive while uploading (``HttpNfcLeaseProgress``; it times out after a
few minutes of silence) and ended with ``HttpNfcLeaseComplete`` (the VM stays) or
``HttpNfcLeaseAbort`` (vSphere deletes the VM and its disks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.models import TlsTrust
from vmaccel.plugin.vcenter.vmcreate import Blueprint, CreatedVm, created, prepare
from vmaccel.vocabulary.errors import RestoreError, VCenterError

STREAM_VMDK = "application/x-vnd.vmware-streamVmdk"


@dataclass(frozen=True)
class NfcImport:
    """An open import: the ``lease`` (moref), the ``vm`` it created, and per requested disk
    (saved device key, upload URL). ``cookie`` and ``trust`` authenticate the uploads."""

    lease: str
    vm: CreatedVm
    urls: tuple[tuple[int, str], ...]
    cookie: str
    trust: TlsTrust


def start_import(vc: VCenter, bp: Blueprint, timeout: float = 600.0) -> NfcImport:
    """Create the VM (new disks only) through ``ImportVApp`` and wait for the lease to be
    ready. The caller uploads each disk to its URL, then :func:`complete` or :func:`abort`."""
    if any(d.attach for d in bp.disks):
        raise RestoreError("an NFC import creates new disks; it cannot attach existing ones")
    cfg, where, spec = prepare(vc, bp)
    name, disks = bp.name, bp.disks
    pool = vc.ref(vim.ResourcePool, where.pool)
    folder = vc.ref(vim.Folder, where.folder)
    host = vc.ref(vim.HostSystem, where.host) if where.host else None
    try:
        lease = pool.ImportVApp(spec=vim.vm.VmImportSpec(configSpec=spec), folder=folder, host=host)
    except vmodl.MethodFault as exc:
        raise RestoreError(f"vCenter refused to import VM {name}: {_msg(exc)}") from None
    info = _ready(vc, lease, name, timeout)
    try:
        vm = created(vc, info.entity, cfg, name, where, disks)
        urls = _urls(vc, info, vm)
    except BaseException:
        abort(vc, lease._moId, "vmaccel could not match the lease's disks")
        raise
    return NfcImport(lease._moId, vm, urls, vc.session_cookie, vc.endpoint.trust)


def _ready(vc: VCenter, lease: Any, name: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        props = vc.props(lease, "state", "error", "info")
        state = props.get("state")
        if state == "ready":
            return props["info"]
        if state == "error":
            raise RestoreError(f"importing VM {name} failed: {_msg(props.get('error'))}")
        time.sleep(0.2)
    raise VCenterError(f"the import lease of {name} did not become ready in {timeout:.0f} s")


def _urls(vc: VCenter, info: Any, vm: CreatedVm) -> tuple[tuple[int, str], ...]:
    """(saved key, URL) per disk: the lease lists disk URLs in the VM's device order."""
    disk_urls = [u for u in info.deviceUrl or () if u.disk]
    props = vc.props(vc.ref(vim.VirtualMachine, vm.moref), "config.hardware.device")
    order = [
        int(d.key)
        for d in props.get("config.hardware.device", ())
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    if len(disk_urls) != len(order):
        raise RestoreError(
            f"the import lease offers {len(disk_urls)} disks, the VM has {len(order)}"
        )
    host = vc.endpoint.host
    by_key = {key: u.url.replace("*", host, 1) for key, u in zip(order, disk_urls, strict=True)}
    return tuple((saved, by_key[disk.key]) for saved, disk in vm.disks)


def progress(vc: VCenter, lease: str, percent: int) -> None:
    """Tell vSphere the import is alive (``percent`` 0-100)."""
    ref = vc.ref(vim.HttpNfcLease, lease)
    try:
        ref.HttpNfcLeaseProgress(percent=max(0, min(100, percent)))
    except vmodl.MethodFault as exc:
        raise VCenterError(f"the import lease ended: {_msg(exc)}") from None


def complete(vc: VCenter, lease: str) -> None:
    """End the import successfully: the VM stays."""
    try:
        vc.ref(vim.HttpNfcLease, lease).HttpNfcLeaseComplete()
    except vmodl.MethodFault as exc:
        raise VCenterError(f"completing the import failed: {_msg(exc)}") from None


def abort(vc: VCenter, lease: str, why: str) -> None:
    """End the import as failed: vSphere removes the VM and its disks."""
    fault = vmodl.fault.SystemError(reason=why, msg=why)
    try:
        vc.ref(vim.HttpNfcLease, lease).HttpNfcLeaseAbort(fault=fault)
    except vmodl.MethodFault as exc:
        raise VCenterError(f"aborting the import failed: {_msg(exc)}") from None


def _msg(fault: Any) -> str:
    return str(getattr(fault, "msg", "") or fault or "unknown fault")
