"""Churn: random guest activity (deletes, appends, rewrites, overwrites, truncations, renames,
new files and directories, removed trees) carried out through real mounts.

Unlike guestday.py, nothing here predicts the resulting tree: a churned image is checked by
reading it back with the filesystems' own tools (oracle.py), so the operations may be as
irregular as a real guest's. An `Op` names no path: `pick` and `where` are indices into the live
tree as the op finds it (modulo its size), so any list of ops applies to any volume and a
hypothesis-drawn list shrinks to fewer, smaller ops. The same (ops, salt) on the same tree always
does the same thing, byte for byte.

Sizes are bytes. Files are chosen from the regular files in order of data size (holes left
out where the filesystem reports them), largest first, then size and path, so small `pick`
values hit the big files (a small change in a large file is the common case, and deleting one
frees much data); directories in path order, the volume root first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from testbed.guestimages.content import mtime_for, random_bytes, text_bytes
from testbed.guestimages.kernelmount import mounted
from testbed.guestimages.model import GuestVolume
from testbed.guestimages.mounts import data_ranges

OpKind = Literal[
    "delete", "append", "rewrite", "overwrite", "truncate", "rename", "create", "mkdir", "rmtree"
]
KINDS: tuple[OpKind, ...] = (
    "delete",
    "append",
    "rewrite",
    "overwrite",
    "truncate",
    "rename",
    "create",
    "mkdir",
    "rmtree",
)
# Bounded so that three days of a dozen ops fit the smallest volume of the standard images.
SIZES: tuple[int, ...] = (0, 1, 100, 4095, 4096, 5000, 65_536, 70_000, 300_000, 1_500_000)
_ZERO_RUN = 128 * 1024
# mkfs's own directory: the guest never touches it.
_UNTOUCHED = frozenset({"lost+found"})


@dataclass(frozen=True)
class Op:
    """One guest action.

    `pick` selects the file (or, for rmtree, the directory) acted on; `where` the directory a
    rename, create or mkdir puts its new name in; `size` is the bytes written (append, rewrite,
    overwrite, create) or kept (truncate: the new length is `size` modulo the old one).
    """

    kind: OpKind
    pick: int = 0
    size: int = 0
    where: int = 0


def content(key: str, size: int) -> bytes:
    """Bytes for `size`, in one of three shapes chosen by `key`: incompressible, text, or
    incompressible with a 128 KiB run of zeros inside (a block the backup must not store but
    the restore must still read as zeros)."""
    shape = random_bytes(f"shape/{key}", 1)[0] % 3 if key else 0
    if shape == 1:
        return text_bytes(key, size)
    data = random_bytes(key, size)
    if shape == 2 and size > 2 * _ZERO_RUN:
        mid = size // 2
        data = data[:mid] + bytes(_ZERO_RUN) + data[mid + _ZERO_RUN :]
    return data


def churn(image: Path, volumes: Sequence[GuestVolume], ops: Sequence[Op], salt: str) -> None:
    """Apply `ops`, in order, to every volume of the raw disk `image`, each through a writable
    mount (kernel, ntfs-3g, mtools); every volume is clean again when this returns."""
    for vol in volumes:
        with mounted(image, vol, read_only=False) as root:
            for n, op in enumerate(ops):
                _apply(root, op, f"{salt}/{vol.name}/{n}")


def _files(root: Path) -> list[str]:
    sized = []
    for path in _walk(root):
        st = os.lstat(root / path)
        if stat.S_ISREG(st.st_mode):
            sized.append((-_data_bytes(root / path, st.st_size), -st.st_size, path))
    return [path for *_, path in sorted(sized)]


def _data_bytes(path: Path, size: int) -> int:
    """Bytes of `path` that are not holes (SEEK_DATA/SEEK_HOLE; all of it where the filesystem
    cannot tell). Unlike st_blocks, this does not move with speculative preallocation."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(end - start for start, end in data_ranges(fd, 0, size))
    finally:
        os.close(fd)


def _dirs(root: Path) -> list[str]:
    return ["", *(p for p in _walk(root) if (root / p).is_dir() and not (root / p).is_symlink())]


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in _UNTOUCHED]
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def _apply(root: Path, op: Op, key: str) -> None:
    # Short, lowercase and unique per op: a valid name on every filesystem, FAT included.
    name = "c" + hashlib.sha256(key.encode()).hexdigest()[:7]
    if op.kind in ("create", "mkdir"):
        dirs = _dirs(root)
        parent = root / dirs[op.where % len(dirs)]
        if op.kind == "mkdir":
            (parent / name).mkdir()
        else:
            _write(parent / f"{name}.bin", content(key, op.size), truncate=True)
        return
    if op.kind == "rmtree":
        dirs = _dirs(root)[1:]
        if dirs:
            shutil.rmtree(root / dirs[op.pick % len(dirs)])
        return
    files = _files(root)
    if not files:
        return
    target = root / files[op.pick % len(files)]
    _change(root, target, op, key, name)


def _change(root: Path, target: Path, op: Op, key: str, name: str) -> None:
    size = target.stat().st_size
    if op.kind == "delete":
        target.unlink()
        return
    if op.kind == "rename":
        dirs = _dirs(root)
        # The old name's tail is kept, bounded: names renamed again and again stay legal.
        target.rename(root / dirs[op.where % len(dirs)] / f"{name}-{target.name[-48:]}")
        return
    if op.kind == "truncate":
        os.truncate(target, op.size % size if size else 0)
    elif op.kind == "overwrite":
        _write(target, content(key, op.size), truncate=True)
    elif op.kind == "append":
        _write(target, content(key, op.size), offset=size)
    else:  # rewrite: `size` bytes somewhere inside, growing the file if they run past its end
        _write(target, content(key, op.size), offset=op.where % (size + 1))
    mtime = mtime_for(target.name, key)
    os.utime(target, (mtime, mtime))


def _write(path: Path, data: bytes, offset: int = 0, truncate: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
