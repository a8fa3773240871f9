"""The :class:`DiskSource` protocol every transport implements, and a stream view over it.

Contract: offsets and lengths in bytes; ``read`` returns exactly ``length`` bytes or raises
:class:`~vmaccel.vocabulary.errors.TransportError`; ``data_extents`` lists the extents that may hold
data (holes reported by the transport are left out; a transport that cannot tell returns the
whole disk). A source may be read from several threads at once.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vmaccel.guestfs.extent import Extent


@dataclass(frozen=True)
class ReadShape:
    """How the copy engine reads a source: pieces of up to ``piece_bytes`` (a multiple of any
    block size, a power of two) on ``readers`` threads. A source says its own shape in a
    ``read_shape`` attribute; one without is read as :data:`NETWORK_READS`."""

    piece_bytes: int
    readers: int


# A network round trip per piece: large pieces, a few in flight while others wait.
NETWORK_READS = ReadShape(piece_bytes=4 << 20, readers=3)
# A local read is a copy (page cache) or a queued disk read: two threads keep it well ahead of
# the hashing (one piece read ~0.3 ms, hashed and compressed ~1.5 ms); more only add threads
# contending for the GIL (on a 2-core machine 1, 2 and 3 readers were within noise). A piece
# is one image writer task.
LOCAL_READS = ReadShape(piece_bytes=1 << 20, readers=2)


class DiskSource(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def data_extents(self) -> Sequence[Extent]: ...

    def close(self) -> None: ...


class SourceStream(io.RawIOBase):
    """A read-only seekable stream over a :class:`DiskSource`, for the guestfs parsers.

    Parsers read metadata in many small pieces; over NBD or HTTP each would be a round trip,
    so reads are served from a small LRU of aligned ``page`` sized pieces (bounded memory).
    """

    def __init__(self, source: DiskSource, page: int = 256 * 1024, pages: int = 32) -> None:
        super().__init__()
        self._src, self._pos = source, 0
        self._page, self._pages = page, pages
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._src.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._src.size - self._pos))
        done = 0
        while done < n:
            index, skip = divmod(self._pos + done, self._page)
            page = self._fetch(index)
            take = min(n - done, len(page) - skip)
            view[done : done + take] = page[skip : skip + take]
            done += take
        self._pos += n
        return n

    def _fetch(self, index: int) -> bytes:
        page = self._cache.get(index)
        if page is None:
            start = index * self._page
            page = self._src.read(start, min(self._page, self._src.size - start))
            self._cache[index] = page
            if len(self._cache) > self._pages:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return page
