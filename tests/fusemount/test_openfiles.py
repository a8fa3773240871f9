"""vmaccel.fusemount.openfiles: one reader per open image, closed with its last handle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmaccel.fusemount.openfiles import OpenFiles


class Stream:
    def __init__(self, data: bytes) -> None:
        self.data, self.closed = data, False

    @property
    def size(self) -> int:
        return len(self.data)

    def read_into(self, offset: int, buf: memoryview) -> int:
        piece = self.data[offset : offset + len(buf)]
        buf[: len(piece)] = piece
        return len(piece)

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        yield 0, len(self.data), True

    def close(self) -> None:
        self.closed = True


def test_handles_share_one_reader_until_the_last_release() -> None:
    opened: list[Stream] = []

    def opener(image_id: int) -> Stream:
        opened.append(Stream(bytes([image_id]) * 10))
        return opened[-1]

    files = OpenFiles(opener)
    a, b = files.open_image(7), files.open_image(7)
    c = files.open_image(8)
    assert len(opened) == 2 and files.open_images == 2
    buf = memoryview(bytearray(4))
    assert files.read_into(b, 8, buf) == 2 and bytes(buf[:2]) == b"\x07\x07"
    files.release(a)
    assert not opened[0].closed
    files.release(b)
    assert opened[0].closed and not opened[1].closed
    files.release(b)  # twice: harmless
    files.close_all()
    assert opened[1].closed and files.open_images == 0
    with pytest.raises(KeyError):
        files.read_into(c, 0, buf)


def test_bytes_handles() -> None:
    files = OpenFiles(lambda i: Stream(b""))
    fh = files.open_bytes(b"descriptor")
    buf = memoryview(bytearray(100))
    assert files.read_into(fh, 4, buf) == 6 and bytes(buf[:6]) == b"riptor"
    assert files.read_into(fh, 50, buf) == 0
    files.release(fh)
    assert files.open_images == 0
