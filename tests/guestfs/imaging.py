"""Builders for small real disk images, made with the real mkfs/partitioning tools.

Every file put into an image is random data, so its 512-byte pieces are unique on disk: the
tests find where a filesystem stored a file by content, independent of any parser of ours.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
LVM_CONFIG = (
    "devices { use_devicesfile=0 obtain_device_list_from_udev=0 } "
    "activation { udev_sync=0 udev_rules=0 } global { use_lvmetad=0 }"
)


def run(*args: str | Path, input: bytes | None = None) -> str:
    """Run a tool, raising with its stderr if it fails; returns stdout."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, input=input, check=False)
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    return proc.stdout.decode(errors="replace")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@dataclass
class FsSpec:
    """One filesystem placed on a disk image: where it is and what files it holds."""

    fstype: str
    offset: int
    size: int
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content
    name: str = ""


@dataclass
class DiskImage:
    path: Path
    size: int
    filesystems: list[FsSpec]


def make_tree(root: Path, seed: int, big: int = 600_000) -> dict[str, bytes]:
    """Write a small tree of random files under `root`; return path -> content."""
    rnd = __import__("random").Random(seed)
    files = {
        "small.txt": b"hello world\n",
        "dir one/nested/ünïcode file.bin": rnd.randbytes(70_000),
        "big.bin": rnd.randbytes(big),
        "frag/a.bin": rnd.randbytes(9000),
        "frag/b.bin": rnd.randbytes(130_001),
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def mkfs_ext4(img: Path, size: int, src: Path, *extra: str) -> None:
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", *extra, "-d", src, img)


def mkfs_vfat(img: Path, size: int, files: dict[str, bytes], src: Path, bits: int) -> None:
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkfs.vfat", "-F", str(bits), img)
    dirs = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."})
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            subprocess.run(["mmd", "-D", "s", "-i", str(img), f"::/{sub}"], capture_output=True)
    for rel in files:
        run("mcopy", "-i", img, src / rel, f"::/{rel}")


def mkfs_ntfs(img: Path, size: int, src: Path, mnt: Path) -> None:
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir(exist_ok=True)
    run("ntfs-3g", img, mnt)
    try:
        run("cp", "-a", f"{src}/.", mnt)
    finally:
        run("umount", mnt)


def mkfs_xfs(img: Path, size: int, files: dict[str, bytes], src: Path) -> None:
    """XFS populated from a mkfs.xfs prototype file (no mount needed)."""
    lines = ["/dummy", "0 0", "d--755 0 0"]
    tree: dict[str, list[str]] = {}
    for rel in files:
        parts = Path(rel).parts
        for i in range(len(parts)):
            tree.setdefault("/".join(parts[:i]), [])
            child = "/".join(parts[: i + 1])
            if child not in tree[("/".join(parts[:i]))]:
                tree["/".join(parts[:i])].append(child)

    def emit(directory: str, depth: int) -> None:
        for child in tree.get(directory, []):
            name = Path(child).name
            if child in files:
                lines.append(f"{name} ---644 0 0 {src / child}")
            else:
                lines.append(f"{name} d--755 0 0")
                emit(child, depth + 1)
                lines.append("$")

    if any(" " in p for p in files):
        raise ValueError("xfs prototype files cannot name paths with spaces")
    emit("", 0)
    lines.append("$")
    proto = img.with_suffix(".proto")
    proto.write_text("\n".join(lines) + "\n")
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkfs.xfs", "-q", "-f", "-p", proto, img)


def place(disk: Path, fs_img: Path, offset: int) -> None:
    """Copy a filesystem image into the disk image at byte `offset`, keeping holes."""
    run(
        "dd",
        f"if={fs_img}",
        f"of={disk}",
        "bs=1M",
        f"seek={offset}",
        "oflag=seek_bytes",
        "conv=notrunc,sparse",
        "status=none",
    )


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    """Overwrite `data` at byte `offset` of a file (to damage or flag a test image)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_bytes(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
