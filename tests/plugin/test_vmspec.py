"""The saved configuration -> ConfigSpec translation (vmaccel.plugin.vcenter.vmspec), without
vCenter: a configuration as vSphere saves it (default devices, a parent backing, CBT keys,
two NICs) goes through SOAP XML and comes out as the spec VMware's backup guide prescribes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pyVmomi import SoapAdapter, vim

from vmaccel.plugin.vcenter.vmspec import (
    DiskChoice,
    Network,
    NetworkMap,
    SpecInput,
    build_spec,
    load_config,
    saved_datastore,
)
from vmaccel.vocabulary.errors import RestoreError, UsageError

VERSION = "vim.version.version11"
GiB = 1 << 30
dev = vim.vm.device


def _config() -> Any:
    parent = dev.VirtualDisk.FlatVer2BackingInfo(fileName="[old] vm/base.vmdk")
    disk = dev.VirtualDisk(
        key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=4 * GiB,
        capacityInKB=4 * GiB // 1024,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(
            fileName="[old] vm/vm-000001.vmdk", diskMode="persistent", thinProvisioned=False,
            uuid="6000C29a-0000", changeId="52 aa/7", parent=parent,
        ),
    )  # fmt: skip
    dvs_nic = dev.VirtualVmxnet3(
        key=4000, controllerKey=100, unitNumber=7, macAddress="00:50:56:01:02:03",
        addressType="assigned",
        backing=dev.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid="old-switch", portgroupKey="dvportgroup-9")
        ),
    )  # fmt: skip
    std_nic = dev.VirtualE1000(
        key=4001, controllerKey=100, unitNumber=8, macAddress="00:50:56:01:02:04",
        backing=dev.VirtualEthernetCard.NetworkBackingInfo(deviceName="Backup LAN"),
    )  # fmt: skip
    devices = [
        dev.VirtualIDEController(key=200, busNumber=0),
        dev.VirtualIDEController(key=201, busNumber=1),
        dev.VirtualPS2Controller(key=300, busNumber=0),
        dev.VirtualPCIController(key=100, busNumber=0),
        dev.VirtualSIOController(key=400, busNumber=0),
        dev.VirtualKeyboard(key=600, controllerKey=300, unitNumber=0),
        dev.VirtualPointingDevice(key=700, controllerKey=300, unitNumber=1),
        dev.VirtualVideoCard(key=500, controllerKey=100, unitNumber=0),
        dev.VirtualVMCIDevice(key=12000, controllerKey=100, unitNumber=17),
        dev.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing"),
        dev.VirtualCdrom(
            key=3002, controllerKey=201, unitNumber=0,
            backing=dev.VirtualCdrom.IsoBackingInfo(fileName="[iso] tools.iso"),
        ),
        disk,
        dvs_nic,
        std_nic,
    ]  # fmt: skip
    extra = {"ctkEnabled": "TRUE", "scsi0:0.ctkEnabled": "TRUE", "migrate.hostLog": "x",
             "sched.swap.derivedName": "/vmfs/x.vswp", "guestinfo.role": "db"}  # fmt: skip
    cfg = vim.vm.ConfigInfo(
        changeVersion="1", modified=datetime(2026, 1, 1, tzinfo=UTC), guestFullName="Ubuntu",
        template=False, alternateGuestName="", flags=vim.vm.FlagInfo(),
        defaultPowerOps=vim.vm.DefaultPowerOpInfo(),
        name="db01", guestId="ubuntu64Guest", version="vmx-19", firmware="efi",
        uuid="4210aaaa-0000", instanceUuid="5010bbbb-0000", changeTrackingEnabled=True,
        files=vim.vm.FileInfo(vmPathName="[old] db01/db01.vmx"),
        hardware=vim.vm.VirtualHardware(numCPU=4, numCoresPerSocket=2, memoryMB=8192,
                                        device=devices),
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items()],
        bootOptions=vim.vm.BootOptions(bootDelay=3, bootOrder=[
            vim.vm.BootOptions.BootableDiskDevice(deviceKey=2000)]),
    )  # fmt: skip
    xml = SoapAdapter.Serialize(cfg, version=VERSION)
    return load_config(xml.decode(), VERSION)


NETWORKS = NetworkMap(
    targets={
        "VM Network": Network("VM Network"),
        "Prod": Network("Prod", "portgroup", "dvportgroup-20", "new-switch"),
        "Backup LAN": Network("Backup LAN"),
    },
    mapping={"db-pg": "Prod"},
    portgroup_names={"dvportgroup-9": "db-pg"},
)


def _spec(keep: bool = False, disks: tuple[DiskChoice, ...] = (DiskChoice(2000),)) -> Any:
    want = SpecInput("db01-restored", "fast", NETWORKS, keep, disks)
    return build_spec(_config(), want)


def _added(spec: Any, kind: type) -> list[Any]:
    return [c for c in spec.deviceChange if isinstance(c.device, kind)]


def test_the_saved_configuration_round_trips_with_its_version() -> None:
    cfg = _config()
    assert (cfg.hardware.numCPU, cfg.hardware.memoryMB, cfg.firmware) == (4, 8192, "efi")
    assert cfg.changeTrackingEnabled is True and saved_datastore(cfg) == "old"
    with pytest.raises(RestoreError, match="cannot be read"):
        load_config("<not xml", VERSION)


def test_shape_kept_default_devices_left_out_keys_negative() -> None:
    spec = _spec()
    assert (spec.name, spec.numCPUs, spec.numCoresPerSocket, spec.memoryMB) == (
        "db01-restored", 4, 2, 8192,
    )  # fmt: skip
    assert (spec.firmware, spec.guestId, spec.version) == ("efi", "ubuntu64Guest", "vmx-19")
    assert spec.files.vmPathName == "[fast]"
    kinds = [type(c.device).__name__ for c in spec.deviceChange]
    assert sorted(kinds) == sorted(
        ["vim.vm.device.ParaVirtualSCSIController", "vim.vm.device.VirtualCdrom",
         "vim.vm.device.VirtualVmxnet3", "vim.vm.device.VirtualE1000",
         "vim.vm.device.VirtualDisk"]
    )  # fmt: skip
    assert all(c.device.key < 0 and c.operation == "add" for c in spec.deviceChange)
    assert len({c.device.key for c in spec.deviceChange}) == len(spec.deviceChange)
    assert spec.bootOptions.bootDelay == 3 and not spec.bootOptions.bootOrder


def test_disk_is_new_thin_without_parent_or_identity() -> None:
    spec = _spec()
    (controller,) = _added(spec, dev.ParaVirtualSCSIController)
    (change,) = _added(spec, dev.VirtualDisk)
    disk = change.device
    assert change.fileOperation == "create"
    assert disk.controllerKey == controller.device.key and disk.unitNumber == 0
    assert disk.capacityInBytes == 4 * GiB
    b = disk.backing
    assert (b.fileName, b.thinProvisioned, b.diskMode) == ("[fast]", True, "persistent")
    assert b.parent is None and b.uuid is None and b.changeId is None
    (cdrom,) = _added(spec, dev.VirtualCdrom)
    assert cdrom.device.controllerKey == 201  # the default IDE controller every VM has
    assert isinstance(cdrom.device.backing, dev.VirtualCdrom.RemotePassthroughBackingInfo)


def test_an_existing_disk_is_attached_as_is() -> None:
    spec = _spec(disks=(DiskChoice(2000, "[ir] db01/disk-2000.vmdk"),))
    (change,) = _added(spec, dev.VirtualDisk)
    assert change.fileOperation is None
    assert change.device.backing.fileName == "[ir] db01/disk-2000.vmdk"


def test_identity_is_new_unless_kept() -> None:
    spec = _spec()
    assert spec.uuid is None and spec.instanceUuid is None
    for change in _added(spec, dev.VirtualEthernetCard):
        assert change.device.addressType == "generated" and not change.device.macAddress
    kept = _spec(keep=True)
    assert (kept.uuid, kept.instanceUuid) == ("4210aaaa-0000", "5010bbbb-0000")
    macs = sorted(c.device.macAddress for c in _added(kept, dev.VirtualEthernetCard))
    assert macs == ["00:50:56:01:02:03", "00:50:56:01:02:04"]
    assert {c.device.addressType for c in _added(kept, dev.VirtualEthernetCard)} == {"manual"}


def test_networks_are_mapped_and_cbt_keys_dropped() -> None:
    spec = _spec()
    (dvs,) = _added(spec, dev.VirtualVmxnet3)
    port = dvs.device.backing.port
    assert (port.switchUuid, port.portgroupKey) == ("new-switch", "dvportgroup-20")
    (std,) = _added(spec, dev.VirtualE1000)
    assert std.device.backing.deviceName == "Backup LAN"  # unmapped: same name on the target
    assert {o.key: o.value for o in spec.extraConfig} == {"guestinfo.role": "db"}
    assert spec.changeTrackingEnabled is None


def test_a_missing_network_or_disk_is_refused_by_name() -> None:
    lost = NetworkMap(targets={"VM Network": Network("VM Network")})
    want = SpecInput("x", "fast", lost, False, [DiskChoice(2000)])
    with pytest.raises(UsageError, match=r"'dvportgroup-9'.*--network"):
        build_spec(_config(), want)
    with pytest.raises(UsageError, match="no disk with key 2001"):
        _spec(disks=(DiskChoice(2001),))
