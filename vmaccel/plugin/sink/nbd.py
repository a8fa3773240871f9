"""The ``nbd`` sink: writes through any NBD server, e.g. nbdkit-vddk in write mode (no ``-r``,
no ``snapshot=``) in production, nbdkit's file plugin in tests. Zeroed ranges use the NBD
``WRITE_ZEROES`` command (with hole punching allowed) when the server offers it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nbd

from vmaccel.vocabulary.errors import TransportError

MAX_REQUEST = 32 * 1024 * 1024  # the NBD protocol's usual maximum payload


class NbdSink:
    """One connection to a server started by ``command`` (argv, NBD on stdin/stdout) or
    reached at ``uri``; the export must be at least ``size`` bytes."""

    def __init__(
        self, size: int, uri: str | None = None, command: Sequence[str] | None = None
    ) -> None:
        if (uri is None) == (command is None):
            raise TransportError("an NBD sink needs exactly one of a URI or a command")
        self._size, self._uri, self._command = size, uri, list(command or ())
        self._h: Any = nbd.NBD()
        try:
            if uri is not None:
                self._h.connect_uri(uri)
            else:
                self._h.connect_command(self._command)
            export = int(self._h.get_size())
            if self._h.is_read_only():
                raise TransportError(f"NBD server {self.name} exports the disk read-only")
        except nbd.Error as exc:
            raise TransportError(f"cannot connect to NBD server {self.name}: {exc}") from exc
        if export < size:
            self.close()
            raise TransportError(f"NBD export {self.name} holds {export} bytes, need {size}")
        self._zeroes = bool(self._h.can_zero())

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._uri or " ".join(self._command)

    @property
    def ranged(self) -> bool:
        return True

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for pos in range(0, len(view), MAX_REQUEST):
            piece = view[pos : pos + MAX_REQUEST]
            try:
                self._h.pwrite(piece, offset + pos)
            except nbd.Error as exc:
                raise TransportError(
                    f"NBD write of {len(piece)} bytes at {offset + pos}: {exc}"
                ) from exc

    def zero(self, offset: int, length: int) -> None:
        end = offset + length
        for pos in range(offset, end, MAX_REQUEST):
            count = min(MAX_REQUEST, end - pos)
            try:
                if self._zeroes:
                    self._h.zero(count, pos)
                else:
                    self._h.pwrite(bytes(count), pos)
            except nbd.Error as exc:
                raise TransportError(f"NBD zero of {count} bytes at {pos}: {exc}") from exc

    def flush(self) -> None:
        try:
            if self._h.can_flush():
                self._h.flush()
        except nbd.Error as exc:
            raise TransportError(f"NBD flush of {self.name}: {exc}") from exc

    def close(self) -> None:
        h, self._h = self._h, None
        if h is None:
            return
        try:
            if not (h.aio_is_dead() or h.aio_is_closed()):
                h.shutdown()
        except nbd.Error:
            pass  # the connection is going away either way
