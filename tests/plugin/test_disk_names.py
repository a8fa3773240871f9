"""Disk names on the vCenter side: controller units read from a VM's devices, `--exclude-disk`
in every form of vmaccel.vocabulary.disknames, and the names an image stores for later."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vim

from vmaccel.plugin.engine.baseline import Baseline
from vmaccel.plugin.engine.selection import excluded_disks
from vmaccel.plugin.engine.vmjob import image_meta
from vmaccel.plugin.vcenter.inventory import disk_refs
from vmaccel.plugin.vcenter.models import DiskRef
from vmaccel.vocabulary.disknames import DiskIdentity
from vmaccel.vocabulary.errors import UsageError

MiB = 1 << 20


def _disk(key: int, controller: int, unit: int, label: str) -> Any:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=f"[ds1] vm/vm_{key}.vmdk", diskMode="persistent", uuid=f"u-{key}"
    )
    return vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=controller,
        unitNumber=unit,
        capacityInBytes=MiB,
        deviceInfo=vim.Description(label=label, summary=""),
        backing=backing,
    )


DEVICES = [
    vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
    vim.vm.device.VirtualLsiLogicController(key=1001, busNumber=1),
    vim.vm.device.VirtualAHCIController(key=15000, busNumber=0),
    vim.vm.device.VirtualNVMEController(key=31000, busNumber=2),
    vim.vm.device.VirtualIDEController(key=200, busNumber=1),
    _disk(2000, 1000, 0, "Hard disk 1"),
    _disk(2001, 1001, 15, "Hard disk 2"),
    _disk(16000, 15000, 3, "Hard disk 3"),
    _disk(31000, 31000, 1, "Hard disk 4"),
    _disk(3002, 200, 0, "Hard disk 5"),
    _disk(2005, 9999, 0, "Hard disk 6"),  # its controller is not among the devices
]
DISKS = disk_refs(DEVICES)


def test_units_come_from_the_controllers() -> None:
    assert [(d.name, d.label, d.unit) for d in DISKS] == [
        ("disk-2000", "Hard disk 1", "scsi0:0"),
        ("disk-2001", "Hard disk 2", "scsi1:15"),
        ("disk-16000", "Hard disk 3", "sata0:3"),
        ("disk-31000", "Hard disk 4", "nvme2:1"),
        ("disk-3002", "Hard disk 5", "ide1:0"),
        ("disk-2005", "Hard disk 6", None),
    ]
    assert DISKS[0].identity == DiskIdentity("disk-2000", 2000, "Hard disk 1", "scsi0:0")


@pytest.mark.parametrize(
    "disk", ["disk-2001", "2001", "Hard disk 2", "hard disk 2", "scsi1:15", "SCSI1:15"]
)
def test_exclude_disk_takes_every_form(disk: str) -> None:
    names, warnings = excluded_disks({f"web:{disk}", "db:disk-2000"}, "web", DISKS)
    assert names == {"disk-2001"} and warnings == ()


def test_exclude_disk_for_a_vm_whose_name_holds_colons() -> None:
    names, _ = excluded_disks({"web:prod:scsi0:0"}, "web:prod", DISKS)
    assert names == {"disk-2000"}


def test_exclude_disk_naming_no_disk_is_a_warning_with_the_choices() -> None:
    names, warnings = excluded_disks({"web:Hard disk 9", "web:2000"}, "web", DISKS)
    assert names == {"disk-2000"}
    (warning,) = warnings
    assert warning.startswith(
        "disk exclusion 'web:Hard disk 9' left nothing out: web has no disk 'Hard disk 9'; choose "
    )
    assert "disk-2001 (Hard disk 2, scsi1:15, key 2001)" in warning


def test_exclude_disk_naming_two_disks_is_a_usage_error() -> None:
    clash = (*DISKS[:1], DiskRef(2009, "scsi0:0", MiB, "", None, None, "persistent", "flat", ""))
    with pytest.raises(UsageError, match="names 2 disks of web"):
        excluded_disks({"web:scsi0:0"}, "web", clash)


def test_an_image_stores_label_key_and_unit() -> None:
    disk = DISKS[1]
    base = Baseline("uuid-web", disk.key, disk.uuid, disk.capacity, None)
    meta = image_meta(disk, base, "nbd")
    assert (meta["label"], meta["key"], meta["unit"]) == ("Hard disk 2", 2001, "scsi1:15")
    assert meta["baseline"]["disk_key"] == 2001 and meta["transport"] == "nbd"
    assert "unit" not in image_meta(DISKS[5], base, "nbd")
