"""The ``nbd`` transport: any NBD server through libnbd.

Users point it at an NBD URI (``nbd://host/export``, ``nbd+unix:///?socket=PATH``) or a
command that speaks NBD on stdin/stdout (for example ``nbdkit -s vddk ...`` with their own
VDDK: Debian's nbdkit ships no vddk plugin). ``base:allocation`` block status, when the
server offers it, reports holes and zero runs, which are neither read nor stored.

Reads use a small pool of connections so several requests are in flight (one libnbd handle
serializes its commands); each connection is used by one thread at a time.

A read whose connection died (server killed or restarted, network cut) reconnects (a command
source starts its server again) and is sent again with backoff
(:data:`vmaccel.plugin.backoff.TRANSPORT`); an error the server answers on a live connection is the
disk's and fails at once.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import nbd

from vmaccel.guestfs.extent import Extent, merge
from vmaccel.plugin import backoff
from vmaccel.vocabulary.errors import SourceChanged, TransportError

logger = logging.getLogger(__name__)

MAX_REQUEST = 32 * 1024 * 1024  # the NBD protocol's usual maximum payload
_STATUS_WINDOW = 1 << 30


class NbdSource:
    def __init__(
        self, uri: str | None = None, command: Sequence[str] | None = None, connections: int = 4
    ) -> None:
        if (uri is None) == (command is None):
            raise TransportError("an NBD source needs exactly one of a URI or a command")
        self._uri, self._command = uri, list(command) if command else None
        self._policy = backoff.TRANSPORT
        # A command-spawned server serves one client; only URIs get a connection pool.
        first = self._connect()
        self._size = int(first.get_size())
        self._status = bool(first.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        self._handles: list[Any] = [first]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(first)
        for _ in range(max(connections, 1) - 1 if uri else 0):
            handle = self._connect()
            if int(handle.get_size()) != self._size:
                raise SourceChanged(f"{self.name} changed size between connections")
            self._handles.append(handle)
            self._idle.put(handle)

    def _connect(self) -> Any:
        handle = nbd.NBD()
        handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        try:
            if self._uri is not None:
                handle.connect_uri(self._uri)
            else:
                handle.connect_command(self._command)
        except nbd.Error as exc:
            raise TransportError(f"cannot connect to NBD server {self.name}: {exc}") from exc
        return handle

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._uri or " ".join(self._command or [])

    @contextmanager
    def _handle(self) -> Iterator[Any]:
        handle = self._idle.get()
        try:
            yield handle
        finally:
            self._idle.put(handle)

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self._size:
            raise TransportError(f"read past the end of {self.name} ({offset}+{length})")
        handle = self._idle.get()
        try:
            waits = self._policy.waits()
            while True:
                try:
                    return self._pread(handle, offset, length)
                except TransportError as exc:
                    if not _dead(handle):
                        raise
                    delay = next(waits, None)
                    if delay is None:
                        raise TransportError(f"{exc}; gave up after reconnecting") from exc
                    logger.warning("%s; reconnecting in %.1f s", exc, delay)
                    time.sleep(delay)
                    handle = self._replace(handle)
        finally:
            self._idle.put(handle)

    def _pread(self, h: Any, offset: int, length: int) -> bytes:
        parts = []
        for pos in range(offset, offset + length, MAX_REQUEST):
            count = min(MAX_REQUEST, offset + length - pos)
            try:
                parts.append(h.pread(count, pos))
            except nbd.Error as exc:
                raise TransportError(f"NBD read of {count} bytes at {pos}: {exc}") from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _replace(self, dead: Any) -> Any:
        """A new connection in place of ``dead``; ``dead`` itself if none can be made now
        (the next try fails at once and waits again)."""
        try:
            handle = self._connect()
        except TransportError as exc:
            logger.warning("%s", exc)
            return dead
        if int(handle.get_size()) != self._size:
            raise SourceChanged(f"{self.name} changed size while reconnecting")
        self._handles[self._handles.index(dead)] = handle
        return handle

    def data_extents(self) -> list[Extent]:
        """Extents not reported as holes or zeros by ``base:allocation`` (whole disk if the
        server has no block status)."""
        if not self._status:
            return [Extent(0, self._size)] if self._size else []
        found: list[Extent] = []
        with self._handle() as h:
            pos = 0
            while pos < self._size:
                pos = self._status_window(h, pos, found)
        return list(merge(found))

    def _status_window(self, h: Any, pos: int, found: list[Extent]) -> int:
        count = min(_STATUS_WINDOW, self._size - pos)
        cursor = [pos]

        def record(context: str, offset: int, entries: list[int], err: Any) -> int:
            if context != nbd.CONTEXT_BASE_ALLOCATION:
                return 0
            at = offset
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                length = min(length, self._size - at)
                if not flags & (nbd.STATE_HOLE | nbd.STATE_ZERO) and length > 0:
                    found.append(Extent(at, length))
                at += length
            cursor[0] = at
            return 0

        try:
            h.block_status(count, pos, record)
        except nbd.Error as exc:
            raise TransportError(f"NBD block status at {pos}: {exc}") from exc
        if cursor[0] <= pos:
            raise TransportError(f"NBD server made no progress in block status at {pos}")
        return cursor[0]

    def close(self) -> None:
        for h in self._handles:
            if _dead(h):
                continue
            try:
                h.shutdown()
            except nbd.Error:
                pass  # the connection is going away either way
        self._handles.clear()


def _dead(handle: Any) -> bool:
    """Whether the connection of ``handle`` is gone (as opposed to a server error reply)."""
    return bool(handle.aio_is_dead() or handle.aio_is_closed())
