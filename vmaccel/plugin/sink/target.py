"""The :class:`DiskSink` protocol every disk writer implements.

Contract: offsets and lengths in bytes, within ``[0, size)``; ``write`` stores exactly the bytes
given; ``zero`` makes a range read as zeros (punching holes where the target can, so a thin
disk stays thin); ``flush`` returns once everything written is durable on the target. A sink
is used by one thread. Failures raise :class:`~vmaccel.vocabulary.errors.TransportError`.
``ranged`` is False for a sink that can only write a disk whole, front to back (a stream):
such a sink cannot roll back changed areas of an existing disk.
"""

from __future__ import annotations

from typing import Protocol


class DiskSink(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def ranged(self) -> bool: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def zero(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
