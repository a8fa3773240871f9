"""Changed Block Tracking on the bed: QueryChangedDiskAreas against recorded guest writes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVmomi import vim, vmodl

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import DiskInfo, VmInfo, VsphereBed, start_bed

pytestmark = pytest.mark.vsphere

MiB = 1 << 20
CAPACITY = 8 * MiB  # 8 windows of the fixture's 1 MiB QueryChangedDiskAreas window


def make_image(path: Path, size: int, seed: int) -> Path:
    """A sparse image: a few random 64 KiB runs, zeros elsewhere."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(16):
            f.seek(rng.randrange(0, size - 65536))
            f.write(rng.randbytes(65536))
    return path


def differing_bytes(a: bytes, b: bytes) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}


def covered(extents: list[vc.Extent]) -> set[int]:
    return {i for start, length in extents for i in range(start, start + length)}


CbtVm = tuple[vim.ServiceInstance, vim.VirtualMachine, DiskInfo]


@pytest.fixture
def cbt_vm(vsphere_bed: VsphereBed, bed_vm: VmInfo, tmp_path: Path) -> Iterator[CbtVm]:
    """(si, vm, disk) for a VM with an 8 MiB image attached and CBT enabled."""
    image = make_image(tmp_path / "a.raw", CAPACITY, 1)
    disk = vsphere_bed.control.attach_disk(bed_vm.name, image)
    with vc.connect(vsphere_bed) as si:
        vm = vc.vm_by_moref(si, bed_vm.moref)
        vc.enable_cbt(si, vm)
        yield si, vm, disk


def test_extents_cover_every_changed_byte(vsphere_bed: VsphereBed, bed_vm: VmInfo,
                                          cbt_vm: CbtVm, tmp_path: Path) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    (d1,) = vc.snapshot_disks(si, s1)
    rng = random.Random(7)
    for _ in range(20):  # unaligned writes, some across the 1 MiB window boundaries
        offset = rng.randrange(0, CAPACITY - 5000)
        data = rng.randbytes(rng.randrange(1, 5000))
        vsphere_bed.control.guest_write(bed_vm.name, disk.key, offset, data)
    new_image = tmp_path / "b.raw"
    new_image.write_bytes(disk.path.read_bytes())
    with open(new_image, "r+b") as f:
        f.seek(MiB - 10)
        f.write(b"\xff" * 20)  # straddles a window boundary
    written, _ = vsphere_bed.control.apply_image(bed_vm.name, disk.key, new_image)
    assert 0 < written <= 2 * 4096
    s2 = vc.create_snapshot(si, vm, "s2")
    (d2,) = vc.snapshot_disks(si, s2)

    extents, calls = vc.changed_extents(vm, s2, disk.key, d2.capacityInBytes, d1.backing.changeId)
    before = (vsphere_bed.datastore_dir / flat_path(d1)).read_bytes()
    after = (vsphere_bed.datastore_dir / flat_path(d2)).read_bytes()
    changed = differing_bytes(before, after)
    assert changed and changed <= covered(extents)
    assert calls == CAPACITY // MiB
    # The sequence part grows with each snapshot; the uuid part stays while tracking is intact.
    uuid1, seq1 = d1.backing.changeId.split("/")
    uuid2, seq2 = d2.backing.changeId.split("/")
    assert uuid1 == uuid2 and int(seq2) > int(seq1)


def flat_path(disk: vim.vm.device.VirtualDisk) -> str:
    """Datastore-relative path of a snapshot disk's flat file."""
    return disk.backing.fileName.split("] ", 1)[1].removesuffix(".vmdk") + "-flat.vmdk"


def test_no_changes_between_identical_snapshots(cbt_vm: CbtVm) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    s2 = vc.create_snapshot(si, vm, "s2")
    (d1,) = vc.snapshot_disks(si, s1)
    extents, _ = vc.changed_extents(vm, s2, disk.key, disk.capacity, d1.backing.changeId)
    assert extents == []


def test_star_returns_allocated_areas(cbt_vm: CbtVm) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    extents, _ = vc.changed_extents(vm, s1, disk.key, disk.capacity, "*")
    data = disk.path.read_bytes()
    nonzero = {i for i, b in enumerate(data) if b}
    assert nonzero <= covered(extents)
    assert sum(length for _, length in extents) < disk.capacity  # the holes are left out


def test_bad_queries_fault_like_vsphere(cbt_vm: CbtVm) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    (d1,) = vc.snapshot_disks(si, s1)
    query = vm.QueryChangedDiskAreas
    with pytest.raises(vim.fault.FileFault):
        query(snapshot=s1, deviceKey=disk.key, startOffset=0, changeId="52 00/1")
    with pytest.raises(vmodl.fault.InvalidArgument):
        query(snapshot=s1, deviceKey=disk.key + 1000, startOffset=0, changeId=d1.backing.changeId)
    with pytest.raises(vmodl.fault.InvalidArgument):
        query(snapshot=s1, deviceKey=disk.key, startOffset=disk.capacity, changeId="*")
    vc.remove_snapshot(si, s1)
    with pytest.raises(vim.fault.NotFound):
        query(snapshot=s1, deviceKey=disk.key, startOffset=0, changeId="*")


def test_reset_invalidates_old_change_ids(vsphere_bed: VsphereBed, bed_vm: VmInfo,
                                          cbt_vm: CbtVm) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    (d1,) = vc.snapshot_disks(si, s1)
    vsphere_bed.control.reset_cbt(bed_vm.name)
    s2 = vc.create_snapshot(si, vm, "s2")
    (d2,) = vc.snapshot_disks(si, s2)
    assert d2.backing.changeId.split("/")[0] != d1.backing.changeId.split("/")[0]
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=s2, deviceKey=disk.key, startOffset=0,
                                 changeId=d1.backing.changeId)
    vc.changed_extents(vm, s2, disk.key, disk.capacity, d2.backing.changeId)  # the new id works


def test_disabled_tracking_faults_and_stamps_no_change_id(cbt_vm: CbtVm) -> None:
    si, vm, disk = cbt_vm
    s1 = vc.create_snapshot(si, vm, "s1")
    (d1,) = vc.snapshot_disks(si, s1)
    vc.enable_cbt(si, vm, enabled=False)
    s2 = vc.create_snapshot(si, vm, "s2")
    (d2,) = vc.snapshot_disks(si, s2)
    assert d2.backing.changeId is None
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=s2, deviceKey=disk.key, startOffset=0,
                                 changeId=d1.backing.changeId)


def test_extent_cap_bounds_each_answer(tmp_path: Path) -> None:
    """-qcda-max-extents (ESXi-like): a window larger than the disk, ended after N extents."""
    block, cap = 64 << 10, 3
    with start_bed(qcda_window=1 << 30, qcda_max_extents=cap, machines=1) as bed:
        vm_info = bed.control.vms()[0]
        disk = bed.control.attach_disk(vm_info.name, make_image(tmp_path / "a.raw", CAPACITY, 3))
        with vc.connect(bed) as si:
            vm = vc.vm_by_moref(si, vm_info.moref)
            vc.enable_cbt(si, vm)
            s1 = vc.create_snapshot(si, vm, "s1")
            (d1,) = vc.snapshot_disks(si, s1)
            offsets = [i * MiB // 2 + 1000 for i in range(10)]  # 10 separate 64 KiB blocks
            for offset in offsets:
                bed.control.guest_write(vm_info.name, disk.key, offset, b"\x01" * 100)
            s2 = vc.create_snapshot(si, vm, "s2")
            answers, start = [], 0
            while start < disk.capacity:
                info = vm.QueryChangedDiskAreas(snapshot=s2, deviceKey=disk.key,
                                                startOffset=start, changeId=d1.backing.changeId)
                areas = [(a.start, a.length) for a in info.changedArea or ()]
                answers.append(areas)
                start = int(info.startOffset) + int(info.length)
                if len(areas) == cap and start < disk.capacity:
                    assert start == areas[-1][0] + areas[-1][1]  # ends at its last extent
            assert [len(a) for a in answers] == [3, 3, 3, 1]
            assert [e for a in answers for e in a] == [(o // block * block, block) for o in offsets]

            star, calls = vc.changed_extents(vm, s2, disk.key, disk.capacity, "*")
            data = (bed.datastore_dir / flat_path(vc.snapshot_disks(si, s2)[0])).read_bytes()
            nonzero = [o for o in range(0, CAPACITY, block) if any(data[o:o + block])]
            assert sorted({o for s, n in star for o in range(s, s + n, block)}) == nonzero
            assert calls == -(-len(star) // cap)
