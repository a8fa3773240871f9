"""The bed's snapshot log: every snapshot created and removed through pyVmomi is recorded, in
the bed's order; replaying the log gives the snapshots open at once per datastore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyVmomi import vim

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import BedControl, VmInfo, VsphereBed
from testbed.vsphere.bedrecords import SnapshotEvent, SnapshotEventKind
from testbed.vsphere.snaplog import most_open_per_datastore, unpaired

DS = "LocalDS_0"  # where the bed's VMs keep their disks


def _last_seq(control: BedControl) -> int:
    return max((e.seq for e in control.snapshot_events()), default=0)


def _of(control: BedControl, since: int, vm: VmInfo) -> list[SnapshotEvent]:
    return [e for e in control.snapshot_events(since) if e.vm_moref == vm.moref]


@pytest.mark.vsphere
def test_creates_and_removals_are_logged_in_the_beds_order(vsphere_bed: VsphereBed,
                                                           bed_vm: VmInfo) -> None:
    control = vsphere_bed.control
    since = _last_seq(control)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        a = vc.create_snapshot(si, vm, "a")
        # Logged by the time the task reports success.
        assert [(e.event, e.snapshot_moref) for e in _of(control, since, bed_vm)] == [
            ("created", a._moId)]
        b = vc.create_snapshot(si, vm, "b")  # a child of a
        vc.remove_snapshot(si, b)
        c = vc.create_snapshot(si, vm, "c")  # a's second child
        vc.wait_task(si, vm.RemoveAllSnapshots_Task())
    events = _of(control, since, bed_vm)
    assert [(e.event, e.snapshot, e.snapshot_moref) for e in events] == [
        ("created", "a", a._moId), ("created", "b", b._moId), ("removed", "b", b._moId),
        ("created", "c", c._moId),
        ("removed", "a", a._moId), ("removed", "c", c._moId),  # one call: in creation order
    ]  # fmt: skip
    assert {(e.vm, e.vm_moref, e.datastores) for e in events} == {
        (bed_vm.name, bed_vm.moref, (DS,))}
    seqs, times = [e.seq for e in events], [e.time for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > since
    assert times == sorted(times)
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert datetime.now(UTC) - times[0] < timedelta(minutes=5)
    assert _of(control, events[2].seq, bed_vm) == events[3:]
    assert control.snapshot_events(events[-1].seq + 1000) == []
    assert most_open_per_datastore(events) == {DS: 2} and unpaired(events) == []


@pytest.mark.vsphere
def test_failed_snapshots_are_not_logged_and_destroying_the_vm_removes_its_own(
        vsphere_bed: VsphereBed, bed_vm: VmInfo) -> None:
    control = vsphere_bed.control
    since = _last_seq(control)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        control.inject_fault("snapshot")
        with pytest.raises(vim.fault.SnapshotFault):
            vc.create_snapshot(si, vm, "refused")
        assert _of(control, since, bed_vm) == []
        kept = vc.create_snapshot(si, vm, "kept")
        control.set_power(bed_vm.name, "poweredOff")
        vc.wait_task(si, vm.Destroy_Task())
    events = _of(control, since, bed_vm)
    assert [(e.event, e.snapshot, e.snapshot_moref) for e in events] == [
        ("created", "kept", kept._moId), ("removed", "kept", kept._moId)]
    assert events[1].vm == bed_vm.name and events[1].datastores == (DS,)


def _ev(seq: int, event: SnapshotEventKind, snap: str, *datastores: str) -> SnapshotEvent:
    return SnapshotEvent(seq, event, "vm", "vm-1", snap, snap, tuple(datastores),
                         datetime(2026, 12, 4, tzinfo=UTC) + timedelta(seconds=seq))


def test_most_open_per_datastore_replays_the_log() -> None:
    one_after_another = [_ev(1, "created", "s1", "A"), _ev(2, "removed", "s1", "A"),
                         _ev(3, "created", "s2", "A"), _ev(4, "removed", "s2", "A")]
    assert most_open_per_datastore(one_after_another) == {"A": 1}
    overlapping = [_ev(1, "created", "s1", "A"), _ev(2, "created", "s2", "A"),
                   _ev(3, "removed", "s1", "A"), _ev(4, "created", "s3", "A"),
                   _ev(5, "created", "s4", "A"), _ev(6, "removed", "s2", "A"),
                   _ev(7, "removed", "s3", "A"), _ev(8, "removed", "s4", "A")]
    assert most_open_per_datastore(overlapping) == {"A": 3}  # s2, s3, s4 after seq 5
    assert most_open_per_datastore(reversed(overlapping)) == {"A": 3}  # by seq, not position
    # A VM with disks on A and B counts on both; a removal before the excerpt's creations
    # (its snapshot was taken earlier) is ignored.
    spanning = [_ev(10, "removed", "old", "A"), _ev(11, "created", "s1", "A", "B"),
                _ev(12, "created", "s2", "B"), _ev(13, "removed", "s1", "A", "B"),
                _ev(14, "created", "s3", "A"), _ev(15, "created", "s4", "A")]
    assert most_open_per_datastore(spanning) == {"A": 2, "B": 2}
    assert most_open_per_datastore([]) == {}


def test_unpaired_names_creations_never_removed_and_removals_never_created() -> None:
    events = [_ev(10, "removed", "old", "A"), _ev(11, "created", "s1", "A"),
              _ev(12, "created", "s2", "A"), _ev(13, "removed", "s1", "A")]
    assert [(e.seq, e.snapshot) for e in unpaired(events)] == [(10, "old"), (12, "s2")]
    assert unpaired(events[1:2] + events[3:]) == []
