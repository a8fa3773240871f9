"""nbdkit serving a raw image read-only over a unix socket, and the holes it should report.

nbdkit's file plugin answers NBD block status from SEEK_DATA/SEEK_HOLE on the file, which is
how the `nbd` transport learns sparseness on a full read (DESIGN.md invariant 4). `file_holes`
is the ground truth, `nbd_holes` what a client sees.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.guestimages.mounts import data_ranges

NBD_STATE_HOLE = 1  # base:allocation flags
NBD_STATE_ZERO = 2
_STATUS_CHUNK = 1 << 30  # bytes asked per block_status call; servers may answer less


@contextlib.contextmanager
def nbd_export(path: Path, timeout: float = 20.0) -> Iterator[str]:
    """Serve `path` read-only with nbdkit's file plugin; yield its nbd+unix URI.

    nbdkit runs in the foreground (-f) as our child, so teardown is terminate + wait, and
    `--exit-with-parent` covers the case where the test process dies first.
    """
    with tempfile.TemporaryDirectory(prefix="vmaccel-nbd-") as tmp:
        sock = os.path.join(tmp, "nbd.sock")
        proc = subprocess.Popen(
            ["nbdkit", "-f", "--exit-with-parent", "-r", "-U", sock, "file", f"file={path}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for_socket(sock, proc, timeout)
            yield f"nbd+unix:///?socket={sock}"
        finally:
            proc.terminate()
            proc.wait(timeout=timeout)
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_for_socket(sock: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nbdkit exited {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nbdkit did not create {sock} within {timeout} s")
        time.sleep(0.02)


def file_holes(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every hole in `path`, from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return _complement(list(data_ranges(fd, 0, size)), size)
    finally:
        os.close(fd)


def _complement(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    holes, pos = [], 0
    for start, end in ranges:
        if start > pos:
            holes.append((pos, start - pos))
        pos = end
    if size > pos:
        holes.append((pos, size - pos))
    return holes


def nbd_holes(uri: str) -> list[tuple[int, int]]:
    """(offset, length) of every range the server reports as a hole, adjacent ones merged."""
    import nbd  # python3-libnbd, a system package; imported late so collection never needs it

    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    try:
        size, pos = h.get_size(), 0
        holes: list[tuple[int, int]] = []
        while pos < size:
            entries: list[int] = []

            def collect(
                meta: str, _off: int, ents: list[int], _err: int, out: list[int] = entries
            ) -> int:
                if meta == nbd.CONTEXT_BASE_ALLOCATION:
                    out.extend(ents)
                return 0

            h.block_status(min(_STATUS_CHUNK, size - pos), pos, collect)
            for length, flags in zip(entries[::2], entries[1::2], strict=True):
                if flags & NBD_STATE_HOLE:
                    _append_merged(holes, pos, length)
                pos += length
        return holes
    finally:
        h.shutdown()


def _append_merged(holes: list[tuple[int, int]], offset: int, length: int) -> None:
    if holes and holes[-1][0] + holes[-1][1] == offset:
        holes[-1] = (holes[-1][0], holes[-1][1] + length)
    else:
        holes.append((offset, length))
