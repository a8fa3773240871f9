"""The manifest of a guest disk image: what the builder made and what a reader must find.

Units: every offset and size is in bytes. Disk offsets count from byte 0 of the raw image.
Paths inside a volume are relative POSIX paths ("docs/a.txt"), without the volume root itself.

A volume's bytes may be scattered on the disk (an LVM logical volume with several segments), so a
volume carries `extents`: each maps a byte range of the volume to a byte range of the disk. For a
partition that is one extent, (0, partition offset, partition size).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

FileKind = Literal["file", "dir", "symlink", "hardlink"]
TableKind = Literal["gpt", "mbr"]
FsType = Literal["ext4", "xfs", "ntfs", "vfat"]


@dataclass(frozen=True)
class FileExpect:
    """One name in a guest filesystem.

    kind "hardlink" is every name of a multiply linked file but the first in sorted order; its
    `target` is that first name (relative path), and size/sha256/mode/mtime repeat the file's.
    For "symlink", `target` is the link text, unresolved (it may point outside the tree).
    `mode` is the permission bits (0o7777 mask) or None where the filesystem has no POSIX modes
    (FAT, NTFS through ntfs-3g). `mtime` is whole seconds since the epoch (UTC), or None where the
    builder does not control it (symlinks). `data` lists (offset, length) ranges written with
    data for a sparse file; everything else in it reads as zeros (a hole where supported).
    """

    kind: FileKind
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    mode: int | None = None
    mtime: int | None = None
    data: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class VolumeExtent:
    """`length` bytes at `volume_offset` in the volume live at `disk_offset` in the image."""

    volume_offset: int
    disk_offset: int
    length: int


@dataclass(frozen=True)
class GuestVolume:
    """One filesystem in the image: a partition, or an LVM logical volume (`lvm` = (vg, lv))."""

    name: str
    fstype: FsType
    offset: int  # disk offset of volume byte 0 (first extent)
    size: int
    label: str
    lvm: tuple[str, str] | None
    extents: tuple[VolumeExtent, ...]
    files: Mapping[str, FileExpect] = field(default_factory=dict)
    partition: int | None = None  # partition number holding it (the PV's, for an LV)


@dataclass(frozen=True)
class GuestImage:
    """A raw disk image (sparse file) and what is inside it.

    `partitions` lists (number, offset, size, type) as written to the table; `type` is the sgdisk
    type code for GPT ("8300") or the MBR type byte in hex ("83").
    """

    name: str
    path: Path
    size: int
    table: TableKind
    partitions: tuple[tuple[int, int, int, str], ...]
    volumes: tuple[GuestVolume, ...]

    def volume(self, name: str) -> GuestVolume:
        for vol in self.volumes:
            if vol.name == name:
                return vol
        raise KeyError(f"{self.name} has no volume {name!r}")


def dump_image(image: GuestImage) -> str:
    """Serialise a manifest to JSON (paths as strings), the inverse of `load_image`."""
    # asdict deep-copies, and the read-only mapping views of loaded manifests do not copy.
    plain = replace(image, volumes=tuple(replace(v, files=dict(v.files)) for v in image.volumes))
    doc = asdict(plain)
    doc["path"] = str(image.path)
    for vol in doc["volumes"]:
        vol["files"] = dict(sorted(vol["files"].items()))
    return json.dumps(doc, indent=1, ensure_ascii=False)


def _file_from_json(doc: dict[str, Any]) -> FileExpect:
    data = doc.get("data")
    return FileExpect(**{**doc, "data": tuple(tuple(r) for r in data) if data else None})


def volume_from_json(doc: dict[str, Any]) -> GuestVolume:
    files = {path: _file_from_json(f) for path, f in doc["files"].items()}
    return GuestVolume(
        **{
            **doc,
            "lvm": tuple(doc["lvm"]) if doc["lvm"] else None,
            "extents": tuple(VolumeExtent(**e) for e in doc["extents"]),
            "files": MappingProxyType(files),
        }
    )


def load_image(text: str, path: Path | None = None) -> GuestImage:
    """Parse a manifest written by `dump_image`; `path` overrides the recorded image path."""
    doc = json.loads(text)
    return GuestImage(
        name=doc["name"],
        path=path if path is not None else Path(doc["path"]),
        size=doc["size"],
        table=doc["table"],
        partitions=tuple((int(n), int(o), int(sz), str(t)) for n, o, sz, t in doc["partitions"]),
        volumes=tuple(volume_from_json(v) for v in doc["volumes"]),
    )
