"""The ``http`` transport: Range reads of a frozen ``-flat.vmdk`` through the datastore
``/folder`` interface, authenticated with the vCenter session cookie.

HTTP has no sparse map, so ``data_extents`` is the whole disk (zero blocks are still found by
content and never stored); CBT and the allocation map keep the reads small. Each thread keeps
its own connection, so the copy engine's parallel pieces are several requests in flight.
"""

from __future__ import annotations

import threading

import requests

from guestfs.extent import Extent
from plugin.errors import SourceChanged, TransportError
from plugin.vcenter.models import HttpDiskLocation
from plugin.vcenter.tls import requests_session


class HttpSource:
    def __init__(self, location: HttpDiskLocation, size: int, timeout: float = 120.0) -> None:
        self._loc, self._size, self._timeout = location, size, timeout
        self._local = threading.local()
        head = self._session().head(location.url, timeout=timeout, headers=self._headers())
        if head.status_code != 200:
            raise TransportError(
                f"datastore HTTP access to {self.name} answered {head.status_code} "
                f"{head.reason}; check that the snapshot still exists and the session is valid"
            )
        length = int(head.headers.get("Content-Length", "-1"))
        if length not in (-1, size):
            raise SourceChanged(f"{self.name} is {length} bytes, the disk is {size}")

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
        return {"Cookie": self._loc.cookie, **(extra or {})}

    def read(self, offset: int, length: int) -> bytes:
        rng = f"bytes={offset}-{offset + length - 1}"
        try:
            resp = self._session().get(
                self._loc.url, headers=self._headers({"Range": rng}), timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise TransportError(f"HTTP read of {self.name} at {offset}: {exc}") from exc
        if resp.status_code != 206 or len(resp.content) != length:
            raise TransportError(
                f"HTTP read of {length} bytes at {offset} from {self.name} answered "
                f"{resp.status_code} with {len(resp.content)} bytes"
            )
        return resp.content

    def data_extents(self) -> list[Extent]:
        return [Extent(0, self._size)] if self._size else []

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
