"""Creating VMs from a saved configuration, and the lifecycle calls a restore needs around it:
power, destroy, rename, CBT reset, adding one disk to an existing VM.

The spec itself is built by :mod:`vmaccel.plugin.vcenter.vmspec` (pure); this module resolves
the placement (datacenter, folder, host or cluster, resource pool, datastore) and the target
networks by name, calls ``CreateVM_Task`` and reports the new VM as frozen data. Every name
the caller gives is checked before anything is created.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vmaccel.plugin.vcenter.connection import TaskFailed, VCenter
from vmaccel.plugin.vcenter.inventory import disk_refs
from vmaccel.plugin.vcenter.models import DiskRef
from vmaccel.plugin.vcenter.vmspec import (
    DiskChoice,
    Network,
    NetworkMap,
    SpecInput,
    build_spec,
    load_config,
    saved_datastore,
)
from vmaccel.vocabulary.errors import NotFound, RestoreError, UsageError, VCenterError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where a new VM goes, by name. ``datastore``: VM home and new disks (None: the saved
    one); ``folder``: inventory path such as ``/DC0/vm/sub`` (None: the datacenter's VM
    folder); at most one of ``host`` and ``cluster``; ``resource_pool`` (None: the root pool
    of the host's or cluster's compute resource)."""

    datastore: str | None = None
    folder: str | None = None
    host: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None


@dataclass(frozen=True)
class NewDisk:
    """A disk of the saved configuration (device ``key``) for the new VM: ``attach`` names an
    existing disk (``"[ds] dir/disk.vmdk"``) attached as is; None creates an empty thin disk
    of the saved capacity on the placement's datastore."""

    key: int
    attach: str | None = None


@dataclass(frozen=True)
class Blueprint:
    """A new VM as asked: the saved configuration (``config_xml`` read with ``api_version``),
    its ``name``, ``placement``, ``networks`` (source name -> target name), whether to keep
    the saved identity (instance UUID, MACs) and its ``disks``."""

    config_xml: str
    api_version: str
    name: str
    placement: Placement
    networks: Mapping[str, str]
    keep_identity: bool
    disks: Sequence[NewDisk]


@dataclass(frozen=True)
class CreatedVm:
    """A VM made by :func:`create_vm` (powered off). ``disks``: (saved device key, the new
    VM's disk) for each requested disk, in request order."""

    moref: str
    name: str
    instance_uuid: str
    datacenter: str
    datastore: str
    disks: tuple[tuple[int, DiskRef], ...]
    source_cbt: bool = False  # the saved VM had change tracking on


def create_vm(vc: VCenter, bp: Blueprint) -> CreatedVm:
    """Create a VM shaped like the saved configuration (see :mod:`vmspec`), powered off.

    ``networks`` maps source network names to target ones. Raises :class:`UsageError` or
    :class:`NotFound` for a placement or network that does not exist (nothing is created
    then) and :class:`RestoreError` when vCenter refuses the VM."""
    cfg, where, spec = prepare(vc, bp)
    name = bp.name
    folder = vc.ref(vim.Folder, where.folder)
    pool = vc.ref(vim.ResourcePool, where.pool)
    host = vc.ref(vim.HostSystem, where.host) if where.host else None
    try:
        ref = vc.wait_task(
            folder.CreateVM_Task(config=spec, pool=pool, host=host), f"creating VM {name}"
        )
    except TaskFailed as exc:
        raise RestoreError(str(exc)) from None
    return created(vc, ref, cfg, name, where, bp.disks)


def prepare(vc: VCenter, bp: Blueprint) -> tuple[Any, Where, Any]:
    """(saved ConfigInfo, resolved placement, ConfigSpec) for a new VM; every name checked."""
    cfg = load_config(bp.config_xml, bp.api_version)
    where = _resolve(vc, bp.placement, saved_datastore(cfg))
    want = SpecInput(
        name=bp.name,
        datastore=where.datastore,
        networks=_network_map(vc, bp.networks),
        keep_identity=bp.keep_identity,
        disks=[DiskChoice(d.key, d.attach) for d in bp.disks],
    )
    return cfg, where, build_spec(cfg, want)


def created(
    vc: VCenter, ref: Any, cfg: Any, name: str, where: Where, disks: Sequence[NewDisk]
) -> CreatedVm:
    """The report of the VM ``ref`` just created; its disks are matched to the saved ones by
    controller unit. A VM missing one is deleted again."""
    saved_units = {d.key: d.unit for d in disk_refs(cfg.hardware.device or ())}
    props = vc.props(ref, "config.instanceUuid", "config.hardware.device")
    by_unit = {d.unit: d for d in disk_refs(props.get("config.hardware.device", ()))}
    pairs = []
    for d in disks:
        new = by_unit.get(saved_units.get(d.key))
        if new is None:
            destroy(vc, ref._moId)
            raise RestoreError(f"vCenter created {name} without the disk of saved key {d.key}")
        pairs.append((d.key, new))
    return CreatedVm(
        ref._moId,
        name,
        str(props.get("config.instanceUuid", "")),
        where.datacenter,
        where.datastore,
        tuple(pairs),
        bool(cfg.changeTrackingEnabled),
    )


@dataclass(frozen=True)
class Where:
    """A resolved placement: morefs (``host`` None: vCenter picks) and names."""

    datacenter: str
    folder: str
    pool: str
    host: str | None
    datastore: str


def _resolve(vc: VCenter, p: Placement, saved_ds: str) -> Where:
    if p.host and p.cluster:
        raise UsageError("give --host or --cluster, not both")
    found = vc.all_of_kinds(
        {
            vim.Datacenter: ("name", "vmFolder", "hostFolder"),
            vim.Folder: ("name", "parent"),
            vim.HostSystem: ("name", "parent"),
            vim.ComputeResource: ("name", "resourcePool"),
            vim.ResourcePool: ("name", "owner"),
            vim.Datastore: ("name",),
        }
    )
    dcs = found[vim.Datacenter]
    dc = _datacenter(dcs, p.folder)
    folder = _folder(found[vim.Folder], dcs[dc], p.folder)
    pool, host = _pool(found, p)
    names = {v["name"] for v in found[vim.Datastore].values()}
    datastore = p.datastore or saved_ds
    if datastore not in names:
        hint = "pass --datastore NAME" if not p.datastore else f"choose one of {sorted(names)}"
        raise NotFound(f"datastore {datastore!r} does not exist on the target vCenter; {hint}")
    return Where(dcs[dc]["name"], folder, pool, host, datastore)


def _pool(found: Mapping[type[Any], Mapping[str, Any]], p: Placement) -> tuple[str, str | None]:
    """(resource pool moref, host moref or None) for the placement: the named pool (within
    the host's or cluster's compute resource when one is named), else that compute
    resource's root pool."""
    computes, hosts = found[vim.ComputeResource], found[vim.HostSystem]
    host = None
    if p.host:
        host = _by_name(hosts, p.host, "host")
        compute: str | None = hosts[host]["parent"]._moId
    elif p.cluster:
        compute = _by_name(computes, p.cluster, "cluster")
    else:
        compute = None
    if p.resource_pool:
        pools = {
            m: v
            for m, v in found[vim.ResourcePool].items()
            if compute is None or (v.get("owner") is not None and v["owner"]._moId == compute)
        }
        matches = [m for m, v in sorted(pools.items()) if v.get("name") == p.resource_pool]
        if len(matches) > 1:
            raise UsageError(
                f"{len(matches)} resource pools are named {p.resource_pool!r}: say which host "
                "or cluster with --host or --cluster"
            )
        return _by_name(pools, p.resource_pool, "resource pool"), host
    compute = compute or (min(computes) if computes else None)
    if compute is None:
        raise NotFound("vCenter has no compute resource to place the VM on")
    return computes[compute]["resourcePool"]._moId, host


def _by_name(objs: Mapping[str, Mapping[str, Any]], name: str, what: str) -> str:
    for moref, props in sorted(objs.items()):
        if props.get("name") == name:
            return moref
    raise NotFound(f"no {what} named {name!r} in vCenter")


def _datacenter(dcs: Mapping[str, Mapping[str, Any]], folder: str | None) -> str:
    if folder:
        first = folder.strip("/").split("/", 1)[0]
        return _by_name(dcs, first, "datacenter")
    if len(dcs) != 1:
        raise UsageError("vCenter has several datacenters: say which with --folder /DC/vm")
    return next(iter(dcs))


def _folder(
    folders: Mapping[str, Mapping[str, Any]], dc: Mapping[str, Any], path: str | None
) -> str:
    """The moref of the VM folder ``path`` ("/DC0/vm/sub"), the datacenter's root by default."""
    root = str(dc["vmFolder"]._moId)
    parts = [p for p in (path or "").strip("/").split("/") if p][1:]
    if parts and parts[0] == "vm":
        parts = parts[1:]
    current = root
    for part in parts:
        children = [
            m for m, f in folders.items() if f.get("parent") and f["parent"]._moId == current
        ]
        match = [m for m in children if folders[m].get("name") == part]
        if not match:
            raise NotFound(f"no VM folder {path!r} in vCenter")
        current = match[0]
    return current


def _network_map(vc: VCenter, mapping: Mapping[str, str]) -> NetworkMap:
    found = vc.all_of_kinds(
        {
            vim.dvs.DistributedVirtualPortgroup: ("name", "key", "config.distributedVirtualSwitch"),
            vim.Network: ("name",),
            vim.DistributedVirtualSwitch: ("uuid",),
        }
    )
    switches = {m: str(p.get("uuid", "")) for m, p in found[vim.DistributedVirtualSwitch].items()}
    targets: dict[str, Network] = {}
    keys: dict[str, str] = {}
    for props in found[vim.Network].values():
        targets.setdefault(props["name"], Network(props["name"]))
    for props in found[vim.dvs.DistributedVirtualPortgroup].values():
        switch = props.get("config.distributedVirtualSwitch")
        uuid = switches.get(switch._moId, "") if switch is not None else ""
        net = Network(props["name"], "portgroup", str(props["key"]), uuid)
        targets[net.name] = net
        keys[str(props["key"])] = net.name
    return NetworkMap(targets, dict(mapping), keys)


def find_vm(vc: VCenter, name: str) -> str | None:
    """The moref of the VM called ``name``, None when there is none."""
    for moref, props in sorted(vc.all_of(vim.VirtualMachine, ("name",)).items()):
        if props.get("name") == name:
            return moref
    return None


def find_by_instance_uuid(vc: VCenter, instance_uuid: str) -> str | None:
    """The moref of the VM whose instance UUID is ``instance_uuid``, None when none has it."""
    found = vc.all_of(vim.VirtualMachine, ("config.instanceUuid",))
    for moref, props in sorted(found.items()):
        if props.get("config.instanceUuid") == instance_uuid:
            return moref
    return None


def power_state(vc: VCenter, moref: str) -> str:
    return str(
        vc.props(vc.ref(vim.VirtualMachine, moref), "runtime.powerState").get(
            "runtime.powerState", "unknown"
        )
    )


def power_on(vc: VCenter, moref: str) -> None:
    vm = vc.ref(vim.VirtualMachine, moref)
    _task(vc, vm.PowerOnVM_Task(), f"powering on {moref}")


def power_off(vc: VCenter, moref: str) -> None:
    """Power the VM off (hard); nothing to do when it is off already."""
    if power_state(vc, moref) == "poweredOff":
        return
    vm = vc.ref(vim.VirtualMachine, moref)
    _task(vc, vm.PowerOffVM_Task(), f"powering off {moref}")


def destroy(vc: VCenter, moref: str) -> None:
    """Power off and delete the VM with its files."""
    power_off(vc, moref)
    vm = vc.ref(vim.VirtualMachine, moref)
    _task(vc, vm.Destroy_Task(), f"deleting VM {moref}")


def rename(vc: VCenter, moref: str, name: str) -> None:
    vm = vc.ref(vim.VirtualMachine, moref)
    _task(vc, vm.Rename_Task(newName=name), f"renaming {moref} to {name}")


def reset_cbt(vc: VCenter, moref: str) -> None:
    """Switch change tracking off and on: every earlier changeId becomes invalid, so the next
    backup of this VM reads its disks in full (the baseline rules)."""
    vm = vc.ref(vim.VirtualMachine, moref)
    for enabled in (False, True):
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=enabled)
        _task(vc, vm.ReconfigVM_Task(spec=spec), f"resetting CBT of {moref}")


def _task(vc: VCenter, task: Any, what: str) -> Any:
    try:
        return vc.wait_task(task, what)
    except TaskFailed as exc:
        raise VCenterError(str(exc)) from None
    except vmodl.MethodFault as exc:
        raise VCenterError(f"{what} failed: {getattr(exc, 'msg', '') or exc}") from None


def add_disk(vc: VCenter, moref: str, capacity: int, datastore: str) -> DiskRef:
    """Add a new empty thin disk of ``capacity`` bytes on ``datastore`` to an existing VM, on
    its first SCSI controller's lowest free unit; returns the new disk."""
    vm = vc.ref(vim.VirtualMachine, moref)
    before = list(vc.props(vm, "config.hardware.device").get("config.hardware.device", ()))
    controller, unit = _free_unit(before)
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
    )
    disk = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=controller,
        unitNumber=unit,
        capacityInBytes=capacity,
        capacityInKB=capacity // 1024,
        backing=backing,
    )
    change = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    spec = vim.vm.ConfigSpec(deviceChange=[change])
    _task(vc, vm.ReconfigVM_Task(spec=spec), f"adding a disk to {moref}")
    old = {int(d.key) for d in before}
    after = vc.props(vm, "config.hardware.device").get("config.hardware.device", ())
    new = [d for d in disk_refs(after) if d.key not in old]
    if len(new) != 1:
        raise RestoreError(f"vCenter did not add the disk to {moref}")
    return new[0]


def remove_disk(vc: VCenter, moref: str, key: int) -> None:
    """Detach the disk ``key`` from the VM and delete its files."""
    vm = vc.ref(vim.VirtualMachine, moref)
    devices = vc.props(vm, "config.hardware.device").get("config.hardware.device", ())
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualDisk) and int(dev.key) == key:
            change = vim.vm.device.VirtualDeviceSpec(
                operation="remove", fileOperation="destroy", device=dev
            )
            spec = vim.vm.ConfigSpec(deviceChange=[change])
            _task(vc, vm.ReconfigVM_Task(spec=spec), f"removing disk {key} of {moref}")
            return


def _free_unit(devices: Sequence[Any]) -> tuple[int, int]:
    """(SCSI controller key, lowest free unit number on it; 7 is the controller's own)."""
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualSCSIController):
            used = {
                int(d.unitNumber)
                for d in devices
                if d.controllerKey == dev.key and d.unitNumber is not None
            }
            free = [u for u in range(16) if u != 7 and u not in used]
            if free:
                return int(dev.key), free[0]
    raise RestoreError("the VM has no SCSI controller with a free unit for the disk")


def home_datastore(vc: VCenter, moref: str) -> str:
    """The datastore holding the VM's home (its .vmx)."""
    vm = vc.ref(vim.VirtualMachine, moref)
    path = str(vc.props(vm, "config.files.vmPathName").get("config.files.vmPathName", ""))
    if not path.startswith("[") or "]" not in path:
        raise RestoreError(f"cannot tell the datastore of VM {moref} ({path!r}); pass --datastore")
    return path[1:].split("]", 1)[0]


def restore_identity(vc: VCenter, moref: str, config_xml: str, api_version: str) -> None:
    """Give the VM the BIOS and instance UUID of the saved configuration (vCenter may have
    picked new ones while another VM still held them, as during ``--overwrite``)."""
    cfg = load_config(config_xml, api_version)
    vm = vc.ref(vim.VirtualMachine, moref)
    now = vc.props(vm, "config.uuid", "config.instanceUuid")
    if (now.get("config.uuid"), now.get("config.instanceUuid")) == (cfg.uuid, cfg.instanceUuid):
        return
    spec = vim.vm.ConfigSpec(uuid=cfg.uuid, instanceUuid=cfg.instanceUuid)
    _task(vc, vm.ReconfigVM_Task(spec=spec), f"restoring the identity of {moref}")
