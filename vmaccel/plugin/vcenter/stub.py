"""The SOAP stub every vCenter call goes through: it survives an expired session and a vCenter
that is unreachable for a while.

* A call answered ``NotAuthenticated`` (the session expired or was ended) logs in again once
  with the endpoint's credentials and is sent again; answered ``NotAuthenticated`` again, it
  raises :class:`~vmaccel.vocabulary.errors.SessionLost`. ``NotAuthenticated`` means the call was
  not run, so sending it again is safe for every method.
* A call that fails below SOAP (connection refused, reset or closed, timeout) is sent again
  with backoff (:data:`vmaccel.plugin.backoff.VCENTER`) until it gets an answer or the window runs
  out, which raises :class:`~vmaccel.vocabulary.errors.ConnectionFailed`. A call whose connection
  dropped after the request went out may have run: a task method then runs twice. For the backup
  snapshot that leaves one more snapshot carrying our marker, which the next run removes (invariant
  7). Once a window ran out, later calls try once until one gets through (the run's cleanup must
  not wait a window per call). A new connection that meets another certificate raises
  :class:`~vmaccel.vocabulary.errors.CertificateMismatch` at once.

Thread safe: the wrapped ``SoapStubAdapter`` pools connections; one login at a time.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pyVmomi import vim
from pyVmomi.Security import ThumbprintMismatchException
from pyVmomi.SoapAdapter import SoapStubAdapter, StubAdapterBase

from vmaccel.plugin import backoff
from vmaccel.vocabulary.errors import (
    CertificateMismatch,
    ConnectionFailed,
    LoginFailed,
    SessionLost,
)

logger = logging.getLogger(__name__)

Login = Callable[[SoapStubAdapter], None]


class ResilientStub(StubAdapterBase):
    """Wraps the ``SoapStubAdapter`` of a logged-in session. ``login`` logs the wrapped stub in
    again (it starts with no session cookie); ``host`` names vCenter in messages."""

    def __init__(self, soap: SoapStubAdapter, login: Login, host: str) -> None:
        StubAdapterBase.__init__(self, version=soap.version)
        self.soap, self._login, self._host = soap, login, host
        self._policy = backoff.VCENTER
        self._lock = threading.Lock()
        self._generation = 0  # logins so far; a thread renews only a session it saw fail
        self._down = False  # a retry window ran out and no call got through since

    @property
    def cookie(self) -> str:
        cookie: str = self.soap.cookie
        return cookie

    def DropConnections(self) -> None:
        self.soap.DropConnections()

    def InvokeMethod(self, mo: Any, info: Any, args: Any) -> Any:
        generation = self._generation
        status, obj = self._send(mo, info, args)
        if status != 200 and isinstance(obj, vim.fault.NotAuthenticated):
            logger.warning(
                "vCenter %s ended the session (%s); logging in again", self._host, info.wsdlName
            )
            self._renew(generation)
            status, obj = self._send(mo, info, args)
            if status != 200 and isinstance(obj, vim.fault.NotAuthenticated):
                raise SessionLost(
                    f"vCenter {self._host} ended the session and refused {info.wsdlName} again "
                    "after a new login; check the user's sessions and permissions"
                )
        if status == 200:
            return obj
        raise obj

    def _send(self, mo: Any, info: Any, args: Any) -> tuple[int, Any]:
        waits: Iterator[float] | None = None
        tried = ""
        while True:
            try:
                status, obj = self.soap.InvokeMethod(mo, info, args, self)
            except (ssl.SSLCertVerificationError, ThumbprintMismatchException) as exc:
                # A new connection met another certificate: no outage to wait out.
                raise CertificateMismatch(
                    f"vCenter {self._host} now presents another certificate: {exc}"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                if waits is None:
                    waits = iter(()) if self._down else self._policy.waits()
                    window = f"retried for up to {self._policy.window:.0f} s"
                    tried = "still unreachable" if self._down else window
                delay = next(waits, None)
                if delay is None:
                    self._down = True
                    why = str(exc) or type(exc).__name__
                    raise ConnectionFailed(
                        f"vCenter {self._host} did not answer {info.wsdlName} ({tried}): {why}"
                    ) from exc
                logger.warning(
                    "vCenter %s: %s failed (%s); retrying in %.1f s",
                    self._host,
                    info.wsdlName,
                    exc or type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                continue
            self._down = False
            return status, obj

    def _renew(self, generation: int) -> None:
        # Another thread may have logged in since this call was sent: then that session is used.
        self.renew_if(lambda: generation == self._generation)

    def renew_if(self, stale: Callable[[], bool]) -> None:
        """Log in again if ``stale()`` still holds once the login lock is held (one login at a
        time; the others then see the session renewed and use it)."""
        with self._lock:
            if not stale():
                return
            try:
                self._login(self.soap)
            except vim.fault.InvalidLogin:
                raise LoginFailed(
                    f"vCenter {self._host} ended the session and refused a new login; check the "
                    "user name and password"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionFailed(f"logging in again to vCenter {self._host}: {exc}") from exc
            self._generation += 1
