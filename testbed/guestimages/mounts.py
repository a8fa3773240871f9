"""Loop devices, mounts and ntfs-3g for the volumes of a raw disk image, as context managers.

Every context manager undoes exactly what it did, in a finally block, so a failing build or test
leaves no loop device, mount or ntfs-3g process behind.

There is no device-mapper in this kernel, so an LVM logical volume cannot be activated. Instead
`volume_device` gathers the LV's extents into a sparse scratch file, loop-mounts that, and (when
writable) scatters the data back to the disk image on exit: the bytes on disk end up exactly where
LVM's metadata says they are, which is what a reader of the image must find.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.guestimages import fatview
from testbed.guestimages.commands import run
from testbed.guestimages.model import GuestVolume

logger = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_MOUNT_OPTIONS: dict[tuple[str, bool], str] = {
    # noload/norecovery: a read-only mount must never replay a journal, even on a dirty fs.
    ("ext4", True): "ro,noload",
    ("ext4", False): "noinit_itable",
    # nouuid: every copy of a cached image shares its XFS uuid, and the kernel refuses a
    # second mount of one uuid (two test processes, or a copy beside its original).
    ("xfs", True): "ro,norecovery,nouuid",
    ("xfs", False): "nouuid",
}


@contextlib.contextmanager
def loop_device(path: Path, offset: int, size: int, read_only: bool) -> Iterator[str]:
    """Attach `size` bytes of `path` at `offset` (bytes) to a free loop device."""
    args = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    dev = run(*args, *(["--read-only"] if read_only else []), str(path)).strip()
    try:
        yield dev
    finally:
        run("losetup", "--detach", dev)
        _wait_detached(dev)


def _wait_detached(dev: str, timeout: float = 10.0) -> None:
    """Wait until the kernel has really let go of `dev`: `losetup --detach` only marks a loop
    device for removal while someone (udev's blkid probe of a fresh device, say) holds it."""
    backing = Path("/sys/block") / Path(dev).name / "loop"
    deadline = time.monotonic() + timeout
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def punch_hole(fd: int, offset: int, length: int) -> None:
    if (
        _libc.fallocate(
            fd,
            _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
            ctypes.c_long(offset),
            ctypes.c_long(length),
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield (offset, end) of the data (non-hole) regions of `fd` within [start, end)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole


def copy_sparse(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    """Copy `length` bytes so that dst matches src; holes in src become holes in dst."""
    pos = 0
    for data, end in data_ranges(src, src_off, src_off + length):
        if data - src_off > pos:
            punch_hole(dst, dst_off + pos, data - src_off - pos)
        _copy_range(src, data, dst, dst_off + data - src_off, end - data)
        pos = end - src_off
    if length > pos:
        punch_hole(dst, dst_off + pos, length - pos)


def clone_image(src: Path, dest: Path) -> None:
    """Copy a sparse image keeping exactly its holes (cp --sparse=always would also turn
    written zero blocks into holes, so block status of the copy would differ)."""
    with open(src, "rb") as s, open(dest, "wb") as d:
        size = os.fstat(s.fileno()).st_size
        d.truncate(size)
        for start, end in data_ranges(s.fileno(), 0, size):
            _copy_range(s.fileno(), start, d.fileno(), start, end - start)


def _copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    while length:
        n = os.copy_file_range(src, dst, length, src_off, dst_off)
        if n == 0:
            raise OSError(errno.EIO, "copy_file_range made no progress")
        src_off, dst_off, length = src_off + n, dst_off + n, length - n


@contextlib.contextmanager
def volume_device(image: Path, volume: GuestVolume, read_only: bool) -> Iterator[str]:
    """A loop device showing the volume's bytes contiguously (see the module docstring)."""
    if len(volume.extents) == 1:
        ext = volume.extents[0]
        with loop_device(image, ext.disk_offset, ext.length, read_only) as dev:
            yield dev
        return
    with tempfile.NamedTemporaryFile(dir=image.parent, prefix=".lv-") as scratch:
        fd_mode = os.O_RDONLY if read_only else os.O_RDWR
        disk = os.open(image, fd_mode)
        try:
            os.truncate(scratch.name, volume.size)
            for ext in volume.extents:
                copy_sparse(disk, ext.disk_offset, scratch.fileno(), ext.volume_offset, ext.length)
            with loop_device(Path(scratch.name), 0, volume.size, read_only) as dev:
                yield dev
            if not read_only:
                for ext in volume.extents:
                    copy_sparse(
                        scratch.fileno(), ext.volume_offset, disk, ext.disk_offset, ext.length
                    )
                os.fsync(disk)
        finally:
            os.close(disk)


@contextlib.contextmanager
def mounted(image: Path, volume: GuestVolume, read_only: bool = True) -> Iterator[Path]:
    """Mount the volume's filesystem and yield the mount point: the kernel for ext4 and XFS,
    ntfs-3g for NTFS, and for FAT (no vfat in this kernel) an mtools-synchronised directory."""
    with (
        volume_device(image, volume, read_only) as dev,
        tempfile.TemporaryDirectory(prefix="vmaccel-mnt-") as mnt,
    ):
        if volume.fstype == "ntfs":
            with _ntfs3g(dev, Path(mnt), read_only):
                yield Path(mnt)
            return
        if volume.fstype == "vfat":
            with fatview.staged(dev, Path(mnt), read_only):
                yield Path(mnt)
            return
        options = _MOUNT_OPTIONS[(volume.fstype, read_only)]
        run("mount", "-t", volume.fstype, "-o", options, dev, mnt)
        try:
            yield Path(mnt)
        finally:
            run("umount", mnt)


@contextlib.contextmanager
def _ntfs3g(dev: str, mnt: Path, read_only: bool) -> Iterator[None]:
    """ntfs-3g in the foreground (no_detach), so that after unmount we can wait for it to exit:
    only then are its last writes and the clean-volume flag on the device."""
    options = "no_detach,big_writes" + (",ro" if read_only else "")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(["ntfs-3g", "-o", options, dev, str(mnt)], stdout=log, stderr=log)
        try:
            _wait_mounted(mnt, proc)
            yield
        finally:
            if os.path.ismount(mnt):
                run("umount", str(mnt))
            elif proc.poll() is None:
                proc.terminate()  # never mounted: nothing to flush
            if proc.wait(timeout=60) not in (0, None):
                log.seek(0)
                logger.warning("ntfs-3g exited %s: %s", proc.returncode, log.read()[-2000:])


def _wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            raise RuntimeError(f"ntfs-3g exited {proc.returncode} before mounting {mnt}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"ntfs-3g did not mount {mnt} within {timeout} s")
        time.sleep(0.02)
