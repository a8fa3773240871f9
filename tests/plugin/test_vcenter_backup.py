"""The Proof of issue 5 against the bed, for each transport: a full and 5 incrementals with
random guest writes, every image equal to the VM's disk on every block the guest filesystems
use, and everywhere when free-block skipping is off; then forced rescans (CBT audit).

Two repositories are fed from the same VM and the same snapshots' state: one with free-block
skipping (compared on the used blocks), one with `--no-skip-free` (compared byte for byte).
Right after a backup the VM's current disk (`DiskInfo.path`) holds exactly the bytes the
snapshot froze, since nothing writes between the snapshot and the comparison.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.guestday import GuestDay, apply_day
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.plugin.conftest import Cli, Tagger
from tests.plugin.imagecheck import assert_image_equals, images_of, used_extents
from vmaccel.guestfs.extent import Extent, complement

pytestmark = pytest.mark.vsphere

KiB, MiB = 1 << 10, 1 << 20
ROUNDS = 5  # incrementals after the first backup
NBD_COMMAND = "nbdkit -s --exit-with-parent -r file {path}"


@dataclass(frozen=True)
class Targets:
    """Where the random guest writes go: inside file data (the 50 MiB file on ext4), in free
    space, and outside every partition. Filesystem metadata is avoided on purpose: corrupting
    a bitmap would make blocks free and used again without a write, which no CBT-based
    product can follow (and real filesystems do not do)."""

    file_data: tuple[Extent, ...]
    free: tuple[Extent, ...]
    outside: Extent


def _big_file_extents(image: GuestImage) -> tuple[Extent, ...]:
    vol = image.volume("linux")
    out = subprocess.run(
        ["debugfs", "-R", "stat big/random.bin", f"{image.path}?offset={vol.offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    header = subprocess.run(
        ["dumpe2fs", "-h", f"{image.path}?offset={vol.offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Block size: *(\d+)", header)
    assert match, header
    block = int(match.group(1))
    found = []
    for start, end in re.findall(r"\(\d+(?:-\d+)?\):(\d+)-(\d+)", out):
        found.append(Extent(vol.offset + int(start) * block, (int(end) - int(start) + 1) * block))
    assert found, out
    return tuple(found)


@pytest.fixture(scope="module")
def targets(guest_images: Mapping[str, GuestImage]) -> Targets:
    image = guest_images["gpt"]
    free = tuple(
        e for e in complement(used_extents(image.path), image.size) if e.length >= 256 * KiB
    )
    last_end = max(off + size for _, off, size, _ in image.partitions)
    outside = Extent(last_end, image.size - 34 * 512 - last_end)
    return Targets(_big_file_extents(image), free, outside)


@pytest.fixture(scope="module")
def days(
    guest_images: Mapping[str, GuestImage], tmp_path_factory: pytest.TempPathFactory
) -> tuple[GuestDay, GuestDay]:
    """Two guest days, the second on top of the first (a guest never undeletes in place)."""
    where = tmp_path_factory.mktemp("days")
    day1 = apply_day(guest_images["gpt"], where / "day1.img", 0.03, 21)
    day2 = apply_day(day1.image, where / "day2.img", 0.03, 22)
    return day1, day2


def random_writes(bed: VsphereBed, vm: str, key: int, t: Targets, rng: random.Random) -> None:
    picks = [
        *rng.sample(t.file_data, 2),
        *rng.sample(t.free, 2),
        t.outside,
        rng.choice([*t.file_data, *t.free]),
    ]
    for ext in picks:
        n = min(rng.randrange(1, 384) * 512, ext.length)
        off = ext.offset + rng.randrange(0, (ext.length - n) // 512 + 1) * 512
        bed.control.guest_write(vm, key, off, rng.randbytes(n))


def backup(cli: Cli, repo: Path, vcenter: str, select: list[str], *extra: str) -> dict[str, Any]:
    result = cli("backup", "--repo", repo, "--vcenter", vcenter, *select, "--json", *extra)
    assert result.rc == 0, result.err + result.out
    (vm,) = result.json["vms"]
    assert vm["ok"], vm
    (disk,) = vm["disks"]
    return disk  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["http", "file", "nbd"])
def test_full_then_five_incrementals_equal_the_disk(
    transport: str,
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    tagger: Tagger,
    new_repo: Callable[[str], Path],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    targets: Targets,
    days: tuple[GuestDay, GuestDay],
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    image = tmp_path / "disk.img"
    clone_image(guest_images["gpt"].path, image)
    disk = bed.control.attach_disk(vm.name, image)
    name = f"disk-{disk.key}"
    select = ["--tag", tagger.tag(vm.moref, f"proof-{transport}")]
    opts = [
        "--transport",
        transport,
        "--datastore-path",
        f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}",
    ]
    if transport == "nbd":
        opts += ["--nbd-command", NBD_COMMAND]
    skipping, whole = new_repo("skipping"), new_repo("whole")
    rng = random.Random(f"proof-{transport}")

    for round_ in range(ROUNDS + 1):
        if round_:
            random_writes(bed, vm.name, disk.key, targets, rng)
            if round_ in (2, 4):
                bed.control.apply_image(vm.name, disk.key, days[round_ // 2 - 1].image.path)
        expected_mode = "incremental" if round_ else "full"
        a = backup(cli, skipping, vcenter, select, *opts)
        b = backup(cli, whole, vcenter, select, *opts, "--no-skip-free")
        assert (a["mode"], b["mode"]) == (expected_mode, expected_mode), (round_, a, b)
        used = used_extents(disk.path)
        img_a = images_of(skipping, vm.name)[-1][name]
        img_b = images_of(whole, vm.name)[-1][name]
        assert img_a.meta.transport == img_b.meta.transport == transport
        assert_image_equals(skipping, img_a, disk.path, used)
        assert_image_equals(whole, img_b, disk.path)
        if round_:
            # An incremental reads about what changed (some of it in free space, which only
            # the --no-skip-free run reads), far from the whole disk.
            assert 0 < a["bytes_read"] <= b["bytes_read"] < 48 * MiB, (a, b)
        else:
            assert a["bytes_read"] < b["bytes_read"]  # free blocks were skipped

    if transport == "file":  # these need one transport; file is the quickest
        check_switch_to_no_skip_free(cli, skipping, vcenter, select, opts, vm.name, name, disk.path)
        check_rescans(cli, skipping, vcenter, select, opts, vm.name, name, disk.path, targets)


def check_switch_to_no_skip_free(
    cli: Cli,
    skipping: Path,
    vcenter: str,
    select: list[str],
    opts: list[str],
    vm: str,
    name: str,
    path: Path,
) -> None:
    """The images so far left free blocks out; asked to keep them, the next image must hold
    the disk byte for byte, so it cannot derive the free blocks from its parent."""
    r = backup(cli, skipping, vcenter, select, *opts, "--no-skip-free")
    assert r["mode"] == "full" and "free blocks" in r["reason"], r
    assert_image_equals(skipping, images_of(skipping, vm)[-1][name], path)
    r = backup(cli, skipping, vcenter, select, *opts, "--no-skip-free")
    assert r["mode"] == "incremental", r  # from then on, incrementals again
    assert_image_equals(skipping, images_of(skipping, vm)[-1][name], path)


def check_rescans(
    cli: Cli,
    skipping: Path,
    vcenter: str,
    select: list[str],
    opts: list[str],
    vm: str,
    name: str,
    path: Path,
    targets: Targets,
) -> None:
    # A forced rescan reads every allocated block; with a correct CBT it finds nothing.
    r = backup(cli, skipping, vcenter, select, *opts, "--rescan")
    assert r["mode"] == "rescan"
    assert not [w for w in r["warnings"] if "CBT audit" in w], r["warnings"]
    assert_image_equals(skipping, images_of(skipping, vm)[-1][name], path, used_extents(path))

    # A change CBT never saw (written behind the bed's back) is what the audit reports.
    hidden = targets.file_data[0].offset + 64 * KiB * 3
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x5a" * 4096, hidden)
    finally:
        os.close(fd)
    r = backup(cli, skipping, vcenter, select, *opts, "--rescan")
    audit = [w for w in r["warnings"] if "CBT audit" in w]
    assert len(audit) == 1 and f"{hidden - hidden % (64 * KiB)}+{64 * KiB}" in audit[0], audit
    assert_image_equals(skipping, images_of(skipping, vm)[-1][name], path, used_extents(path))
