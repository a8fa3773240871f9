"""Writing an image to a :class:`~vmaccel.plugin.sink.target.DiskSink`: what to write (a pure
plan from the image's map and the areas wanted) and the copy loop.

Plans are lists of :class:`Piece` (byte ranges, sorted, non-overlapping):

* :func:`fresh_plan`: a new thin disk reads as zeros already, so only the image's data runs
  are written and its holes cost nothing (bytes sent = the image's allocated bytes);
* :func:`rewrite_plan`: an existing disk may hold anything, so within the wanted areas (the
  areas CBT reports changed since the backup, or the whole disk) data runs are written and
  hole runs zeroed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from vmaccel.guestfs.extent import Extent, clip, intersect, merge
from vmaccel.plugin.sink.target import DiskSink
from vmaccel.vocabulary.errors import VmaccelError

IO_BYTES = 8 * 1024 * 1024  # one read from the image, one write to the sink
BUFFERS = 3

Progress = Callable[[int], None]


class ImageSource(Protocol):
    """What the copy reads: an image's verified positional reads and its map (what
    :class:`vmaccel.catalog.imagereader.ImageReader` offers)."""

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, buf: memoryview) -> int: ...

    def extents(self) -> Iterator[tuple[int, int, bool]]: ...


@dataclass(frozen=True)
class Piece:
    """``[offset, offset + length)`` in bytes: written from the image (``data``) or zeroed."""

    offset: int
    length: int
    data: bool


@dataclass(frozen=True)
class WriteStats:
    """What a copy did: ``bytes_written`` sent as data, ``bytes_zeroed`` zeroed (punched or
    WRITE_ZEROES: no data sent), wall-clock ``seconds``."""

    bytes_written: int
    bytes_zeroed: int
    seconds: float


def fresh_plan(runs: Iterable[tuple[int, int, bool]]) -> list[Piece]:
    """The data runs of ``runs`` ((offset, length, is_data) covering the image), merged."""
    data = merge(Extent(off, n) for off, n, is_data in runs if is_data and n > 0)
    return [Piece(e.offset, e.length, True) for e in data]


def rewrite_plan(
    runs: Iterable[tuple[int, int, bool]], size: int, areas: Sequence[Extent] | None
) -> list[Piece]:
    """Within ``areas`` (None: the whole disk; clipped to ``size``), the image's data runs to
    write and its hole runs to zero, sorted."""
    runs = list(runs)
    wanted = clip(merge(areas), size) if areas is not None else (Extent(0, size),)
    data = merge(Extent(o, n) for o, n, d in runs if d and n > 0)
    holes = merge(Extent(o, n) for o, n, d in runs if not d and n > 0)
    covered = max((o + n for o, n, _ in runs), default=0)
    if covered < size:  # past the map's end the image reads as zeros
        holes = merge((*holes, Extent(covered, size - covered)))
    pieces = [Piece(e.offset, e.length, True) for e in intersect(wanted, data)]
    pieces += [Piece(e.offset, e.length, False) for e in intersect(wanted, holes)]
    return sorted(pieces, key=lambda p: p.offset)


def planned_bytes(pieces: Iterable[Piece]) -> int:
    """Bytes the plan covers (data and zeroed): the total for progress."""
    return sum(p.length for p in pieces)


def write_pieces(
    image: ImageSource, sink: DiskSink, pieces: Sequence[Piece], progress: Progress | None = None
) -> WriteStats:
    """Copy ``pieces`` of ``image`` to ``sink`` in order, then flush it. Reading (the image
    reader decodes on its own threads) overlaps writing, which runs on one thread of its own
    (the only one touching ``sink``). ``progress`` gets the bytes of each slice written or
    zeroed. Raises the image's ``DamageError`` (nothing wrong is ever written) or the sink's
    ``TransportError``; the first error stops the copy."""
    start = time.monotonic()
    for piece in pieces:
        if piece.offset + piece.length > sink.size:
            raise ValueError(f"piece {piece} ends past the disk ({sink.size} bytes)")
    writer = _Writer(sink, progress)
    try:
        for piece in pieces:
            for pos in range(piece.offset, piece.offset + piece.length, IO_BYTES):
                count = min(IO_BYTES, piece.offset + piece.length - pos)
                if not piece.data:
                    writer.put(pos, None, count)
                    continue
                buf = writer.buffer()
                got = image.read_into(pos, buf[:count])
                if got < count:  # past the image's end: zeros
                    buf[got:count] = bytes(count - got)
                writer.put(pos, buf, count)
    except BaseException:
        writer.stop()
        raise
    writer.finish()
    return WriteStats(writer.written, writer.zeroed, time.monotonic() - start)


class _Writer:
    """One thread writing what the reader hands over, with ``BUFFERS`` buffers in rotation
    (one filling, one being written, one spare). ``finish`` flushes the sink, stops the
    thread and raises the first error of either side."""

    def __init__(self, sink: DiskSink, progress: Progress | None) -> None:
        self._sink, self._progress = sink, progress
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(memoryview(bytearray(IO_BYTES)))
        self._todo: queue.SimpleQueue[tuple[int, memoryview | None, int] | None] = (
            queue.SimpleQueue()
        )
        self._error: BaseException | None = None
        self.written = self.zeroed = 0
        self._thread = threading.Thread(target=self._run, name="vmaccel-sink", daemon=True)
        self._thread.start()

    def buffer(self) -> memoryview:
        while True:
            self._check()
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the sink's writer thread ended unexpectedly") from None

    def put(self, offset: int, buf: memoryview | None, count: int) -> None:
        """Write ``buf[:count]`` at ``offset`` (zero ``count`` bytes when ``buf`` is None)."""
        self._check()
        self._todo.put((offset, buf, count))

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (job := self._todo.get()) is not None:
            if self._error is not None:
                continue  # drain: the caller sees the error at its next call
            offset, buf, count = job
            try:
                if buf is None:
                    self._sink.zero(offset, count)
                    self.zeroed += count
                else:
                    self._sink.write(offset, buf[:count])
                    self.written += count
                if self._progress is not None:
                    self._progress(count)
            except (OSError, VmaccelError) as exc:  # handed to the reading thread
                self._error = exc
            finally:
                if buf is not None:
                    self._free.put(buf)

    def finish(self) -> None:
        """Stop the thread once everything queued is written, flush, raise any error."""
        self.stop()
        self._check()
        self._sink.flush()

    def stop(self) -> None:
        """Let the thread write what is queued and end (no flush, errors kept)."""
        self._todo.put(None)
        self._thread.join()
