"""Free-block skipping, proved end to end by an oracle that shares no code with vmaccel.

A disk lives several guest days (deletes, appends, rewrites, whole-file overwrites,
truncations, renames, new files and directories, a removed tree) on FAT32, ext4, NTFS and ext4
on an LVM logical volume (gpt image), and on XFS, FAT32 and NTFS in MBR logical partitions (mbr
image). After each day a backup with free-block skipping on (the default) is restored with
`vmaccel restore disk`, and oracle.py checks the restored disk with the guest's own tools:
sfdisk and LVM for geometry, the filesystems' checkers, kernel/ntfs-3g/mtools mounts for every
file, and a sector comparison that lets a restored sector differ from the source only by
reading as zeros, inside a filesystem. Every filesystem must have had live-looking bytes (data
of deleted files) skipped, so the check is never vacuous.

Backups come from `--source file:` (no CBT: each backup reads what the filesystems use) and
from a VM of the vSphere bed (CBT: incrementals read changed, used blocks and build a synthetic
full), from fixed days and from hypothesis-drawn ones. A crash-consistent snapshot of a mounted
ext4/XFS volume is checked after the guest's own journal/log replay. The oracle is itself shown
to catch a lost data block, lost metadata, foreign bytes and zeroed LVM metadata.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.guestimages.churn import KINDS, SIZES, Op, churn, content
from testbed.guestimages.commands import run
from testbed.guestimages.crashsnap import crash_snapshot, replayed_manifest
from testbed.guestimages.fscheck import NotClean, check_clean
from testbed.guestimages.kernelmount import mounted
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image, loop_device
from testbed.guestimages.scan import diff_trees
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.guestimages.oracle import (
    Manifest,
    compare_manifests,
    tool_volumes,
    verify_restore,
)
from tests.plugin.conftest import Cli

DAYS = 2


@dataclass(frozen=True)
class Source:
    """Where backups of the guest disk come from: `--source file:` (no CBT: every backup reads
    what the filesystems use) or a VM of the vSphere bed (CBT: an incremental reads the changed
    blocks the filesystems use and builds a synthetic full on its parent)."""

    vm: str  # the name restores refer to (VM@latest)
    disk: str  # the disk's name in the backup
    options: tuple[str, ...]  # what `vmaccel backup` needs besides --repo and --json
    sync: Callable[[], None] = lambda: None  # make the VM's disk the churned image again


def standalone(image: GuestImage) -> Source:
    return Source(image.name, "disk0", ("--source", f"file:{image.path}", "--name", image.name))


def vcenter_vm(request: pytest.FixtureRequest, image: GuestImage) -> Source:
    """A fresh VM of the plugin bed whose disk is `image`; `sync` writes the image's changed
    4 KiB blocks to it as guest writes, so its CBT sees exactly them (rounded to 64 KiB)."""
    bed: VsphereBed = request.getfixturevalue("plugin_bed")
    vm: VmInfo = request.getfixturevalue("fresh_vm")()
    vcenter: str = request.getfixturevalue("vcenter")
    disk = bed.control.attach_disk(vm.name, image.path)
    options = (
        *("--vcenter", vcenter, "--vm", vm.name, "--transport", "file"),
        *("--datastore-path", f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}"),
    )

    def sync() -> None:
        bed.control.apply_image(vm.name, disk.key, image.path)

    return Source(vm.name, f"disk-{disk.key}", options, sync)


def backup(cli: Cli, repo: Path, source: Source) -> dict[str, Any]:
    """One backup with free-block skipping on (the default); returns the VM's report."""
    result = cli("backup", "--repo", repo, *source.options, "--json")
    assert result.rc == 0, result.err + result.out
    (vm,) = result.json["vms"]
    assert vm["ok"] and vm["vm"] == source.vm, vm
    return dict(vm)


def restore(cli: Cli, repo: Path, ref: str, disk: str, to: Path) -> Path:
    result = cli("restore", "disk", "--repo", repo, ref, disk, "--to", to, "--json")
    assert result.rc == 0, result.err + result.out
    return to


def allocation(cli: Cli, repo: Path, backup_id: int) -> Any:
    """The product's own account of each volume (for failure messages only, never asserted)."""
    result = cli("backups", "list", "--repo", repo, "--json")
    for row in result.json if result.rc == 0 else ():
        if row["id"] == backup_id:
            return [img["meta"].get("allocation") for img in row["images"]]
    return None


def day_ops(rng: random.Random) -> list[Op]:
    """Every kind of guest action once (the rewrite hits the largest file and a delete one of
    the next three, so every filesystem frees blocks full of data), then four at random."""
    r = rng.randrange
    ops = [
        Op("rewrite", 0, 65_536, r(1 << 30)),
        Op("delete", r(1, 4)),
        Op("delete", r(1000)),
        Op("overwrite", r(1000), rng.choice(SIZES)),
        Op("append", r(1000), 70_000),
        Op("rename", r(1000), 0, r(1000)),
        Op("create", 0, 1_500_000, r(1000)),
        Op("mkdir", 0, 0, r(1000)),
        Op("truncate", r(1, 20), r(1 << 20)),
    ]
    kinds = [k for k in KINDS if k != "rmtree"]  # a whole tree at most once, below
    ops += [Op(rng.choice(kinds), r(1000), rng.choice(SIZES), r(1000)) for _ in range(4)]
    return ops


@pytest.mark.parametrize(
    ("name", "via"),
    [
        ("gpt", "file"),
        ("mbr", "file"),
        pytest.param("gpt", "vcenter", marks=pytest.mark.vsphere),
        pytest.param("mbr", "vcenter", marks=pytest.mark.vsphere),
    ],
)
def test_skip_free_restores_are_what_the_guest_tools_see(
    name: str,
    via: str,
    cli: Cli,
    new_repo: Callable[[str], Path],
    private_image: Callable[[str], GuestImage],
    request: pytest.FixtureRequest,
) -> None:
    image = private_image(name)
    source = standalone(image) if via == "file" else vcenter_vm(request, image)
    repo = new_repo("repo")
    rng = random.Random(f"skipfree/{name}")
    points: list[tuple[int, Mapping[str, Manifest]]] = []
    for day in range(DAYS + 1):
        if day:
            ops = day_ops(rng)
            if day == DAYS:  # a whole tree and then the largest file go
                ops += [Op("rmtree", rng.randrange(1000)), Op("delete", 0)]
            churn(image.path, image.volumes, ops, salt=f"{name}/day{day}")
            source.sync()
        vm = backup(cli, repo, source)
        (disk,) = vm["disks"]
        assert disk["mode"] == ("full" if day == 0 else "incremental"), disk
        # Well below the disk: the holes and the filesystems' free space were never read.
        assert 0 < disk["bytes_read"] < disk["size"] * 0.45, disk
        to = image.path.with_suffix(f".day{day}.raw")
        restored = restore(cli, repo, f"{source.vm}@latest", source.disk, to)
        verdict = verify_restore(image, image.path, restored)
        restored.unlink()
        points.append((vm["backup_id"], verdict.manifests))
        # Not vacuous: deleted files' data, still on the source disk, was left out, on the
        # last day in every filesystem (earlier, freed blocks may have been reused that day).
        skipped = {v.name: verdict.skipped(v.name) for v in verdict.volumes}
        if day == DAYS:
            assert all(skipped.values()), (skipped, allocation(cli, repo, vm["backup_id"]))
        elif day:
            assert sum(skipped.values()) > 0, (skipped, allocation(cli, repo, vm["backup_id"]))
    # A later backup never changes an earlier restore point.
    for backup_id, manifests in points[:-1]:
        to = image.path.with_suffix(f".b{backup_id}.raw")
        old = restore(cli, repo, str(backup_id), source.disk, to)
        compare_manifests(manifests, old, tool_volumes(old, image))
        old.unlink()


_OPS = st.builds(
    Op,
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, 63),
    size=st.sampled_from(SIZES),
    where=st.integers(0, 63),
)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(["gpt", "mbr"]),
    days=st.lists(st.lists(_OPS, min_size=1, max_size=8), min_size=1, max_size=2),
)
def test_random_guest_days_restore_what_the_guest_tools_see(
    name: str,
    days: list[list[Op]],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    tmp_path: Path,
) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        assert cli("repo", "init", "--repo", work / "repo").rc == 0
        image = replace(guest_images[name], path=work / f"{name}.img")
        clone_image(guest_images[name].path, image.path)
        source = standalone(image)
        backup(cli, work / "repo", source)
        for n, ops in enumerate(days):
            churn(image.path, image.volumes, ops, salt=f"{name}/random{n}")
            backup(cli, work / "repo", source)
        restored = restore(cli, work / "repo", f"{name}@latest", "disk0", work / "restored.raw")
        verify_restore(image, image.path, restored)
    finally:
        shutil.rmtree(work)


def live_writes(root: Path) -> None:
    """A guest busy at snapshot time: a big delete and new files committed to the journal/log
    (synced) but not yet written home, then more writes still in its page cache."""
    (root / "big/random.bin").unlink()
    for i in range(12):
        (root / f"live-{i:02d}.bin").write_bytes(content(f"live/{i}", 1 << 20))
    (root / "logs/app-03.log").rename(root / "docs/app-03 moved.log")
    os.sync()
    for i in range(12, 16):
        (root / f"live-{i:02d}.bin").write_bytes(content(f"live/{i}", 1 << 20))


@pytest.mark.parametrize(("name", "volume"), [("gpt", "linux"), ("mbr", "xfs")])
def test_crash_consistent_snapshot_restores_to_the_same_replayed_files(
    name: str,
    volume: str,
    cli: Cli,
    new_repo: Callable[[str], Path],
    private_image: Callable[[str], GuestImage],
    tmp_path: Path,
) -> None:
    """A snapshot of a mounted, writing volume (no quiescing) must not be skipped on its
    lagging bitmaps: it restores byte for byte, to a disk that, once the guest replays its
    journal/log, holds the same files as the snapshot after the same replay."""
    image = private_image(name)
    dirty = image.volume(volume)
    snap = tmp_path / "snapshot.img"
    crash_snapshot(image.path, dirty, snap, live_writes)
    with pytest.raises(NotClean):  # the snapshot really is mid-flight
        check_clean(snap, dirty)
    repo = new_repo("repo")
    backup(cli, repo, standalone(replace(image, path=snap)))
    restored = restore(cli, repo, f"{name}@latest", "disk0", tmp_path / "restored.raw")
    others = replace(image, volumes=tuple(v for v in image.volumes if v.name != volume))
    verdict = verify_restore(others, snap, restored)
    assert verdict.deviation.within(dirty.extents) == 0, "a dirty volume lost bytes"
    want = replayed_manifest(snap, dirty, tmp_path / "replay-source.img")
    got = replayed_manifest(restored, dirty, tmp_path / "replay-restored.img")
    assert "live-00.bin" in want and "big/random.bin" not in want  # what was synced is there
    assert diff_trees(want, got) == []


def test_the_oracle_sees_lost_data_lost_metadata_and_foreign_bytes(
    private_image: Callable[[str], GuestImage], tmp_path: Path
) -> None:
    """The oracle is not blind. Copies of the disk, each with one defect: a block of file data
    zeroed fails on that file; ext4's first inode table block zeroed fails e2fsck; a sector of
    0xff fails the sector comparison; the LVM physical volume label zeroed is a loss outside
    every filesystem. Where those blocks are comes from e2fsprogs (filefrag, dumpe2fs) and the
    partition table, not from vmaccel."""
    image = private_image("gpt")
    ext4 = image.volume("linux")
    with loop_device(image.path, ext4.offset, ext4.size, read_only=True) as dev:
        header = run("dumpe2fs", dev)
    fs_block = _number(r"^Block size:\s+(\d+)$", header)
    inode_table = _number(r"Inode table at (\d+)-", header)
    with mounted(image.path, ext4) as root:
        frags = run("filefrag", f"-b{fs_block}", "-e", str(root / "big/random.bin"))
    # The first extent line: "   0:        0..    2047:      34816..     36863:   2048: ..."
    first_physical = int(frags.splitlines()[3].split(":")[2].split("..")[0])
    pv_offset = next(off for n, off, _, _ in image.partitions if n == 4)
    in_big_file = ext4.offset + (first_physical + 100) * fs_block
    cases = [
        (in_big_file, 0, "linux (ext4): differs: big/random.bin"),
        (ext4.offset + inode_table * fs_block, 0, "linux: checker:"),
        (in_big_file + 4 * fs_block, 0xFF, "holds foreign bytes at"),
        (pv_offset + 512, 0, "bytes zeroed outside every filesystem"),  # LVM2's LABELONE
    ]
    for n, (offset, fill, expected) in enumerate(cases):
        broken = tmp_path / f"broken-{n}.raw"
        clone_image(image.path, broken)
        with open(broken, "r+b") as f:
            f.seek(offset)
            f.write(bytes([fill]) * 512)
        with pytest.raises(AssertionError) as caught:
            verify_restore(image, image.path, broken)
        assert expected in str(caught.value), (expected, str(caught.value))
        broken.unlink()


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text, re.M)
    assert found is not None, f"{pattern!r} not in {text[:2000]}"
    return int(found.group(1))
