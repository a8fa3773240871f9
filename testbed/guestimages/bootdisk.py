"""Tiny bootable Linux disks for boot tests (``vmaccel verify --boot``), cached on disk.

A disk is 24 MiB, one FAT16 partition from 1 MiB holding Debian's kernel and an initramfs
whose ``/init`` (busybox sh) prints :data:`MARKER` on the serial console and the screen, then
powers the machine off. Two firmwares:

- ``bios``: an MBR (syslinux's ``mbr.bin``), the partition marked active, syslinux installed
  in it (``syslinux --install`` through mtools: no loop mount, no root);
- ``efi``: a GPT with the partition as the EFI system partition, holding
  ``EFI/BOOT/BOOTX64.EFI``: a unified kernel image (systemd's EFI stub with the kernel,
  initramfs and command line as sections, joined with objcopy).

Variants: ``panic`` has an initramfs without ``/init``, so the kernel panics ("VFS: Unable to
mount root fs"); :func:`zero_boot_sector` makes the "no bootable disk" case.

The kernel is ``vmlinuz`` of the package ``linux-image-amd64`` depends on, fetched with
``apt-get download`` and extracted with dpkg-deb into the cache (never installed: its
initramfs triggers are slow). The initramfs is a newc cpio written here (no cpio tool).

Tools (Debian packages): busybox-static, syslinux, syslinux-common, mtools, dosfstools,
fdisk (sfdisk), binutils (objcopy), systemd-boot-efi (the stub); apt for the kernel.

Cache: ``~/.cache/vmaccel/guestimages/boot-<firmware>-<variant>-<key>.img``; the key hashes
this module's source, the kernel package name and the busybox binary, so a change to any
rebuilds. Builders serialise on a lock file. The cached disks are shared: never write to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from testbed.guestimages.builder import cache_root
from testbed.guestimages.commands import run

Firmware = Literal["bios", "efi"]
Variant = Literal["ok", "panic"]
MARKER = "vmaccel-boot-ok login:"
MiB = 1 << 20
DISK_MIB = 24
PART_START = 2048  # sectors: the partition starts at 1 MiB
CMDLINE = "console=tty0 console=ttyS0 quiet"
BUSYBOX = Path("/usr/bin/busybox")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
echo "{MARKER}" > /dev/ttyS0
echo "{MARKER}" > /dev/tty0
/bin/busybox poweroff -f
"""
_SYSLINUX_CFG = f"""DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND {CMDLINE}
"""


def boot_disk(firmware: Firmware, variant: Variant = "ok", root: Path | None = None) -> Path:
    """The cached boot disk for ``firmware`` and ``variant``, built first if needed."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    key = hashlib.sha256(Path(__file__).read_bytes() + package.encode())
    key.update(BUSYBOX.read_bytes())
    path = root / f"boot-{firmware}-{variant}-{key.hexdigest()[:16]}.img"
    with _locked(root / f".{path.name}.lock"):
        if path.exists():
            return path
        kernel = fetch_kernel(package, root / "kernels")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            build(tmp, firmware, kernel, initramfs(with_init=variant == "ok"))
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def zero_boot_sector(src: Path, dest: Path) -> Path:
    """A copy of ``src`` at ``dest`` with its first sector (MBR / protective MBR) zeroed."""
    shutil.copyfile(src, dest)
    with open(dest, "r+b") as f:
        f.write(bytes(512))
    return dest


def kernel_package() -> str:
    """The kernel package ``linux-image-amd64`` depends on (e.g. linux-image-6.1.0-57-amd64)."""
    out = run("apt-cache", "depends", "linux-image-amd64")
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise RuntimeError(f"linux-image-amd64 depends on no kernel package:\n{out}")


def fetch_kernel(package: str, cache: Path) -> Path:
    """``vmlinuz`` of ``package``, downloaded (not installed) and extracted once into
    ``cache/<package>/vmlinuz``."""
    target = cache / package / "vmlinuz"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            ["apt-get", "download", "-q", package], cwd=tmp, check=True, capture_output=True
        )
        (deb,) = Path(tmp).glob("*.deb")
        tarball = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
        names = subprocess.run(
            ["tar", "-t"], input=tarball, check=True, capture_output=True
        ).stdout.decode()
        (member,) = [n for n in names.splitlines() if n.startswith("./boot/vmlinuz-")]
        subprocess.run(["tar", "-x", "-C", tmp, member], input=tarball, check=True)
        os.replace(Path(tmp) / member, target)
    return target


def initramfs(with_init: bool = True) -> bytes:
    """A gzip'ed newc cpio: /dev/console, busybox as /bin/busybox and (``with_init``) /init."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("dev", 0o040755, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("bin", 0o040755, b"", (0, 0)),
        ("bin/busybox", 0o100755, BUSYBOX.read_bytes(), (0, 0)),
    ]
    if with_init:
        entries.append(("init", 0o100755, _INIT.encode(), (0, 0)))
    return gzip.compress(_cpio(entries), 6, mtime=0)


def _cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    out = io.BytesIO()
    for ino, (name, mode, data, (major, minor)) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1
    ):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        out.write(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded)
        out.write(bytes(-(110 + len(encoded)) % 4))
        out.write(data + bytes(-len(data) % 4))
    return out.getvalue()


def build(path: Path, firmware: Firmware, kernel: Path, initrd: bytes) -> None:
    """Write the disk at ``path`` (see the module docstring)."""
    with open(path, "wb") as f:
        f.truncate(DISK_MIB * MiB)
    table = _TABLES[firmware]
    run("sfdisk", "-q", str(path), stdin=table)
    sectors = int(run("sfdisk", "--dump", str(path)).split("size=")[1].split(",")[0])
    run("mkfs.fat", "-F", "16", "--offset", str(PART_START), "-n", "VMABOOT", str(path),
        str(sectors // 2))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        initrd_path = Path(tmp) / "initrd.img"
        initrd_path.write_bytes(initrd)
        if firmware == "bios":
            _install_syslinux(path, kernel, initrd_path, Path(tmp))
        else:
            uki = Path(tmp) / "BOOTX64.EFI"
            _unified_kernel_image(kernel, initrd_path, uki, Path(tmp))
            run("mmd", "-i", _fat(path), "::/EFI", "::/EFI/BOOT")
            run("mcopy", "-i", _fat(path), str(uki), "::/EFI/BOOT/BOOTX64.EFI")


_TABLES = {"bios": "start=2048, type=e, bootable\n", "efi": "label: gpt\nstart=2048, type=U\n"}


def _fat(path: Path) -> str:
    """mtools' name of the FAT partition of disk ``path``."""
    return f"{path}@@{PART_START * 512}"


def _install_syslinux(path: Path, kernel: Path, initrd: Path, tmp: Path) -> None:
    """syslinux in the partition, its config, the kernel and initramfs, syslinux's MBR code."""
    cfg = tmp / "syslinux.cfg"
    cfg.write_text(_SYSLINUX_CFG)
    run("syslinux", "--offset", str(PART_START * 512), "--install", str(path))
    for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        run("mcopy", "-i", _fat(path), str(src), f"::/{name}")
    with open(path, "r+b") as f:
        f.write(SYSLINUX_MBR.read_bytes()[:440])  # boot code only: the table stays


def _unified_kernel_image(kernel: Path, initrd: Path, out: Path, tmp: Path) -> None:
    """systemd's EFI stub with the command line, kernel and initramfs as PE sections."""
    cmdline = tmp / "cmdline.txt"
    cmdline.write_text(CMDLINE)
    run("objcopy",
        "--add-section", f".cmdline={cmdline}", "--change-section-vma", ".cmdline=0x30000",
        "--add-section", f".linux={kernel}", "--change-section-vma", ".linux=0x2000000",
        "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x3000000",
        str(EFI_STUB), str(out))  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
