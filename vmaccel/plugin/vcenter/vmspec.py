"""The saved configuration of a backed-up VM turned into the ``ConfigSpec`` that creates it again.

Pure translation, no vCenter calls: the configuration is the ``snapshot.config`` saved with the
backup (``BackupMeta.config_xml``, SOAP XML of a ``vim.vm.ConfigInfo`` written with the API
version in ``BackupMeta.api_version``). The rules follow VMware's backup guide:

* default devices are left out (IDE, PS/2, PCI and SIO controllers, keyboard, pointing device,
  video card, VMCI): vSphere adds its own, and vcsim refuses a spec that repeats them; devices
  on the default IDE controllers keep their controller keys (200/201), which every new VM has;
* every added device gets a negative temporary key; controller references are remapped;
* disks have no parent backing: a new thin disk (``fileOperation="create"``) on the target
  datastore, or an existing disk file attached as is;
* identity (BIOS and instance UUID, MAC addresses) is new unless ``keep_identity``;
* ``extraConfig`` loses the CBT keys (``ctkEnabled``, ``scsiX:Y.ctkEnabled``) and the keys that
  describe the old placement (swap file, migration, replication filters);
* NICs are moved to the mapped target network; a source network that neither maps nor exists
  on the target is refused (:class:`~vmaccel.vocabulary.errors.UsageError` naming it).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.parsers.expat import ExpatError, ParserCreate

from pyVmomi import vim
from pyVmomi.SoapAdapter import SoapDeserializer

from vmaccel.vocabulary.errors import RestoreError, UsageError

NS_SEP = " "  # pyVmomi's namespace separator for the expat parser

_DEFAULT_DEVICES = (
    vim.vm.device.VirtualIDEController,
    vim.vm.device.VirtualPS2Controller,
    vim.vm.device.VirtualPCIController,
    vim.vm.device.VirtualSIOController,
    vim.vm.device.VirtualKeyboard,
    vim.vm.device.VirtualPointingDevice,
    vim.vm.device.VirtualVideoCard,
    vim.vm.device.VirtualVMCIDevice,
)
_KEPT_CONTROLLERS = (
    vim.vm.device.VirtualSCSIController,
    vim.vm.device.VirtualSATAController,
    vim.vm.device.VirtualNVMEController,
    vim.vm.device.VirtualUSBController,
    vim.vm.device.VirtualUSBXHCIController,
)
_DROPPED_EXTRA = re.compile(
    r"^(ctkEnabled|.*\.ctkEnabled|sched\.swap\.derivedName|migrate\..*|hbr_filter\..*)$"
)


def load_config(config_xml: str, api_version: str) -> Any:
    """The ``vim.vm.ConfigInfo`` saved as SOAP XML with ``api_version``. Deserialized with
    that version, so no field newer than the default version is dropped."""
    parser = ParserCreate(namespace_separator=NS_SEP)
    reader = SoapDeserializer(stub=None, version=api_version or None)
    reader.Deserialize(parser, vim.vm.ConfigInfo)
    try:
        parser.Parse(config_xml.encode(), True)
    except (ExpatError, TypeError, KeyError, AttributeError, ValueError) as exc:
        raise RestoreError(
            f"the configuration saved with the backup cannot be read: {exc}"
        ) from None
    cfg = reader.GetResult()
    if not isinstance(cfg, vim.vm.ConfigInfo):
        raise RestoreError("the configuration saved with the backup is no VM configuration")
    return cfg


@dataclass(frozen=True)
class Network:
    """A network on the target vCenter: a standard or opaque ``network`` (by name) or a
    distributed ``portgroup`` (its key and its switch's uuid)."""

    name: str
    kind: str = "network"
    key: str | None = None
    switch_uuid: str | None = None


@dataclass(frozen=True)
class NetworkMap:
    """How NICs move. ``targets``: networks of the target by name; ``mapping``: source name ->
    target name (``--network OLD=NEW``); ``portgroup_names``: portgroup key -> name, for NICs
    whose saved backing names a distributed portgroup by key only."""

    targets: Mapping[str, Network]
    mapping: Mapping[str, str] = field(default_factory=dict)
    portgroup_names: Mapping[str, str] = field(default_factory=dict)

    def source_name(self, backing: Any) -> str:
        """The name of the network a saved NIC backing is on (the portgroup key when the
        target does not know that portgroup)."""
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            key = str(backing.port.portgroupKey or "") if backing.port else ""
            return self.portgroup_names.get(key, key or "")
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
            return str(backing.opaqueNetworkId or "")
        return str(getattr(backing, "deviceName", "") or "")

    def backing(self, old: Any) -> Any:
        """The backing for a NIC that was on ``old``'s network; UsageError when that network
        neither maps to nor exists on the target."""
        source = self.source_name(old)
        wanted = self.mapping.get(source, source)
        target = self.targets.get(wanted)
        if target is None:
            how = f"mapped to {wanted!r}, which" if wanted != source else "which"
            raise UsageError(
                f"the backup's network {source!r} ({how} does not exist on the target vCenter); "
                f"map it with --network {source or 'OLD'}=NEW"
            )
        if target.kind == "portgroup":
            port = vim.dvs.PortConnection(switchUuid=target.switch_uuid, portgroupKey=target.key)
            return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)
        return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=target.name)


@dataclass(frozen=True)
class DiskChoice:
    """A saved disk (by device key) to give the new VM: ``attach`` an existing disk file
    (``"[ds] dir/x.vmdk"``), or a new empty thin disk of the same capacity when None."""

    key: int
    attach: str | None = None


@dataclass(frozen=True)
class SpecInput:
    """Everything besides the saved configuration that shapes the spec. ``datastore`` is a
    datastore name (VM home and new disks)."""

    name: str
    datastore: str
    networks: NetworkMap
    keep_identity: bool
    disks: Sequence[DiskChoice]


def saved_datastore(cfg: Any) -> str:
    """The datastore of the saved VM home (``files.vmPathName``), "" when unknown."""
    path = str(getattr(cfg.files, "vmPathName", "") or "") if cfg.files else ""
    return path[1:].split("]", 1)[0] if path.startswith("[") else ""


def build_spec(cfg: Any, want: SpecInput) -> Any:
    """The ``vim.vm.ConfigSpec`` creating a VM shaped like ``cfg`` (see the module docstring).

    Raises :class:`UsageError` for a disk key the configuration lacks or an unmappable network.
    """
    hw = cfg.hardware
    spec = vim.vm.ConfigSpec(
        name=want.name,
        guestId=cfg.guestId,
        version=cfg.version,
        numCPUs=hw.numCPU,
        numCoresPerSocket=hw.numCoresPerSocket,
        memoryMB=hw.memoryMB,
        firmware=cfg.firmware,
        annotation=cfg.annotation,
        flags=cfg.flags,
        cpuHotAddEnabled=cfg.cpuHotAddEnabled,
        memoryHotAddEnabled=cfg.memoryHotAddEnabled,
        nestedHVEnabled=cfg.nestedHVEnabled,
        files=vim.vm.FileInfo(vmPathName=f"[{want.datastore}]"),
        extraConfig=[
            vim.option.OptionValue(key=o.key, value=o.value)
            for o in cfg.extraConfig or ()
            if not _DROPPED_EXTRA.match(str(o.key))
        ],
    )
    if cfg.bootOptions is not None:
        boot = cfg.bootOptions
        boot.bootOrder = []  # names old device keys
        spec.bootOptions = boot
    if want.keep_identity:
        spec.uuid, spec.instanceUuid = cfg.uuid, cfg.instanceUuid
    spec.deviceChange = list(_device_changes(list(hw.device or ()), want))
    return spec


def _device_changes(devices: list[Any], want: SpecInput) -> Iterator[Any]:
    keys = itertools.count(-100, -1)
    by_key = {int(d.key): d for d in devices}
    remap: dict[int, int] = {}
    for dev in devices:  # default IDE controllers keep their keys: every new VM has them
        if isinstance(dev, vim.vm.device.VirtualIDEController):
            remap[int(dev.key)] = int(dev.key)
    for dev in devices:
        if isinstance(dev, _KEPT_CONTROLLERS) and not isinstance(dev, _DEFAULT_DEVICES):
            remap[int(dev.key)] = next(keys)
            yield _add(_controller(dev, remap[int(dev.key)]))
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualEthernetCard):
            yield _add(_nic(dev, next(keys), want))
        elif isinstance(dev, vim.vm.device.VirtualCdrom) and dev.controllerKey in remap:
            yield _add(_cdrom(dev, next(keys), remap))
    for choice in want.disks:
        old = by_key.get(choice.key)
        if not isinstance(old, vim.vm.device.VirtualDisk):
            raise UsageError(f"the saved configuration has no disk with key {choice.key}")
        if old.controllerKey not in remap:
            raise RestoreError(f"disk {choice.key} sits on a controller that cannot be recreated")
        disk = _disk(old, next(keys), remap[old.controllerKey], choice, want.datastore)
        yield _add(disk, create=choice.attach is None)


def _add(device: Any, create: bool = False) -> Any:
    """An "add" device change; ``create`` makes a new disk file for it."""
    change = vim.vm.device.VirtualDeviceSpec(operation="add", device=device)
    if create:
        change.fileOperation = vim.vm.device.VirtualDeviceSpec.FileOperation.create
    return change


def _controller(old: Any, key: int) -> Any:
    new = type(old)(key=key, busNumber=old.busNumber)
    if isinstance(old, vim.vm.device.VirtualSCSIController):
        new.sharedBus = old.sharedBus or "noSharing"
    return new


def _nic(old: Any, key: int, want: SpecInput) -> Any:
    new = type(old)(key=key, backing=want.networks.backing(old.backing))
    connect = old.connectable
    new.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
        startConnected=bool(connect.startConnected) if connect else True,
        allowGuestControl=bool(connect.allowGuestControl) if connect else True,
        connected=False,
    )
    new.wakeOnLanEnabled = old.wakeOnLanEnabled
    if want.keep_identity and old.macAddress:
        new.addressType, new.macAddress = "manual", old.macAddress
    else:
        new.addressType = "generated"
    return new


def _cdrom(old: Any, key: int, remap: Mapping[int, int]) -> Any:
    """A CD-ROM on the client device: the saved ISO or host drive may not exist any more."""
    backing = vim.vm.device.VirtualCdrom.RemotePassthroughBackingInfo(
        deviceName="", exclusive=False
    )
    return vim.vm.device.VirtualCdrom(
        key=key,
        controllerKey=remap[old.controllerKey],
        unitNumber=old.unitNumber,
        backing=backing,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=False, allowGuestControl=True, connected=False
        ),
    )


def _disk(old: Any, key: int, controller: int, choice: DiskChoice, datastore: str) -> Any:
    capacity = int(old.capacityInBytes or (old.capacityInKB or 0) * 1024)
    mode = getattr(old.backing, "diskMode", None) or "persistent"
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=choice.attach or f"[{datastore}]",
        diskMode=mode,
        thinProvisioned=True,
    )
    return vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=controller,
        unitNumber=old.unitNumber,
        capacityInBytes=capacity,
        capacityInKB=capacity // 1024,
        backing=backing,
    )
