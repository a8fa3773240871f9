"""Build the standard guest disk images, cached on disk across test sessions.

The cache key is a hash of the builder's source files and the image spec, so editing either
rebuilds; a warm run only reads a JSON manifest. Images live in
~/.cache/vmaccel/guestimages/<key>/<name>.img next to <name>.json (the manifest). A cached image
whose size or mtime no longer matches its stamp (someone wrote to it) is rebuilt: tests must use
`private_copy` before writing.

Layouts (offsets in MiB from the start of the disk; both images are 512 MiB, sparse):
  gpt: p1 1-65 FAT32 "ESP" | p2 65-193 ext4 | p3 193-321 NTFS | p4 321-510 LVM PV, VG with LV
       "data" (ext4, two 64 MiB segments separated by spacer LVs)
  mbr: p1 1-353 XFS | p2 353-511 extended { p5 354-418 FAT32 | p6 419-511 NTFS }
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from testbed.guestimages import commands, content, fatview, layout, model, mounts
from testbed.guestimages.content import populate, tree_spec
from testbed.guestimages.layout import ImageSpec, LvSpec, MiB, PartSpec
from testbed.guestimages.model import FileExpect, FsType, GuestImage, GuestVolume, VolumeExtent
from testbed.guestimages.mounts import mounted, volume_device

logger = logging.getLogger(__name__)

SPECS: dict[str, ImageSpec] = {
    "gpt": ImageSpec(
        "gpt",
        "gpt",
        512,
        (
            PartSpec(1, 1, 64, "vfat", "esp", "ESP", big_file=False),
            PartSpec(2, 65, 128, "ext4", "linux", "root"),
            PartSpec(3, 193, 128, "ntfs", "windows", "Windows"),
            PartSpec(4, 321, 189, "lvm", "pv"),
        ),
        lvs=(LvSpec("data", "ext4", "lvdata", segments=(16, 16)),),
    ),
    "mbr": ImageSpec(
        "mbr",
        "mbr",
        512,
        (
            PartSpec(1, 1, 352, "xfs", "xfs", "xfsroot"),
            PartSpec(2, 353, 158, "extended"),
            PartSpec(5, 354, 64, "vfat", "fat", "DATA", big_file=False),
            PartSpec(6, 419, 92, "ntfs", "ntfs", "Data"),
        ),
    ),
}
_BUILD_MODULES = (content, layout, model, mounts, fatview, commands)
# Names mkfs itself creates; their mtime is the mkfs time, so it is not pinned.
_MKFS_ENTRIES = {"ext4": {"lost+found": FileExpect("dir", mode=0o700)}}


def volume_names(name: str) -> tuple[str, ...]:
    """The volume names image `name` will have, without building it (for parametrize)."""
    spec = SPECS[name]
    parts = [p.name for p in spec.parts if p.fstype not in ("extended", "lvm")]
    return (*parts, *(_lv_name(lv) for lv in spec.lvs))


def _lv_name(lv: LvSpec) -> str:
    return f"lv-{lv.name}"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmaccel" / "guestimages"


def cache_key(spec: ImageSpec) -> str:
    """Hash of everything that shapes the image: the builder's sources and the spec."""
    h = hashlib.sha256(repr(spec).encode())
    for module in (*_BUILD_MODULES, __import__(__name__, fromlist=["_"])):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()[:16]


def load_or_build(name: str, root: Path | None = None) -> GuestImage:
    """The cached image `name` (see SPECS), building it first if needed. Safe to call from
    several processes at once: builders serialise on a lock file per key."""
    spec = SPECS[name]
    root = root or cache_root()
    key_dir = root / f"{name}-{cache_key(spec)}"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key_dir.name}.lock"):
        cached = _load_cached(key_dir, name)
        if cached is not None:
            return cached
        shutil.rmtree(key_dir, ignore_errors=True)
        tmp = root / f".{key_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            started = time.monotonic()
            image = build_image(spec, tmp / f"{name}.img")
            _write_manifest(tmp, image)
            tmp.rename(key_dir)
            logger.info("built %s in %.1f s", name, time.monotonic() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        loaded = _load_cached(key_dir, name)
        assert loaded is not None
        return loaded


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _write_manifest(directory: Path, image: GuestImage) -> None:
    (directory / f"{image.name}.json").write_text(model.dump_image(image))
    (directory / f"{image.name}.stamp").write_text(_stamp(image.path))


def _load_cached(key_dir: Path, name: str) -> GuestImage | None:
    img, manifest, stamp = (key_dir / f"{name}{ext}" for ext in (".img", ".json", ".stamp"))
    if not (img.exists() and manifest.exists() and stamp.exists()):
        return None
    if stamp.read_text() != _stamp(img):
        logger.warning("cached %s was modified; rebuilding", img)
        return None
    return model.load_image(manifest.read_text(), path=img)


def build_image(spec: ImageSpec, path: Path) -> GuestImage:
    """Create the raw image at `path` (sparse) and fill every filesystem; return its manifest."""
    with open(path, "wb") as f:
        f.truncate(spec.size_mib * MiB)
    partitions = layout.write_table(path, spec)
    volumes: list[GuestVolume] = []
    for part in spec.parts:
        if part.fstype == "extended":
            continue
        if part.fstype == "lvm":
            volumes += _build_lvm(path, spec, part)
            continue
        extent = VolumeExtent(0, part.start_mib * MiB, part.size_mib * MiB)
        volumes.append(
            _fill_volume(
                path,
                GuestVolume(
                    part.name,
                    cast(FsType, part.fstype),  # a filesystem: lvm/extended were skipped
                    extent.disk_offset,
                    extent.length,
                    part.label,
                    None,
                    (extent,),
                    partition=part.number,
                ),
                part.big_file,
            )
        )
    return GuestImage(spec.name, path, spec.size_mib * MiB, spec.table, partitions, tuple(volumes))


def _build_lvm(path: Path, spec: ImageSpec, part: PartSpec) -> list[GuestVolume]:
    # A fresh VG name per build: two images (or a host VG) never share a name.
    vg = f"vmaccel_{spec.name}_{uuid.uuid4().hex[:8]}"
    extents = layout.make_lvm(path, part, vg, spec.lvs)
    return [
        _fill_volume(path, _lv_volume(lv, vg, extents[lv.name], part.number), lv.big_file)
        for lv in spec.lvs
    ]


def _lv_volume(lv: LvSpec, vg: str, extents: tuple[VolumeExtent, ...], number: int) -> GuestVolume:
    size = sum(e.length for e in extents)
    return GuestVolume(
        _lv_name(lv),
        lv.fstype,
        extents[0].disk_offset,
        size,
        lv.label,
        (vg, lv.name),
        extents,
        partition=number,
    )


def _fill_volume(path: Path, volume: GuestVolume, big_file: bool) -> GuestVolume:
    """mkfs, then write the standard tree through a real mount; unmounting leaves it clean."""
    with volume_device(path, volume, read_only=False) as dev:
        layout.mkfs(dev, volume.fstype, volume.label, volume.offset)
    with mounted(path, volume, read_only=False) as root:
        files = populate(
            str(root), tree_spec(volume.fstype, big_file), volume.fstype, salt=volume.name
        )
        subprocess.run(["sync", "-f", str(root)], check=True)
    files.update(_MKFS_ENTRIES.get(volume.fstype, {}))
    return GuestVolume(
        volume.name,
        volume.fstype,
        volume.offset,
        volume.size,
        volume.label,
        volume.lvm,
        volume.extents,
        dict(sorted(files.items())),
        volume.partition,
    )
