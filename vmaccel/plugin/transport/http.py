"""The ``http`` transport: Range reads of a frozen ``-flat.vmdk`` through the datastore
``/folder`` interface, authenticated with the vCenter session cookie.

HTTP has no sparse map, so ``data_extents`` is the whole disk (zero blocks are still found by
content and never stored); CBT and the allocation map keep the reads small. Each thread keeps
its own keep-alive connection (``http.client`` over the vCenter's TLS trust), so the copy
engine's parallel pieces are several requests in flight. :meth:`HttpSource.read_into` reads a
body straight from the socket into the caller's buffer: no allocation and no copy per piece.

A read that fails in transit (connection refused, reset or cut mid-body, a 5xx answer) is sent
again on a new connection with backoff (:data:`vmaccel.plugin.backoff.TRANSPORT`). A 401/403 answer
(the session expired) asks ``renew`` for a new session cookie once and is sent again; refused
again it raises :class:`~vmaccel.vocabulary.errors.SessionLost`. Other 4xx answers (the snapshot
file is gone) fail at once.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from vmaccel.guestfs.extent import Extent
from vmaccel.plugin import backoff
from vmaccel.plugin.transport.source import NETWORK_READS, ReadShape
from vmaccel.plugin.vcenter.models import HttpDiskLocation
from vmaccel.plugin.vcenter.tls import ssl_context
from vmaccel.vocabulary.errors import SessionLost, SourceChanged, TransportError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _InTransit(TransportError):
    """A read failed on the way (network, server trouble): worth sending again."""


class _Refused(TransportError):
    """vCenter refused the session cookie (401/403)."""


class HttpSource:
    """``renew(stale_cookie) -> cookie`` gives a new session cookie when vCenter refuses the
    one in use (see :meth:`vmaccel.plugin.vcenter.connection.VCenter.renew_session`)."""

    read_shape: ReadShape = NETWORK_READS

    def __init__(
        self,
        location: HttpDiskLocation,
        size: int,
        timeout: float = 120.0,
        renew: Callable[[str], str] | None = None,
    ) -> None:
        self._loc, self._size, self._timeout = location, size, timeout
        url = urllib.parse.urlsplit(location.url)
        if url.scheme != "https" or not url.hostname:
            raise TransportError(f"{self.name}: not an https URL")
        self._host, self._port = url.hostname, url.port or 443
        self._target = url.path + (f"?{url.query}" if url.query else "")
        self._tls = ssl_context(location.trust)
        self._cookie, self._renew = location.cookie, renew
        self._policy = backoff.TRANSPORT
        self._local = threading.local()
        self._opened: list[http.client.HTTPSConnection] = []  # every thread's, for close()
        self._lock = threading.Lock()
        length = self._retrying(self._probe)
        if length not in (-1, size):
            raise SourceChanged(f"{self.name} is {length} bytes, the disk is {size}")

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._loc.url.split("?", 1)[0]

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` (writable, ``len(buffer)`` bytes) from byte ``offset``, the body
        read from the socket straight into it."""
        self._retrying(lambda: self._read_once(offset, buffer))

    def data_extents(self) -> list[Extent]:
        return [Extent(0, self._size)] if self._size else []

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _probe(self) -> int:
        """The file's length by HEAD (-1 when not said); refuses anything but 200."""
        resp = self._send("HEAD", {}, f"datastore HTTP access to {self.name}")
        resp.read()
        if resp.status != 200:
            raise _error(resp.status)(
                f"datastore HTTP access to {self.name} answered {resp.status} "
                f"{resp.reason}; check that the snapshot still exists and the session is valid"
            )
        return _declared_length(resp)

    def _read_once(self, offset: int, buffer: memoryview) -> None:
        length = len(buffer)
        what = f"HTTP read of {self.name} at {offset}"
        resp = self._send("GET", {"Range": f"bytes={offset}-{offset + length - 1}"}, what)
        declared = _declared_length(resp)
        if resp.status != 206 or declared not in (-1, length):
            raise _error(resp.status)(
                f"HTTP read of {length} bytes at {offset} from {self.name} answered "
                f"{resp.status} with {max(declared, 0)} bytes"
            )
        done = 0
        try:
            while done < length and (n := resp.readinto(buffer[done:])):
                done += n
            extra = b"" if done < length or resp.isclosed() else resp.read(1)
        except (OSError, http.client.HTTPException) as exc:
            raise _InTransit(f"{what}: {exc}") from exc
        if done < length:
            raise _InTransit(f"{what}: the answer ended after {done} of {length} bytes")
        if extra:
            raise _InTransit(f"{what}: the answer went on past the {length} bytes asked for")

    def _send(self, method: str, headers: dict[str, str], what: str) -> http.client.HTTPResponse:
        """Send one request on this thread's connection; its answer, body not read yet."""
        conn = self._connection()
        try:
            conn.request(method, self._target, headers={"Cookie": self._cookie, **headers})
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise _InTransit(f"{what}: {exc}") from exc

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def _drop_connection(self) -> None:
        """Forget this thread's connection: the next request opens a new one."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()
            with self._lock:
                if conn in self._opened:
                    self._opened.remove(conn)

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, sent again on a new connection while it fails in transit, and once
        with a new session cookie when the session was refused. A failed call's connection
        is dropped (its answer was not read to the end)."""
        waits, renewed = self._policy.waits(), False
        while True:
            try:
                return self._spending_on_failure(call)
            except _Refused as exc:
                if self._renew is None:
                    raise
                if renewed:
                    raise SessionLost(f"{exc}; refused again after a new login") from exc
                logger.warning("%s; logging in again", exc)
                self._cookie, renewed = self._renew(self._cookie), True
            except _InTransit as exc:
                delay = next(waits, None)
                if delay is None:
                    raise TransportError(f"{exc}; gave up after retrying") from exc
                logger.warning("%s; retrying in %.1f s", exc, delay)
                time.sleep(delay)

    def _spending_on_failure(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except TransportError:
            self._drop_connection()
            raise


def _declared_length(resp: http.client.HTTPResponse) -> int:
    """The answer's Content-Length; -1 when it has none (chunked) or not a number."""
    value = resp.getheader("Content-Length") or ""
    return int(value) if value.isascii() and value.isdigit() else -1


def _error(status: int) -> type[TransportError]:
    """The error class of an HTTP answer other than the one asked for."""
    if status in (401, 403):
        return _Refused
    if status >= 500 or status == 206:  # 206 here: the body was cut short
        return _InTransit
    return TransportError
