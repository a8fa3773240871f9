"""A "guest day": what a VM does to its disks between two backups, done through real filesystems.

`plan_day` is pure: from a volume's file tree, a fraction and a seed it picks which files are
rewritten in place (a few bytes to 64 KiB somewhere inside), appended to, deleted, and which new
files appear. `apply_day` carries the plan out on a copy of the image through mounts (kernel,
ntfs-3g, mtools), unmounts so every filesystem is clean again, and returns the new manifest.
The same (image, fraction, seed) always gives the same plan, bytes and mtimes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from testbed.guestimages.content import POSIX_MODE_FS, mtime_for, random_bytes
from testbed.guestimages.model import FileExpect, GuestImage, GuestVolume
from testbed.guestimages.mounts import clone_image, mounted
from testbed.guestimages.scan import sha256_file

Action = Literal["rewrite", "append", "create", "delete"]
_CYCLE: tuple[Action, ...] = ("rewrite", "append", "delete")
BIG_FILE = "big/random.bin"


@dataclass(frozen=True)
class Change:
    """One change to one file; `offset`/`length` in bytes (rewrite: where; append/create: how
    much)."""

    path: str
    action: Action
    offset: int = 0
    length: int = 0


@dataclass(frozen=True)
class GuestDay:
    """The image after the day (`image.volumes[*].files` is the new expected tree) and the
    changes per volume name."""

    image: GuestImage
    changes: Mapping[str, tuple[Change, ...]]


def plan_day(
    files: Mapping[str, FileExpect], fraction: float, seed: int, salt: str = ""
) -> tuple[Change, ...]:
    """Change round(fraction * n) of the n plain files (at least one), cycling rewrite, append,
    delete, and create a third as many new files. Files with several names or holes are left
    alone, so a change never has to be mirrored elsewhere; the 50 MiB file, when present, is
    always among the rewritten ones (a small change inside a large file is the common case)."""
    rng = random.Random(f"{seed}/{salt}")
    linked = {fe.target for fe in files.values() if fe.kind == "hardlink"}
    candidates = sorted(
        p for p, fe in files.items() if fe.kind == "file" and fe.data is None and p not in linked
    )
    count = max(1, round(fraction * len(candidates)))
    chosen = rng.sample([p for p in candidates if p != BIG_FILE], count - (BIG_FILE in files))
    if BIG_FILE in files:
        chosen.insert(0, BIG_FILE)
    changes = [_change(path, _CYCLE[i % 3], files[path].size, rng) for i, path in enumerate(chosen)]
    dirs = sorted(["", *(p for p, fe in files.items() if fe.kind == "dir" and p != "lost+found")])
    for i in range(max(1, count // 3)):
        path = os.path.join(rng.choice(dirs), f"day{seed}-new-{i:03d}.bin")
        changes.append(Change(path, "create", 0, rng.choice([0, 1000, 40_000, 300_000])))
    return tuple(changes)


def _change(path: str, action: Action, size: int, rng: random.Random) -> Change:
    if action == "rewrite" and size > 0:
        offset = rng.randrange(size)
        return Change(path, "rewrite", offset, min(rng.choice([512, 4096, 65536]), size - offset))
    if action == "delete":
        return Change(path, "delete")
    return Change(path, "append", size, rng.choice([100, 4096, 70_000]))


def apply_day(image: GuestImage, dest: Path, fraction: float, seed: int) -> GuestDay:
    """Copy `image` to `dest` (sparse; `dest` may equal image.path to mutate in place) and live
    one day on every volume of the copy."""
    if dest != image.path:
        clone_image(image.path, dest)
    volumes, changes = [], {}
    for vol in image.volumes:
        plan = plan_day(vol.files, fraction, seed, salt=vol.name)
        volumes.append(_live_day(dest, vol, plan, seed))
        changes[vol.name] = plan
    return GuestDay(replace(image, path=dest, volumes=tuple(volumes)), changes)


def _live_day(image: Path, vol: GuestVolume, plan: tuple[Change, ...], seed: int) -> GuestVolume:
    files = dict(vol.files)
    with mounted(image, vol, read_only=False) as root:
        for change in plan:
            full = os.path.join(root, change.path)
            if change.action == "delete":
                os.unlink(full)
                del files[change.path]
                continue
            _write(full, change, seed)
            mtime = mtime_for(change.path, f"day{seed}")
            os.utime(full, (mtime, mtime))
            mode = files[change.path].mode if change.path in files else _new_mode(vol)
            if change.action == "create" and mode is not None:
                os.chmod(full, mode)
            files[change.path] = FileExpect(
                "file", os.path.getsize(full), sha256_file(full), mode=mode, mtime=mtime
            )
        _restamp_dirs(root, vol, plan, files, seed)
    return replace(vol, files=dict(sorted(files.items())))


def _write(full: str, change: Change, seed: int) -> None:
    data = random_bytes(f"day{seed}/{change.path}@{change.offset}", change.length)
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if change.action == "create" else 0)
    fd = os.open(full, flags, 0o644)
    try:
        os.pwrite(fd, data, change.offset)
    finally:
        os.close(fd)


def _new_mode(vol: GuestVolume) -> int | None:
    return 0o644 if vol.fstype in POSIX_MODE_FS else None


def _restamp_dirs(
    root: Path, vol: GuestVolume, plan: tuple[Change, ...], files: dict[str, FileExpect], seed: int
) -> None:
    """Creating or deleting a name bumps its directory's mtime to now; pin it again. mtools
    cannot set a directory's time, so on FAT those mtimes are left unpinned (None)."""
    for parent in sorted({os.path.dirname(c.path) for c in plan if c.action != "rewrite"} - {""}):
        if vol.fstype == "vfat":
            files[parent] = replace(files[parent], mtime=None)
            continue
        mtime = mtime_for(parent, f"day{seed}")
        os.utime(os.path.join(root, parent), (mtime, mtime))
        files[parent] = replace(files[parent], mtime=mtime)
