"""A FAT filesystem as a plain directory, kept in sync through mtools.

This kernel has no vfat driver, so FAT volumes are read and written with mtools, the other real
FAT implementation: on entry the whole filesystem is copied out (`mcopy -s -m`, keeping mtimes),
and on a clean exit from a writable view every difference is applied back with mdel/mdeltree/
mcopy. Directories that are new as a whole are copied recursively, which keeps their mtimes;
directories whose entries changed get the time of the change, as on a real mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed.guestimages.commands import run


@dataclass(frozen=True)
class _Seen:
    is_dir: bool
    digest: str | None
    mtime: int


@contextlib.contextmanager
def staged(dev: str, stage: Path, read_only: bool) -> Iterator[None]:
    """Fill `stage` from the FAT on `dev`; if writable, write changes back on a clean exit."""
    if run("mdir", "-b", "-i", dev, "::/").strip():
        run("mcopy", "-s", "-m", "-n", "-i", dev, "::/*", f"{stage}/")
    before = _scan(stage)
    yield
    if not read_only:
        _apply(dev, stage, before, _scan(stage))


def _scan(stage: Path) -> dict[str, _Seen]:
    out: dict[str, _Seen] = {}
    for dirpath, dirnames, filenames in os.walk(stage):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, stage)
            is_dir = name in dirnames
            digest = None if is_dir else hashlib.sha256(Path(full).read_bytes()).hexdigest()
            out[rel] = _Seen(is_dir, digest, int(os.stat(full).st_mtime))
    return out


def _parent(path: str) -> str:
    return os.path.dirname(path)


def _apply(dev: str, stage: Path, before: dict[str, _Seen], after: dict[str, _Seen]) -> None:
    gone = {p for p in before if p not in after}
    for path in sorted(gone):
        if _parent(path) in gone:
            continue  # removed with its directory
        run("mdeltree" if before[path].is_dir else "mdel", "-i", dev, f"::/{path}")
    by_dest: dict[str, list[str]] = {}
    for path, seen in sorted(after.items()):
        parent_is_new = _parent(path) != "" and _parent(path) not in before
        changed = path not in before or (not seen.is_dir and before[path] != seen)
        if changed and not parent_is_new:  # a new parent brings its children along
            by_dest.setdefault(_parent(path), []).append(str(stage / path))
    for dest, sources in by_dest.items():
        run("mcopy", "-s", "-m", "-o", "-i", dev, *sources, f"::/{dest}/" if dest else "::/")
