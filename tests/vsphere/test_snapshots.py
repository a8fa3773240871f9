"""Frozen snapshot disks, disk management and power through the bed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import BedError, VmInfo, VsphereBed

pytestmark = pytest.mark.vsphere

MiB = 1 << 20


def test_folder_range_reads_return_frozen_bytes(vsphere_bed: VsphereBed, bed_vm: VmInfo,
                                                tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(2 * MiB))
    disk = vsphere_bed.control.attach_disk(bed_vm.name, image)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        snapshot = vc.create_snapshot(si, vm, "frozen")
        (frozen,) = vc.snapshot_disks(si, snapshot)
        assert frozen.capacityInBytes == 2 * MiB
        vsphere_bed.control.guest_write(bed_vm.name, disk.key, MiB, b"\0" * 4096)

        frozen_flat = frozen.backing.fileName.removesuffix(".vmdk") + "-flat.vmdk"
        resp = vc.read_range(vsphere_bed, si, frozen_flat, MiB - 100, 8192)
        assert resp.status_code == 206
        assert resp.content == image.read_bytes()[MiB - 100:MiB + 8092]
        current = vc.read_range(vsphere_bed, si, disk.file_name.replace(".vmdk", "-flat.vmdk"),
                                MiB, 4096)
        assert current.content == b"\0" * 4096

        vc.remove_snapshot(si, snapshot)
        assert vc.read_range(vsphere_bed, si, frozen_flat, 0, 512).status_code == 404


def test_attached_disk_has_a_vmfs_descriptor(vsphere_bed: VsphereBed, bed_vm: VmInfo,
                                             tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\1" * MiB)
    disk = vsphere_bed.control.attach_disk(bed_vm.name, image)
    descriptor = disk.path.with_name(disk.path.name.replace("-flat", "")).read_text()
    assert 'createType="vmfs"' in descriptor
    assert f'RW {MiB // 512} VMFS "{disk.path.name}"' in descriptor
    with vc.connect(vsphere_bed) as si:
        devices = vc.props(si, vc.vm_by_moref(si, bed_vm.moref), "config.hardware.device")
        (vm_disk,) = [d for d in devices["config.hardware.device"] if d.key == disk.key]
        assert vm_disk.capacityInBytes == MiB and vm_disk.backing.uuid == disk.uuid


def test_add_and_grow_disk(vsphere_bed: VsphereBed, bed_vm: VmInfo, tmp_path: Path) -> None:
    image = tmp_path / "second.raw"
    image.write_bytes(b"\2" * MiB)
    second = vsphere_bed.control.add_disk(bed_vm.name, image)
    assert second.capacity == MiB and second.path.read_bytes() == image.read_bytes()
    grown = vsphere_bed.control.grow_disk(bed_vm.name, second.key, 3 * MiB)
    assert grown.capacity == 3 * MiB and grown.path.stat().st_size == 3 * MiB
    with pytest.raises(BedError, match="only grow"):
        vsphere_bed.control.grow_disk(bed_vm.name, second.key, MiB)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        snapshot = vc.create_snapshot(si, vm, "two disks")
        disks = {d.key: d for d in vc.snapshot_disks(si, snapshot)}
        assert len(disks) == 2 and disks[second.key].capacityInBytes == 3 * MiB


def test_set_power(vsphere_bed: VsphereBed, bed_vm: VmInfo) -> None:
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        vsphere_bed.control.set_power(bed_vm.name, "poweredOff")
        assert vc.props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOff"
        vsphere_bed.control.set_power(bed_vm.name, "poweredOff")  # idempotent
        vsphere_bed.control.set_power(bed_vm.moref, "poweredOn")
        assert vc.props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOn"
