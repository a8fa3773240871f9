"""Disk writers without vCenter: the write plans, the copy loop over the file and NBD sinks
(holes stay holes, zeroed ranges read as zeros, errors of either side stop the copy), and the
streamOptimized VMDK, which qemu-img must read back byte for byte."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.sink.copy import Piece, fresh_plan, rewrite_plan, write_pieces
from vmaccel.plugin.sink.file import FileSink
from vmaccel.plugin.sink.nbd import NbdSink
from vmaccel.plugin.sink.streamvmdk import GRAIN, StreamCounters, stream_optimized
from vmaccel.vocabulary.errors import DamageError, TransportError

MiB = 1 << 20


class Image:
    """An image in memory: ``runs`` of (offset, length, is_data); holes read as zeros."""

    def __init__(self, size: int, data: dict[int, bytes]) -> None:
        self.size, self._data = size, data
        self.raw = bytearray(size)
        for off, chunk in data.items():
            self.raw[off : off + len(chunk)] = chunk
        self.fail_at: int | None = None

    def read_into(self, offset: int, buf: memoryview) -> int:
        if self.fail_at is not None and offset <= self.fail_at < offset + len(buf):
            raise DamageError(f"chunk at {self.fail_at} is damaged")
        n = max(0, min(len(buf), self.size - offset))
        buf[:n] = self.raw[offset : offset + n]
        return n

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        pos = 0
        for off in sorted(self._data):
            if off > pos:
                yield pos, off - pos, False
            yield off, len(self._data[off]), True
            pos = off + len(self._data[off])
        if pos < self.size:
            yield pos, self.size - pos, False


def _image() -> Image:
    return Image(
        24 * MiB,
        {0: os.urandom(MiB), 5 * MiB: os.urandom(3 * MiB), 20 * MiB: bytes(GRAIN) + b"x" * 4096},
    )


def _data_extents(path: Path) -> list[Extent]:
    fd, out, pos = os.open(path, os.O_RDONLY), [], 0
    try:
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append(Extent(start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out


def test_plans() -> None:
    runs = [(0, 10, True), (10, 20, False), (30, 5, True), (35, 5, True)]
    assert fresh_plan(runs) == [Piece(0, 10, True), Piece(30, 10, True)]
    assert rewrite_plan(runs, 50, None) == [
        Piece(0, 10, True), Piece(10, 20, False), Piece(30, 10, True), Piece(40, 10, False),
    ]  # fmt: skip
    areas = [Extent(5, 10), Extent(32, 100)]
    assert rewrite_plan(runs, 50, areas) == [
        Piece(5, 5, True), Piece(10, 5, False), Piece(32, 8, True), Piece(40, 10, False),
    ]  # fmt: skip


def test_fresh_copy_to_a_file_leaves_holes(tmp_path: Path) -> None:
    image = _image()
    target = tmp_path / "disk-flat.vmdk"
    target.touch()
    sink = FileSink(target, image.size)
    seen: list[int] = []
    stats = write_pieces(image, sink, fresh_plan(image.extents()), seen.append)
    sink.close()
    assert target.read_bytes() == image.raw
    assert stats.bytes_written == sum(seen) == MiB + 3 * MiB + GRAIN + 4096
    data = sum(e.length for e in _data_extents(target))
    assert data <= stats.bytes_written + MiB  # nothing but the data landed on disk


def test_rewrite_zeroes_what_the_image_has_as_holes(tmp_path: Path) -> None:
    image = _image()
    target = tmp_path / "disk-flat.vmdk"
    target.write_bytes(os.urandom(image.size))  # an existing disk holding anything
    sink = FileSink(target, image.size)
    stats = write_pieces(image, sink, rewrite_plan(image.extents(), image.size, None))
    sink.close()
    assert target.read_bytes() == image.raw
    assert stats.bytes_written + stats.bytes_zeroed == image.size


def test_nbd_sink_writes_and_zeroes(tmp_path: Path) -> None:
    image = _image()
    target = tmp_path / "disk.img"
    target.write_bytes(os.urandom(image.size))
    sink = NbdSink(image.size, command=["nbdkit", "-s", "--exit-with-parent", "file", str(target)])
    write_pieces(image, sink, rewrite_plan(image.extents(), image.size, None))
    sink.close()
    assert target.read_bytes() == image.raw
    with pytest.raises(TransportError, match="read-only"):
        NbdSink(image.size, command=["nbdkit", "-s", "-r", "file", str(target)])


def test_errors_on_either_side_stop_the_copy(tmp_path: Path) -> None:
    image = _image()
    target = tmp_path / "disk-flat.vmdk"
    target.touch()
    image.fail_at = 6 * MiB
    with pytest.raises(DamageError):
        write_pieces(image, FileSink(target, image.size), fresh_plan(image.extents()))

    class Broken(FileSink):
        def write(self, offset: int, data: bytes | memoryview) -> None:
            raise TransportError(f"no space at {offset}")

    image.fail_at = None
    with pytest.raises(TransportError, match="no space at 0"):
        write_pieces(image, Broken(target, image.size), fresh_plan(image.extents()))


def test_stream_optimized_reads_back_with_qemu_img(tmp_path: Path) -> None:
    image = _image()
    counters = StreamCounters()
    vmdk = tmp_path / "disk.vmdk"
    with vmdk.open("wb") as f:
        for piece in stream_optimized(image, "disk.vmdk", counters):
            f.write(piece)
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "check", str(vmdk)], check=True, capture_output=True)
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(raw)], check=True
    )
    assert raw.read_bytes() == image.raw
    # The all-zero grain at 20 MiB is left out; the footer sits 1024 bytes before the end.
    assert counters.grains == (MiB + 3 * MiB) // GRAIN + 1
    assert counters.stream_bytes == vmdk.stat().st_size
    assert vmdk.read_bytes()[-1024:-1020] == b"KDMV"
