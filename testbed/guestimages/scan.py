"""Read a mounted guest tree back as FileExpect records, and compare trees.

The scanner follows the manifest's conventions (model.FileExpect): the first name of a multiply
linked file in sorted order is "file", the others "hardlink"; symlinks are never followed (they
may point at the host's /etc/passwd or above the mount point).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from testbed.guestimages.content import POSIX_MODE_FS
from testbed.guestimages.model import FileExpect


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def scan_tree(root: Path, fstype: str) -> dict[str, FileExpect]:
    """Every name below `root` (not `root` itself), keyed by relative POSIX path."""
    out: dict[str, FileExpect] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            out[rel] = _record(full, st, fstype)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
    for names in inodes.values():
        first, *others = sorted(names)
        for other in others:
            out[other] = replace(out[other], kind="hardlink", target=first)
    return out


def _record(full: str, st: os.stat_result, fstype: str) -> FileExpect:
    mode = stat.S_IMODE(st.st_mode) if fstype in POSIX_MODE_FS else None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        return FileExpect("symlink", size=len(target.encode()), target=target)
    if stat.S_ISDIR(st.st_mode):
        return FileExpect("dir", mode=mode, mtime=int(st.st_mtime))
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"unexpected file type {st.st_mode:o} at {full}")
    return FileExpect("file", st.st_size, sha256_file(full), mode=mode, mtime=int(st.st_mtime))


def diff_trees(expected: Mapping[str, FileExpect], actual: Mapping[str, FileExpect]) -> list[str]:
    """Human-readable differences; empty when the trees match. `data` ranges are a writer's
    hint and not compared; an expected mtime of None matches any."""
    problems = [f"missing: {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"unexpected: {p}" for p in sorted(set(actual) - set(expected))]
    for path in sorted(set(expected) & set(actual)):
        want, got = expected[path], actual[path]
        if want.mtime is None:
            got = replace(got, mtime=None)
        if replace(want, data=None) != replace(got, data=None):
            problems.append(f"differs: {path}: expected {want}, found {got}")
    return problems
