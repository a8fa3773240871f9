"""Session-scoped disk images for the guestfs tests, built once with the real tools."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guestfs.imaging import (
    LVM_CONFIG,
    DiskImage,
    FsSpec,
    MiB,
    have,
    make_tree,
    mkfs_ext4,
    mkfs_ntfs,
    mkfs_vfat,
    mkfs_xfs,
    place,
    run,
)


def _need(*tools: str) -> None:
    missing = [t for t in tools if not have(t)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@pytest.fixture(scope="session")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory) -> DiskImage:
    """GPT: p1 FAT32, p2 ext4 (4k, flex_bg), p3 NTFS, p4 LVM PV with a two-segment LV (ext4).

    Also leaves an unpartitioned tail, so the GPT backup sits after a gap.
    """
    _need("sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g")
    work = tmp_path_factory.mktemp("gpt")
    disk = work / "disk.img"
    size = 200 * MiB
    with open(disk, "wb") as f:
        f.truncate(size)
    run(
        "sgdisk",
        "-n1:2048:+40M",
        "-t1:ef00",
        "-c1:EFI system",
        "-n2:0:+36M",
        "-t2:8300",
        "-n3:0:+24M",
        "-t3:0700",
        "-n4:0:+48M",
        "-t4:8e00",
        disk,
    )
    specs = []
    src = work / "src"
    files = make_tree(src / "fat", 1)
    mkfs_vfat(work / "fat.img", 40 * MiB, files, src / "fat", 32)
    specs.append(FsSpec("vfat", 1 * MiB, 40 * MiB, files, "p1"))
    files = make_tree(src / "ext", 2)
    mkfs_ext4(work / "ext.img", 36 * MiB, src / "ext", "-b", "4096")
    specs.append(FsSpec("ext4", 41 * MiB, 36 * MiB, files, "p2"))
    files = make_tree(src / "ntfs", 3)
    mkfs_ntfs(work / "ntfs.img", 24 * MiB, src / "ntfs", work / "mnt")
    specs.append(FsSpec("ntfs", 77 * MiB, 24 * MiB, files, "p3"))
    for spec, img in zip(specs, ("fat.img", "ext.img", "ntfs.img"), strict=True):
        place(disk, work / img, spec.offset)
    specs.extend(_lvm(disk, work, 101 * MiB, 48 * MiB))
    return DiskImage(disk, size, specs)


def _lvm(disk: Path, work: Path, pv_offset: int, pv_size: int) -> list[FsSpec]:
    """Make p4 a PV with LV "data" in two segments (a hole punched by a removed LV)."""
    if not have("lvm") or not have("losetup"):
        return []
    vg = f"vmaccel{work.name.replace('-', '')[-8:]}"
    loop = run(
        "losetup", "-f", "--show", "-o", str(pv_offset), "--sizelimit", str(pv_size), disk
    ).strip()
    lvm = ("lvm",)
    cfg = ("--config", LVM_CONFIG, "--driverloaded", "n")
    try:
        run(*lvm, "pvcreate", *cfg[:2], "-q", loop)
        run(*lvm, "vgcreate", *cfg[:2], "-q", "-s", "4M", vg, loop)
        for name, mb in (("data", 8), ("gap", 4), ("other", 4)):
            run(*lvm, "lvcreate", *cfg, "-q", "-an", "-Zn", "-L", f"{mb}M", "-n", name, vg)
        run(*lvm, "lvremove", *cfg, "-q", "-f", f"{vg}/gap")
        run(*lvm, "lvextend", *cfg, "-q", "-L", "20M", f"{vg}/data")
        pe_start = int(
            run(
                *lvm,
                "pvs",
                *cfg[:2],
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "pe_start",
                loop,
            ).split()[0]
        )
        ranges = run(
            *lvm, "lvs", *cfg[:2], "--noheadings", "--segments", "-o", "seg_pe_ranges", f"{vg}/data"
        )
    finally:
        run("losetup", "-d", loop)
    pes = [(int(a), int(b)) for a, b in re.findall(r":(\d+)-(\d+)", ranges)]
    src = work / "src" / "lv"
    files = make_tree(src, 4, big=300_000)
    lv_img = work / "lv.img"
    mkfs_ext4(lv_img, 20 * MiB, src, "-b", "1024")
    data = lv_img.read_bytes()
    pos = 0
    with open(disk, "r+b") as f:
        for first, last in pes:
            length = (last - first + 1) * 4 * MiB
            f.seek(pv_offset + pe_start + first * 4 * MiB)
            f.write(data[pos : pos + length])
            pos += length
    assert pos == len(data) and len(pes) == 2, ranges
    return [FsSpec("ext4", -1, 20 * MiB, files, f"{vg}/data")]


@pytest.fixture(scope="session")
def mbr_disk(tmp_path_factory: pytest.TempPathFactory) -> DiskImage:
    """MBR: p1 ext4 (4k), extended p2 with logical p5 FAT16 and p6 ext4 (1k blocks, no
    flex_bg, so first_data_block is 1 and bitmaps sit in their own groups)."""
    _need("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
    work = tmp_path_factory.mktemp("mbr")
    disk = work / "disk.img"
    size = 128 * MiB
    with open(disk, "wb") as f:
        f.truncate(size)
    layout = (
        f"label: dos\n{disk}1 : start=2048, size=32M, type=83\n{disk}2 : size=90M, type=5\n"
        f"{disk}5 : size=30M, type=6\n{disk}6 : size=40M, type=83\n"
    )
    run("sfdisk", "-q", disk, input=layout.encode())
    parts = re.findall(r"start=\s*(\d+), size=\s*(\d+)", run("sfdisk", "-d", disk))
    offsets = [int(s) * 512 for s, _n in parts]
    src = work / "src"
    specs = []
    files = make_tree(src / "a", 5)
    mkfs_ext4(work / "a.img", 32 * MiB, src / "a", "-b", "4096")
    specs.append(FsSpec("ext4", offsets[0], 32 * MiB, files, "p1"))
    files = make_tree(src / "b", 6)
    mkfs_vfat(work / "b.img", 30 * MiB, files, src / "b", 16)
    specs.append(FsSpec("vfat", offsets[2], 30 * MiB, files, "p5"))
    files = make_tree(src / "c", 7)
    mkfs_ext4(work / "c.img", 40 * MiB, src / "c", "-b", "1024", "-O", "^flex_bg", "-t", "ext3")
    specs.append(FsSpec("ext3", offsets[3], 40 * MiB, files, "p6"))
    for spec, img in zip(specs, ("a.img", "b.img", "c.img"), strict=True):
        place(disk, work / img, spec.offset)
    return DiskImage(disk, size, specs)


@pytest.fixture(scope="session")
def xfs_disk(tmp_path_factory: pytest.TempPathFactory) -> DiskImage:
    """MBR with one 320 MiB XFS partition, populated from a prototype file (sparse image)."""
    _need("sfdisk", "mkfs.xfs")
    work = tmp_path_factory.mktemp("xfs")
    disk = work / "disk.img"
    size = 330 * MiB
    with open(disk, "wb") as f:
        f.truncate(size)
    run("sfdisk", "-q", disk, input=b"label: dos\nstart=2048, size=320M, type=83\n")
    src = work / "src"
    files = {k: v for k, v in make_tree(src, 8, big=2_000_000).items() if " " not in k}
    mkfs_xfs(work / "x.img", 320 * MiB, files, src)
    place(disk, work / "x.img", MiB)
    return DiskImage(disk, size, [FsSpec("xfs", MiB, 320 * MiB, files, "p1")])


@pytest.fixture
def disk_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Return a function copying a disk image into this test's tmp_path, holes kept."""

    def copy(image: DiskImage) -> Path:
        target = tmp_path / image.path.name
        run("cp", "--sparse=always", image.path, target)
        return target

    return copy
