"""CBT reports writes, not changes: a guest write log makes the bed report unchanged rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.vsphere import vimclient as vc
from testbed.vsphere.bed import BedError, start_bed
from tests.vsphere.test_cbt import CAPACITY, flat_path, make_image

pytestmark = pytest.mark.vsphere

KiB, MiB = 1 << 10, 1 << 20


def rounded(extents: list[tuple[int, int]], block: int) -> list[tuple[int, int]]:
    """Extents rounded out to block and merged: what a tracker of that granularity answers."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(extents):
        s, e = start // block * block, -(-(start + length) // block) * block
        if out and s <= out[-1][0] + out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][0] + out[-1][1]) - out[-1][0])
        else:
            out.append((s, e - s))
    return out


@pytest.mark.parametrize("block", [4 * KiB, 64 * KiB])
def test_write_log_adds_rewrites_at_the_tracking_granularity(tmp_path: Path, block: int) -> None:
    with start_bed(qcda_window=1 << 30, ctk_block=block, machines=1) as bed:
        vm_info = bed.control.vms()[0]
        disk = bed.control.attach_disk(vm_info.name, make_image(tmp_path / "a.raw", CAPACITY, 5))
        with vc.connect(bed) as si:
            vm = vc.vm_by_moref(si, vm_info.moref)
            vc.enable_cbt(si, vm)
            s1 = vc.create_snapshot(si, vm, "s1")
            (d1,) = vc.snapshot_disks(si, s1)
            new = bytearray(disk.path.read_bytes())
            new[MiB + 10:MiB + 30] = bytes(b ^ 0xFF for b in new[MiB + 10:MiB + 30])
            image = tmp_path / "b.raw"
            image.write_bytes(new)
            # The guest also wrote these with the bytes they already held (and the changed block).
            logged = [(2 * MiB + 100, 10), (5 * MiB, 70_000), (MiB, 4096)]
            log = tmp_path / "writes.log"
            log.write_text("# offset length\n" + "".join(f"{o} {n}\n" for o, n in logged))

            applied = bed.control.apply_guest_day(vm_info.name, disk.key, image, writes=log)

            assert (applied.written, applied.extents) == (4096, 1)
            assert applied.rewritten == 10 + 70_000
            expected = rounded(logged, block)
            assert applied.tracked == sum(n for _, n in expected)
            s2 = vc.create_snapshot(si, vm, "s2")
            extents, _ = vc.changed_extents(vm, s2, disk.key, disk.capacity,
                                            d1.backing.changeId)
            assert extents == expected
            (d2,) = vc.snapshot_disks(si, s2)
            assert (bed.datastore_dir / flat_path(d2)).read_bytes() == bytes(new)


def test_without_a_log_only_differing_blocks_are_tracked(tmp_path: Path) -> None:
    with start_bed(qcda_window=1 << 30, machines=1) as bed:
        vm_info = bed.control.vms()[0]
        disk = bed.control.attach_disk(vm_info.name, make_image(tmp_path / "a.raw", CAPACITY, 6))
        new = bytearray(disk.path.read_bytes())
        new[3 * MiB] ^= 1
        image = tmp_path / "b.raw"
        image.write_bytes(new)
        applied = bed.control.apply_guest_day(vm_info.name, disk.key, image)
        assert (applied.written, applied.extents, applied.rewritten) == (4096, 1, 0)
        assert applied.tracked == 64 * KiB


def test_a_bad_write_log_is_refused(tmp_path: Path) -> None:
    with start_bed(machines=1) as bed:
        vm_info = bed.control.vms()[0]
        disk = bed.control.attach_disk(vm_info.name, make_image(tmp_path / "a.raw", CAPACITY, 7))
        log = tmp_path / "writes.log"
        for line in ("1 2 3", "-1 10", "0 0", f"{CAPACITY - 1} 2", "x 1"):
            log.write_text(line + "\n")
            with pytest.raises(BedError, match="write log line 1"):
                bed.control.apply_guest_day(vm_info.name, disk.key, disk.path, writes=log)
