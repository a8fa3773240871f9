"""Open file handles of a mount: small in-memory files and shared image readers.

A FUSE ``open`` returns a handle number; ``read`` and ``release`` come back with it. Every
handle on the same image shares one reader (so its chunk cache and read-ahead serve them
all); the reader is opened by the first handle and closed when the last one is released, so
an idle mount holds no readers and no cache memory.

Thread safety: all methods may be called from any thread. Reads run outside the table lock
(image readers do their own locking); open and release are serialised.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmaccel.fusemount.overlay import OverlayImage
from vmaccel.fusemount.scratch import ScratchFile
from vmaccel.fusemount.source import ImageStream

logger = logging.getLogger(__name__)


@dataclass
class _Shared:
    stream: ImageStream
    users: int


class GuestStream(Protocol):
    """An open guest file: positional reads and close."""

    def read_into(self, offset: int, buf: memoryview) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Handle:
    image_id: int | None  # a shared image reader's image, or None for owned streams
    stream: ImageStream | GuestStream | None
    content: bytes | None


class OpenFiles:
    """The handle table. ``opener(image_id)`` opens a reader of that image."""

    def __init__(self, opener: Callable[[int], ImageStream]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._images: dict[int, _Shared] = {}
        self._next = itertools.count(1)

    def open_image(self, image_id: int) -> int:
        """A handle reading image ``image_id`` (opening its reader if it is the first)."""
        with self._lock:
            shared = self._images.get(image_id)
            if shared is None:
                shared = _Shared(self._opener(image_id), 0)
                self._images[image_id] = shared
                logger.debug("opened reader for image %d", image_id)
            shared.users += 1
            fh = next(self._next)
            self._handles[fh] = _Handle(image_id, shared.stream, None)
            return fh

    def open_stream(self, stream: ImageStream | GuestStream) -> int:
        """A handle reading ``stream`` (owned: closed when the handle is released)."""
        with self._lock:
            fh = next(self._next)
            self._handles[fh] = _Handle(None, stream, None)
            return fh

    def open_bytes(self, content: bytes) -> int:
        """A handle reading ``content`` (a generated file such as a descriptor)."""
        with self._lock:
            fh = next(self._next)
            self._handles[fh] = _Handle(None, None, content)
            return fh

    def read_into(self, fh: int, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the byte count (short only at end of file).

        Raises ``KeyError`` for an unknown handle and whatever the image reader raises
        (``DamageError`` for damaged data) - never returns wrong bytes.
        """
        handle = self._handles[fh]
        if handle.stream is not None:
            return handle.stream.read_into(offset, buf)
        assert handle.content is not None  # noqa: S101 - narrows the type for mypy; a handle has a stream or content
        piece = handle.content[offset : offset + len(buf)]
        buf[: len(piece)] = piece
        return len(piece)

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset`` of a writable image handle (its overlay).

        Raises ``OSError(EROFS)`` for any other handle."""
        stream = self._handles[fh].stream
        if not isinstance(stream, OverlayImage | ScratchFile):
            raise OSError(errno.EROFS, "only image files of a --writable mount take writes")
        return stream.write(offset, data)

    def sync(self, fh: int) -> None:
        """Make the writes through ``fh`` durable (a no-op for read-only handles)."""
        stream = self._handles[fh].stream
        if isinstance(stream, OverlayImage | ScratchFile):
            stream.sync()

    def is_image(self, fh: int) -> bool:
        """Whether ``fh`` reads an image (rather than a generated or guest file)."""
        return self._handles[fh].image_id is not None

    def release(self, fh: int) -> None:
        """Forget ``fh``; closes the image reader when its last handle goes."""
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is None:
                return
            if handle.image_id is None:
                if handle.stream is not None:
                    handle.stream.close()
                return
            shared = self._images[handle.image_id]
            shared.users -= 1
            if shared.users > 0:
                return
            del self._images[handle.image_id]
        shared.stream.close()
        logger.debug("closed reader for image %d", handle.image_id)

    def close_all(self) -> None:
        """Release every handle (at unmount)."""
        with self._lock:
            streams: list[ImageStream | GuestStream] = [s.stream for s in self._images.values()]
            streams += [h.stream for h in self._handles.values()
                        if h.image_id is None and h.stream is not None]
            self._images.clear()
            self._handles.clear()
        for stream in streams:
            stream.close()

    @property
    def open_images(self) -> int:
        """How many image readers are open now."""
        return len(self._images)
