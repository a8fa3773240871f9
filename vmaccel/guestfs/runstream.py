"""File contents as a stream over a volume: a list of runs (extents), holes read as zeros.

The filesystem adapters turn their block maps (ext extents or block maps, XFS extents, NTFS
data runs, FAT cluster chains) into `Run`s in *bytes*, and `RunStream` reads them on demand,
so memory is O(runs), never O(file size), and a 32 GiB sparse file costs nothing to open.
"""

from __future__ import annotations

import bisect
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from vmaccel.guestfs.errors import GuestFsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """`length` bytes at file offset `offset` are at volume byte `source` (None: zeros)."""

    offset: int
    length: int
    source: int | None


def check_runs(runs: Sequence[Run], volume_size: int, what: str) -> list[Run]:
    """`runs` sorted by offset, checked not to overlap and to lie inside the volume.

    Raises `GuestFsError` naming `what` (e.g. "ext4 inode 12") for a damaged map.
    """
    ordered = sorted(runs, key=lambda r: r.offset)
    end = 0
    for run in ordered:
        if run.offset < end or run.length <= 0:
            raise GuestFsError(f"{what}: overlapping or empty extent at file byte {run.offset}")
        if run.source is not None and (run.source < 0 or run.source + run.length > volume_size):
            raise GuestFsError(
                f"{what}: extent at file byte {run.offset} points outside the volume "
                f"(volume bytes {run.source}+{run.length} of {volume_size})"
            )
        end = run.offset + run.length
    return ordered


class RunStream(io.RawIOBase):
    """A read-only, seekable stream of `size` bytes made of `runs` over `volume`.

    Bytes not covered by a run, covered by a hole run, or at or after `valid_size` (NTFS's
    initialized size) read as zeros. A read fills the buffer completely unless it reaches
    `size`. Not thread-safe (it seeks `volume`). `runs` must come from `check_runs`.
    """

    def __init__(
        self,
        volume: io.RawIOBase,
        size: int,
        runs: Sequence[Run],
        what: str,
        valid_size: int | None = None,
    ) -> None:
        super().__init__()
        self._volume = volume
        self._size = size
        self._runs = list(runs)
        self._starts = [r.offset for r in self._runs]
        self._what = what
        self._valid = size if valid_size is None else min(size, valid_size)
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        want = max(0, min(len(out), self._size - self._pos))
        out[:want] = bytes(want)
        data_end = min(self._pos + want, self._valid)
        i = max(0, bisect.bisect_right(self._starts, self._pos) - 1)
        while i < len(self._runs) and self._runs[i].offset < data_end:
            run = self._runs[i]
            lo, hi = max(self._pos, run.offset), min(data_end, run.offset + run.length)
            if lo < hi and run.source is not None:
                self._read_run(out[lo - self._pos : hi - self._pos], run.source + lo - run.offset)
            i += 1
        self._pos += want
        return want

    def _read_run(self, out: memoryview, source: int) -> None:
        self._volume.seek(source)
        got = self._volume.readinto(out)
        if got != len(out):
            raise GuestFsError(f"{self._what}: volume ends early at byte {source + (got or 0)}")


class GuardedStream(io.RawIOBase):
    """Wraps a parser's stream (e.g. NTFS compressed data) so that its failures on damaged
    data surface as `GuestFsError` naming `what`, and no parser object leaks to callers."""

    def __init__(
        self, inner: BinaryIO, size: int, what: str, errors: tuple[type[BaseException], ...]
    ) -> None:
        super().__init__()
        self._inner = inner
        self._size = size
        self._what = what
        self._errors = errors

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._inner.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        try:
            data = self._inner.read(len(out))
        except self._errors as exc:
            raise GuestFsError(f"{self._what}: unreadable data: {exc}") from exc
        out[: len(data)] = data
        return len(data)
