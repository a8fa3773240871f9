"""The VM inventory: every VM (or the selected ones) with the properties a backup needs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyVmomi import vim, vmodl

from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.models import DiskRef, SnapshotRef, VmRef
from vmaccel.vocabulary.disknames import unit_name

# keep(moref, name, folder path): whether list_vms reads a VM's full properties.
Keep = Callable[[str, str, str], bool]

VM_PATHS = (
    "name",
    "parent",
    "config.instanceUuid",
    "config.template",
    "runtime.powerState",
    "runtime.host",
    "config.changeTrackingEnabled",
    "snapshot",
    "config.hardware.device",
)


# Controller classes -> the prefix of their units ("scsi0:1"); subclasses (LSI Logic,
# ParaVirtual, AHCI, ...) are found through isinstance.
_CONTROLLERS = (
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualIDEController, "ide"),
    (vim.vm.device.VirtualSATAController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
)


def disk_refs(devices: Iterable[Any]) -> tuple[DiskRef, ...]:
    """DiskRefs of the VirtualDisks among ``devices`` (from a VM's or a snapshot's config),
    each with its controller unit when its controller is among ``devices`` too."""
    devices = list(devices or ())
    units = controller_prefixes(devices)
    return tuple(disk_ref(d, units) for d in devices if isinstance(d, vim.vm.device.VirtualDisk))


def controller_prefixes(devices: Iterable[Any]) -> dict[int, tuple[str, int]]:
    """controller device key -> (unit prefix such as "scsi", bus number)."""
    out: dict[int, tuple[str, int]] = {}
    for dev in devices:
        for cls, prefix in _CONTROLLERS:
            if isinstance(dev, cls):
                out[int(dev.key)] = (prefix, int(dev.busNumber or 0))
                break
    return out


def _unit(d: Any, controllers: dict[int, tuple[str, int]]) -> str | None:
    known = controllers.get(int(d.controllerKey)) if d.controllerKey is not None else None
    if known is None or d.unitNumber is None:
        return None
    return unit_name(known[0], known[1], int(d.unitNumber))


def disk_ref(d: Any, controllers: dict[int, tuple[str, int]] | None = None) -> DiskRef:
    b = d.backing
    if isinstance(b, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo):
        kind = "rdm-physical" if b.compatibilityMode == "physicalMode" else "rdm-virtual"
    elif isinstance(b, vim.vm.device.VirtualDisk.FlatVer2BackingInfo):
        kind = "flat"
    elif isinstance(b, vim.vm.device.VirtualDisk.SparseVer2BackingInfo):
        kind = "sparse"
    else:
        kind = type(b).__name__
    file_name = getattr(b, "fileName", "") or ""
    datastore = file_name[1:].split("]", 1)[0] if file_name.startswith("[") else ""
    return DiskRef(
        key=int(d.key),
        label=d.deviceInfo.label if d.deviceInfo else f"disk {d.key}",
        capacity=int(d.capacityInBytes or (d.capacityInKB or 0) * 1024),
        file_name=file_name,
        uuid=getattr(b, "uuid", None),
        change_id=getattr(b, "changeId", None),
        disk_mode=getattr(b, "diskMode", "persistent") or "persistent",
        backing=kind,
        datastore=datastore,
        unit=_unit(d, controllers or {}),
    )


def _snapshots(info: Any) -> tuple[SnapshotRef, ...]:
    out: list[SnapshotRef] = []
    stack = list(info.rootSnapshotList) if info is not None else []
    while stack:
        node = stack.pop()
        out.append(SnapshotRef(node.snapshot._moId, node.name, node.description or ""))
        stack.extend(node.childSnapshotList or ())
    return tuple(out)


def _folder_paths(
    folders: dict[str, dict[str, Any]], dcs: dict[str, dict[str, Any]]
) -> tuple[dict[str, str], dict[str, str]]:
    """moref -> inventory path ("/DC0/vm/sub") for folders, and folder moref -> datacenter."""
    paths: dict[str, str] = {}
    owner: dict[str, str] = {}
    for dc in dcs.values():
        root = dc["vmFolder"]._moId
        paths[root], owner[root] = f"/{dc['name']}/vm", dc["name"]

    def resolve(moref: str) -> str:
        if moref not in paths:
            props = folders.get(moref)
            parent = props.get("parent") if props else None
            if props is None or parent is None or parent._moId not in folders:
                paths[moref] = f"/{props['name'] if props else moref}"
            else:
                paths[moref] = f"{resolve(parent._moId)}/{props['name']}"
                owner[moref] = owner.get(parent._moId, "")
        return paths[moref]

    for moref in folders:
        resolve(moref)
    return paths, owner


def list_vms(vc: VCenter, keep: Keep | None = None) -> list[VmRef]:
    """Every VM and template, sorted by name; with ``keep``, only those it accepts.

    Folders, datacenters and VMs come through one container view in one retrieval. With
    ``keep``, that retrieval reads only each VM's name and folder, and the full properties
    (device lists, snapshot trees) are read for the accepted VMs alone: in a large inventory
    those are nearly all of the bytes.
    """
    found = vc.all_of_kinds(
        {
            vim.Folder: ("name", "parent"),
            vim.Datacenter: ("name", "vmFolder"),
            vim.VirtualMachine: VM_PATHS if keep is None else ("name", "parent"),
        }
    )
    paths, owner = _folder_paths(found[vim.Folder], found[vim.Datacenter])

    def folder_of(p: dict[str, Any]) -> str:
        parent = p.get("parent")
        return paths.get(parent._moId, "") if parent is not None else ""

    props = found[vim.VirtualMachine]
    if keep is not None:
        accepted = [m for m, p in props.items() if keep(m, p.get("name", m), folder_of(p))]
        props = _details(vc, accepted)
    vms = []
    for moref, p in props.items():
        parent = p.get("parent")
        vms.append(
            VmRef(
                moref=moref,
                name=p.get("name", moref),
                instance_uuid=p.get("config.instanceUuid") or moref,
                folder=folder_of(p),
                power_state=str(p.get("runtime.powerState", "unknown")),
                template=bool(p.get("config.template", False)),
                cbt_enabled=bool(p.get("config.changeTrackingEnabled", False)),
                snapshots=_snapshots(p.get("snapshot")),
                disks=disk_refs(p.get("config.hardware.device", ())),
                datacenter=owner.get(parent._moId, "") if parent is not None else "",
                host=_moref(p.get("runtime.host")),
            )
        )
    return sorted(vms, key=lambda v: v.name)


def _moref(obj: Any) -> str:
    """The moref of a managed object property ("" when unset)."""
    return str(obj._moId) if obj is not None else ""


def _details(vc: VCenter, morefs: list[str]) -> dict[str, dict[str, Any]]:
    """moref -> VM_PATHS for these VMs; one that vanished since the first read is left out
    (as if the inventory had been read a moment later)."""
    if not morefs:
        return {}
    refs = [vc.ref(vim.VirtualMachine, m) for m in morefs]
    try:
        return vc.props_of(refs, vim.VirtualMachine, VM_PATHS)
    except vmodl.fault.ManagedObjectNotFound:
        live = vc.all_of(vim.VirtualMachine, ("name",))
        refs = [r for r in refs if r._moId in live]
        return vc.props_of(refs, vim.VirtualMachine, VM_PATHS) if refs else {}
