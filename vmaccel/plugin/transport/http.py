"""The ``http`` transport: Range reads of a frozen ``-flat.vmdk`` through the datastore
``/folder`` interface, authenticated with the vCenter session cookie.

HTTP has no sparse map, so ``data_extents`` is the whole disk (zero blocks are still found by
content and never stored); CBT and the allocation map keep the reads small. Each thread keeps
its own connection, so the copy engine's parallel pieces are several requests in flight.

A read that fails in transit (connection refused, reset or cut mid-body, a 5xx answer) is sent
again on a new connection with backoff (:data:`vmaccel.plugin.backoff.TRANSPORT`). A 401/403 answer
(the session expired) asks ``renew`` for a new session cookie once and is sent again; refused
again it raises :class:`~vmaccel.vocabulary.errors.SessionLost`. Other 4xx answers (the snapshot
file is gone) fail at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests

from vmaccel.guestfs.extent import Extent
from vmaccel.plugin import backoff
from vmaccel.plugin.vcenter.models import HttpDiskLocation
from vmaccel.plugin.vcenter.tls import requests_session
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

    def __init__(
        self,
        location: HttpDiskLocation,
        size: int,
        timeout: float = 120.0,
        renew: Callable[[str], str] | None = None,
    ) -> None:
        self._loc, self._size, self._timeout = location, size, timeout
        self._cookie, self._renew = location.cookie, renew
        self._policy = backoff.TRANSPORT
        self._local = threading.local()
        length = self._retrying(self._probe)
        if length not in (-1, size):
            raise SourceChanged(f"{self.name} is {length} bytes, the disk is {size}")

    def _probe(self) -> int:
        """The file's length by HEAD (-1 when not said); refuses anything but 200."""
        try:
            head = self._session().head(
                self._loc.url, timeout=self._timeout, headers=self._headers()
            )
        except requests.RequestException as exc:
            raise _InTransit(f"datastore HTTP access to {self.name}: {exc}") from exc
        if head.status_code != 200:
            raise _error(head.status_code)(
                f"datastore HTTP access to {self.name} answered {head.status_code} "
                f"{head.reason}; check that the snapshot still exists and the session is valid"
            )
        return int(head.headers.get("Content-Length", "-1"))

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._loc.url.split("?", 1)[0]

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests_session(self._loc.trust)
        return session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Cookie": self._cookie, **(extra or {})}

    def read(self, offset: int, length: int) -> bytes:
        return self._retrying(lambda: self._read_once(offset, length))

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, sent again on a new connection while it fails in transit, and once
        with a new session cookie when the session was refused."""
        waits, renewed = self._policy.waits(), False
        while True:
            try:
                return call()
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
                self._drop_session()
                time.sleep(delay)

    def _read_once(self, offset: int, length: int) -> bytes:
        rng = f"bytes={offset}-{offset + length - 1}"
        try:
            resp = self._session().get(
                self._loc.url, headers=self._headers({"Range": rng}), timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise _InTransit(f"HTTP read of {self.name} at {offset}: {exc}") from exc
        if resp.status_code != 206 or len(resp.content) != length:
            raise _error(resp.status_code)(
                f"HTTP read of {length} bytes at {offset} from {self.name} answered "
                f"{resp.status_code} with {len(resp.content)} bytes"
            )
        return resp.content

    def _drop_session(self) -> None:
        """Forget this thread's connection: the next read opens a new one."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def data_extents(self) -> list[Extent]:
        return [Extent(0, self._size)] if self._size else []

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


def _error(status: int) -> type[TransportError]:
    """The error class of an HTTP answer other than the one asked for."""
    if status in (401, 403):
        return _Refused
    if status >= 500 or status == 206:  # 206 here: the body was cut short
        return _InTransit
    return TransportError
