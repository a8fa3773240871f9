"""Fault injection: snapshot and task failures as vCenter reports them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import requests
from pyVmomi import vim, vmodl

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import VmInfo, VsphereBed

pytestmark = pytest.mark.vsphere


def test_quiesce_fault_fails_only_quiesced_snapshots(vsphere_bed: VsphereBed,
                                                     bed_vm: VmInfo) -> None:
    vsphere_bed.control.inject_fault("quiesce", count=-1)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        for _ in range(2):
            with pytest.raises(vim.fault.ApplicationQuiesceFault):
                vc.create_snapshot(si, vm, "quiesced", quiesce=True)
        snapshot = vc.create_snapshot(si, vm, "crash-consistent", quiesce=False)
        tree = vc.props(si, vm, "snapshot.rootSnapshotList")["snapshot.rootSnapshotList"]
        assert [(t.snapshot, t.quiesced) for t in tree] == [(snapshot, False)]


def test_snapshot_fault_fails_the_next_snapshot_once(vsphere_bed: VsphereBed,
                                                     bed_vm: VmInfo) -> None:
    vsphere_bed.control.inject_fault("snapshot")
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        with pytest.raises(vim.fault.SnapshotFault):
            vc.create_snapshot(si, vm, "fails")
        snapshot = vc.create_snapshot(si, vm, "works")
        tree = vc.props(si, vm, "snapshot.rootSnapshotList")["snapshot.rootSnapshotList"]
        assert [t.snapshot for t in tree] == [snapshot]


def test_task_fault_fails_the_next_task_of_any_kind(vsphere_bed: VsphereBed,
                                                    bed_vm: VmInfo) -> None:
    vsphere_bed.control.inject_fault("task")
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        with pytest.raises(vmodl.fault.SystemError):
            vc.wait_task(si, vm.PowerOffVM_Task())
        assert vc.props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOn"
        vc.wait_task(si, vm.PowerOffVM_Task())
        assert vc.props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOff"


def test_session_fault_answers_not_authenticated_until_used_up(vsphere_bed: VsphereBed) -> None:
    any_vm = vsphere_bed.control.vms()[0]
    vsphere_bed.control.inject_fault("session", 2, method="RetrievePropertiesEx", after=1)
    with vc.connect(vsphere_bed) as si:  # Login and RetrieveServiceContent are never failed
        vm = vc.vm_by_moref(si, any_vm.moref)
        assert vc.props(si, vm, "name") == {"name": any_vm.name}  # let through (after=1)
        for _ in range(2):
            with pytest.raises(vim.fault.NotAuthenticated):
                vc.props(si, vm, "name")
        assert vc.props(si, vm, "name") == {"name": any_vm.name}


def test_qcda_fault_fails_the_kth_page_and_folder_fault_cuts_the_body(
        vsphere_bed: VsphereBed, bed_vm: VmInfo, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(random.Random(3).randbytes(4 << 20))  # 4 pages of the 1 MiB window
    disk = vsphere_bed.control.attach_disk(bed_vm.name, image)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        vc.enable_cbt(si, vm)
        snap = vc.create_snapshot(si, vm, "frozen")
        (frozen,) = vc.snapshot_disks(si, snap)
        vsphere_bed.control.inject_fault("qcda", 1, after=2)
        calls = 0
        with pytest.raises(vmodl.fault.SystemError):
            for offset in range(0, disk.capacity, 1 << 20):
                vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=disk.key, startOffset=offset,
                                         changeId="*")
                calls += 1
        assert calls == 2
        assert vc.changed_extents(vm, snap, disk.key, disk.capacity, "*")[1] == 4

        flat = frozen.backing.fileName.replace(".vmdk", "-flat.vmdk")
        vsphere_bed.control.inject_fault("folder", 1, cut_bytes=1000)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            vc.read_range(vsphere_bed, si, flat, 0, 1 << 20)
        whole = vc.read_range(vsphere_bed, si, flat, 0, 1 << 20)
        assert whole.status_code == 206 and whole.content == image.read_bytes()[:1 << 20]
