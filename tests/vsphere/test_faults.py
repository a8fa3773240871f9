"""Fault injection: snapshot and task failures as vCenter reports them."""

from __future__ import annotations

import pytest
from pyVmomi import vim, vmodl

from tests.vsphere import vimclient as vc
from tests.vsphere.bed import VmInfo, VsphereBed

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
