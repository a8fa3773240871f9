"""The guest's write log of a disk image: every byte range written to it, as CBT would see them.

A change tracker (ESXi's ctk file) records guest writes, not changes: a block rewritten with
the bytes it held is reported like a changed one. To measure what a real tracker would report
for ``backup_images.py``'s "day 1", the image is served as the single file ``disk.img`` of a
FUSE passthrough (``serve``, in a child process) while the guest's filesystem runs on a loop
device over that file; every write request the loop device sends is logged. :func:`traced`
wraps this for the image builder. ``mfusepy`` (a vmaccel dependency) and ``/dev/fuse`` needed.

Log format (read by the test bed's apply-image): one ``offset length`` line per extent, in
bytes, sorted and merged (overlapping or adjacent writes joined), after ``#`` comment lines
with the totals. Writes land in the image as they come (``pwrite``), so the image ends as if
written directly.

Run as ``python bench/write_trace.py IMAGE MOUNTPOINT LOG`` it serves until unmounted
(``fusermount -u MOUNTPOINT``), then writes LOG.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "disk.img"


@dataclass(frozen=True)
class WriteLog:
    """Totals of one traced session, in bytes: ``requests`` write requests carrying
    ``requested`` bytes (a byte written twice counts twice) over ``distinct`` bytes in
    ``extents`` merged extents."""

    requests: int
    requested: int
    distinct: int
    extents: int


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) ranges sorted and merged: overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            last_start, last_length = out[-1]
            out[-1] = (last_start, max(last_start + last_length, start + length) - last_start)
        elif length > 0:
            out.append((start, length))
    return out


def write_log(path: Path, ranges: list[tuple[int, int]]) -> WriteLog:
    """Write the log of ``ranges`` (write requests, in arrival order) to ``path``."""
    merged = merge(ranges)
    totals = WriteLog(
        len(ranges), sum(n for _, n in ranges), sum(n for _, n in merged), len(merged)
    )
    lines = [
        "# offset length (bytes; sorted, merged)",
        f"# requests {totals.requests} requested {totals.requested}",
        f"# distinct {totals.distinct} extents {totals.extents}",
    ]
    lines += [f"{o} {n}" for o, n in merged]
    path.write_text("\n".join(lines) + "\n")
    return totals


def read_log(path: Path) -> WriteLog:
    """The totals of a log written by :func:`write_log`."""
    words: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        parts = line[1:].split()
        words.update(
            {k: int(v) for k, v in zip(parts[::2], parts[1::2], strict=False) if v.isdigit()}
        )
    return WriteLog(words["requests"], words["requested"], words["distinct"], words["extents"])


def serve(image: Path, mountpoint: Path, log: Path) -> None:
    """Serve ``image`` as ``mountpoint/disk.img`` until unmounted; then write ``log``."""
    import mfusepy  # only the child needs the binding

    fd = os.open(image, os.O_RDWR)
    ranges: list[tuple[int, int]] = []
    size = os.fstat(fd).st_size

    class Passthrough(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True  # times in nanoseconds

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            now = time.time_ns()
            base = {"st_uid": 0, "st_gid": 0, "st_atime": now, "st_mtime": now, "st_ctime": now}
            if path == "/":
                return {**base, "st_mode": stat.S_IFDIR | 0o700, "st_nlink": 2}
            if path == "/" + NAME:
                return {**base, "st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", NAME]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: int) -> bytes:
            return os.pread(fd, length, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if offset + len(data) > size:
                raise mfusepy.FuseOSError(errno.ENOSPC)
            n = os.pwrite(fd, data, offset)
            ranges.append((offset, n))
            return n

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            os.fsync(fd)
            return 0

    try:
        mfusepy.FUSE(Passthrough(), str(mountpoint), foreground=True, nothreads=True)
    finally:
        os.fsync(fd)
        os.close(fd)
        write_log(log, ranges)


@contextlib.contextmanager
def traced(image: Path, log: Path) -> Iterator[Path]:
    """Serve ``image`` through the tracer; yields the path to use instead of ``image``. On
    exit the tracer is unmounted and ``log`` holds every write made through that path."""
    mountpoint = image.with_name(image.name + ".trace-mnt")
    mountpoint.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, str(image), str(mountpoint), str(log)], stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the write tracer did not mount {mountpoint}")
            time.sleep(0.05)
        yield mountpoint / NAME
    finally:
        for _ in range(100):  # a just-detached loop device may hold the file a moment longer
            if not os.path.ismount(mountpoint):
                break
            if subprocess.run(["fusermount", "-u", str(mountpoint)], check=False).returncode:
                time.sleep(0.1)
        proc.wait(timeout=120)
        mountpoint.rmdir()
    if proc.returncode != 0 or not log.exists():
        raise RuntimeError(f"the write tracer failed (exit {proc.returncode}); no log at {log}")


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
