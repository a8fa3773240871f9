"""The known file tree written into every guest volume, and the code that writes it.

Contents are a pure function of (volume name, spec): bytes come from a blake3 XOF keyed by the
path, so a rebuilt image holds the same files with the same hashes. `populate` writes them
through a mounted filesystem and returns the expectations (model.FileExpect) computed from the
spec, not read back, so a test that re-reads the mount checks the filesystem, not itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

import blake3

from testbed.guestimages.model import FileExpect, FsType

MiB = 1 << 20
BASE_MTIME = 1_700_000_000  # even: FAT keeps mtimes in 2 s steps
SYMLINK_FS: frozenset[str] = frozenset({"ext4", "xfs", "ntfs"})
POSIX_MODE_FS: frozenset[str] = frozenset({"ext4", "xfs"})
_WORDS = (
    "block",
    "extent",
    "chunk",
    "pack",
    "image",
    "backup",
    "snapshot",
    "vmdk",
    "changeId",
    "allocation",
    "journal",
    "inode",
    "cluster",
    "sector",
    "hole",
    "zero",
    "clean",
    "dirty",
    "replay",
    "segment",
    "volume",
    "group",
    "logical",
    "physical",
)


@dataclass(frozen=True)
class Entry:
    """One name to create. `source` says how file bytes are made: "text" (compressible),
    "random" (incompressible), "sparse" (random bytes in `data` ranges, holes between).
    `target` is the link text of a symlink or the existing path a hardlink joins."""

    path: str
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    source: str = "text"
    size: int = 0
    target: str | None = None
    mode: int = 0o644
    data: tuple[tuple[int, int], ...] | None = None


def random_bytes(key: str, size: int) -> bytes:
    return blake3.blake3(key.encode()).digest(length=size) if size else b""


def text_bytes(key: str, size: int) -> bytes:
    """Log-like lines from a small vocabulary: zstd squeezes them, but blocks are not zero."""
    stream = random_bytes(key, max(64, size // 6))
    out = bytearray()
    i = 0
    while len(out) < size:
        word = _WORDS[stream[i % len(stream)] % len(_WORDS)]
        out += f"{i:08d} {key[:24]} {word} ok\n".encode()
        i += 1
    return bytes(out[:size])


def file_bytes(entry: Entry, salt: str = "") -> bytes:
    """The full content of a regular file entry (holes of sparse files as zeros)."""
    key = f"{salt}/{entry.path}"
    if entry.source == "random":
        return random_bytes(key, entry.size)
    if entry.source == "sparse":
        buf = bytearray(entry.size)
        for off, length in entry.data or ():
            buf[off : off + length] = random_bytes(f"{key}@{off}", length)
        return bytes(buf)
    return text_bytes(key, entry.size)


def mtime_for(path: str, salt: str = "") -> int:
    digest = hashlib.sha256(f"{salt}/{path}".encode()).digest()
    return BASE_MTIME + 2 * (int.from_bytes(digest[:4], "big") % 10_000_000)


def tree_spec(fstype: FsType, big_file: bool) -> tuple[Entry, ...]:
    """The standard tree, trimmed to what `fstype` can hold (FAT: no links, no sparse files)."""
    entries = [
        Entry("README.txt", "file", size=6000),
        Entry("docs/report 2023 final.txt", "file", size=20_000),
        Entry("docs/naïve café ☕.txt", "file", size=3000),
        Entry("docs/日本語/ファイル.txt", "file", size=1234),
        Entry("empty.bin", "file", size=0),
        Entry("empty dir", "dir", mode=0o755),
        Entry("bin/run.sh", "file", size=200, mode=0o755),
        Entry("secret.key", "file", source="random", size=64, mode=0o600),
        Entry("/".join(f"l{i:02d}" for i in range(1, 13)) + "/leaf.txt", "file", size=100),
    ]
    entries += [Entry(f"logs/app-{n:02d}.log", "file", size=4096 * (n + 1) + n) for n in range(24)]
    entries += [
        Entry(f"blobs/blob-{n}.bin", "file", source="random", size=(n + 1) * 37_000)
        for n in range(6)
    ]
    if big_file:
        entries.append(Entry("big/random.bin", "file", source="random", size=50 * MiB))
    if fstype in SYMLINK_FS:
        entries += _posix_entries()
    return tuple(entries)


def _posix_entries() -> list[Entry]:
    return [
        Entry(
            "sparse.img",
            "file",
            source="sparse",
            size=32 * MiB,
            data=((0, 4096), (16 * MiB, 65536), (32 * MiB - 4096, 4096)),
        ),
        Entry("links/hard-a.txt", "file", size=5000),
        Entry("links/hard-b.txt", "hardlink", target="links/hard-a.txt"),
        Entry("links/sub/hard-c.txt", "hardlink", target="links/hard-a.txt"),
        Entry("links/to-readme", "symlink", target="../README.txt"),
        Entry("links/abs-passwd", "symlink", target="/etc/passwd"),
        Entry("links/escape", "symlink", target="../../.."),
        Entry("links/dangling", "symlink", target="does/not/exist"),
        Entry("links/deep-dir", "symlink", target="../l01/l02"),
    ]


def parent_dirs(paths: list[str]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        out.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
    return out


def populate(
    root: str, entries: tuple[Entry, ...], fstype: FsType, salt: str
) -> dict[str, FileExpect]:
    """Create `entries` under the mounted `root`; return their expectations (plus parent dirs).

    mtimes are set last and deepest-first, because creating a child bumps its directory's mtime.
    """
    expect: dict[str, FileExpect] = {}
    for entry in entries:
        expect[entry.path] = write_entry(root, entry, fstype, salt, expect)
    for d in parent_dirs(list(expect)) - set(expect):
        os.makedirs(os.path.join(root, d), exist_ok=True)
        expect[d] = FileExpect("dir", mode=_mode(0o755, fstype), mtime=mtime_for(d, salt))
    stamp_mtimes(root, expect)
    return expect


def write_entry(
    root: str, entry: Entry, fstype: FsType, salt: str, expect: dict[str, FileExpect]
) -> FileExpect:
    full = os.path.join(root, entry.path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    mtime = mtime_for(entry.path, salt)
    if entry.kind == "dir":
        os.makedirs(full, exist_ok=True)
        os.chmod(full, entry.mode)
        return FileExpect("dir", mode=_mode(entry.mode, fstype), mtime=mtime)
    if entry.kind == "symlink":
        assert entry.target is not None
        os.symlink(entry.target, full)
        return FileExpect("symlink", size=len(entry.target.encode()), target=entry.target)
    if entry.kind == "hardlink":
        assert entry.target is not None and entry.target < entry.path
        os.link(os.path.join(root, entry.target), full)
        first = expect[entry.target]
        return FileExpect(
            "hardlink", first.size, first.sha256, entry.target, first.mode, first.mtime
        )
    content = file_bytes(entry, salt)
    write_file(full, content, entry.data)
    os.chmod(full, entry.mode)
    return FileExpect(
        "file",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        mode=_mode(entry.mode, fstype),
        mtime=mtime,
        data=entry.data,
    )


def write_file(full: str, content: bytes, data: tuple[tuple[int, int], ...] | None) -> None:
    """Write `content`; for a sparse file only its `data` ranges, so the rest stays a hole."""
    with open(full, "wb") as f:
        if data is None:
            f.write(content)
            return
        for off, length in data:
            f.seek(off)
            f.write(content[off : off + length])
        f.truncate(len(content))


def stamp_mtimes(root: str, expect: dict[str, FileExpect]) -> None:
    """Apply recorded mtimes; directories last and deepest first (children bump parents)."""
    for path, fe in sorted(expect.items(), key=lambda kv: (kv[1].kind == "dir", -kv[0].count("/"))):
        if fe.mtime is not None and fe.kind != "hardlink":
            os.utime(os.path.join(root, path), (fe.mtime, fe.mtime))


def _mode(mode: int, fstype: FsType) -> int | None:
    return mode if fstype in POSIX_MODE_FS else None
