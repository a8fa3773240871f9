"""Partition tables, LVM and mkfs: the structure of a guest disk, made with the real tools.

Partitions are written with sfdisk (GPT and MBR, including an extended partition with logical
ones). LVM runs without device-mapper (`--driverloaded n`): pvcreate/vgcreate/lvcreate only write
metadata, nothing is ever activated, so there is no VG to deactivate and no dm device to leak;
metadata backups (/etc/lvm/backup) and the devices file are switched off so the host is untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from testbed.guestimages.commands import run
from testbed.guestimages.model import FsType, TableKind, VolumeExtent
from testbed.guestimages.mounts import loop_device

MiB = 1 << 20
SECTOR = 512
GPT_TYPES = {
    "vfat": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
    "ext4": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux filesystem
    "xfs": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "ntfs": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",  # Microsoft basic data
    "lvm": "E6D6D379-F507-44C2-A23C-238F2A3DF928",  # Linux LVM
}
MBR_TYPES = {"vfat": "c", "ext4": "83", "xfs": "83", "ntfs": "7", "lvm": "8e", "extended": "5"}
SPACER_EXTENTS = 2


@dataclass(frozen=True)
class PartSpec:
    """A partition; `fstype` is a filesystem, "lvm" (a PV) or "extended" (MBR container)."""

    number: int
    start_mib: int
    size_mib: int
    fstype: str
    name: str = ""
    label: str = ""
    big_file: bool = True


@dataclass(frozen=True)
class LvSpec:
    """A logical volume made of `segments` (sizes in extents), each followed by a small spacer
    LV, so that the LV is not contiguous on disk and readers must follow its segment map."""

    name: str
    fstype: FsType
    label: str
    segments: tuple[int, ...]
    big_file: bool = True


@dataclass(frozen=True)
class ImageSpec:
    name: str
    table: TableKind
    size_mib: int
    parts: tuple[PartSpec, ...]
    lvs: tuple[LvSpec, ...] = ()


def write_table(image: Path, spec: ImageSpec) -> tuple[tuple[int, int, int, str], ...]:
    """Partition `image`; return (number, offset, size, type) per partition, in bytes."""
    types = GPT_TYPES if spec.table == "gpt" else MBR_TYPES
    lines = [f"label: {'gpt' if spec.table == 'gpt' else 'dos'}", "unit: sectors"]
    out = []
    for part in spec.parts:
        start, size = part.start_mib * MiB // SECTOR, part.size_mib * MiB // SECTOR
        line = f"start={start}, size={size}, type={types[part.fstype]}"
        lines.append(line + (f', name="{part.name}"' if spec.table == "gpt" else ""))
        out.append(
            (part.number, part.start_mib * MiB, part.size_mib * MiB, types[part.fstype].lower())
        )
    run(
        "sfdisk",
        "--quiet",
        "--no-reread",
        "--no-tell-kernel",
        str(image),
        stdin="\n".join(lines) + "\n",
    )
    return tuple(out)


def mkfs(dev: str, fstype: str, label: str, disk_offset: int) -> None:
    """Make a filesystem; `disk_offset` (bytes) is recorded where the format keeps it
    (NTFS and FAT "hidden sectors"), as an installer would."""
    hidden = str(disk_offset // SECTOR)
    commands = {
        # Inode tables zeroed now: no ext4lazyinit thread writing after mount.
        "ext4": [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            dev,
        ],
        "xfs": ["mkfs.xfs", "-q", "-f", "-K", "-L", label, dev],
        "ntfs": [
            "mkntfs",
            "-Q",
            "-F",
            "-q",
            "-L",
            label,
            "-p",
            hidden,
            "-H",
            "255",
            "-S",
            "63",
            dev,
        ],
        "vfat": ["mkfs.vfat", "-F", "32", "-s", "1", "-n", label, "-h", hidden, dev],
    }
    run(*commands[fstype])


def _lvm(*args: str, dev: str) -> str:
    config = "backup{backup=0 archive=0} devices{use_devicesfile=0}"
    return run(args[0], "--driverloaded", "n", "--devices", dev, "--config", config, *args[1:])


def make_lvm(
    image: Path, part: PartSpec, vg: str, lvs: tuple[LvSpec, ...]
) -> dict[str, tuple[VolumeExtent, ...]]:
    """Make a PV on `part`, a VG `vg` and the LVs; return each LV's extents on the disk."""
    part_off = part.start_mib * MiB
    with loop_device(image, part_off, part.size_mib * MiB, read_only=False) as dev:
        _lvm("pvcreate", "-q", "-y", "-ff", dev, dev=dev)
        _lvm("vgcreate", "-q", vg, dev, dev=dev)
        for n, lv in enumerate(lvs):
            for i, seg in enumerate(lv.segments):
                if i == 0:
                    _lvm(
                        "lvcreate",
                        "-q",
                        "-an",
                        "-Zn",
                        "-y",
                        "-n",
                        lv.name,
                        "-l",
                        str(seg),
                        vg,
                        dev=dev,
                    )
                else:
                    _lvm("lvextend", "-q", "-l", f"+{seg}", f"{vg}/{lv.name}", dev=dev)
                _lvm(
                    "lvcreate",
                    "-q",
                    "-an",
                    "-Zn",
                    "-y",
                    "-n",
                    f"spacer{n}_{i}",
                    "-l",
                    str(SPACER_EXTENTS),
                    vg,
                    dev=dev,
                )
        return lv_extents(dev, vg, part_off)


def lv_extents(dev: str, vg: str, part_off: int) -> dict[str, tuple[VolumeExtent, ...]]:
    """Where each LV of `vg` (on the PV `dev`, which starts `part_off` bytes into the disk)
    lives on the disk, read from the LVM metadata."""
    pv = json.loads(
        _lvm(
            "pvs",
            "-o",
            "pe_start,vg_extent_size",
            "--units",
            "b",
            "--nosuffix",
            "--reportformat",
            "json",
            dev,
            dev=dev,
        )
    )["report"][0]["pv"][0]
    pe_start, extent = int(pv["pe_start"]), int(pv["vg_extent_size"])
    segs = json.loads(
        _lvm(
            "lvs",
            "--segments",
            "-o",
            "lv_name,seg_start,seg_size,seg_pe_ranges",
            "--units",
            "b",
            "--nosuffix",
            "--reportformat",
            "json",
            vg,
            dev=dev,
        )
    )
    out: dict[str, list[VolumeExtent]] = {}
    for seg in segs["report"][0]["seg"]:
        first_pe = int(seg["seg_pe_ranges"].rsplit(":", 1)[1].split("-")[0])
        out.setdefault(seg["lv_name"], []).append(
            VolumeExtent(
                volume_offset=int(seg["seg_start"]),
                disk_offset=part_off + pe_start + first_pe * extent,
                length=int(seg["seg_size"]),
            )
        )
    return {name: tuple(sorted(exts, key=lambda e: e.volume_offset)) for name, exts in out.items()}
