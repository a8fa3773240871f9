"""A logged-in vCenter session, with the two primitives every vCenter call here builds on:
reading properties through the PropertyCollector with explicit paths, and waiting for tasks.

Attribute access on pyVmomi objects fetches properties one by one (slow on real vCenter, and
vcsim crashes on unset ones), so nothing in this package reads ``vm.config`` style attributes.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from pyVim.connect import SmartConnect
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from vmaccel.plugin.vcenter.models import Endpoint
from vmaccel.plugin.vcenter.stub import ResilientStub
from vmaccel.plugin.vcenter.tls import ssl_context
from vmaccel.vocabulary.errors import (
    CertificateMismatch,
    ConnectionFailed,
    LoginFailed,
    VCenterError,
    VmaccelError,
)

logger = logging.getLogger(__name__)


class VCenter:
    """One SOAP session. Use as a context manager; logs out on exit.

    Every call goes through a :class:`~vmaccel.plugin.vcenter.stub.ResilientStub`: an expired
    session is renewed once, an outage is waited out with backoff. Opening the session is not
    retried: a wrong host or port fails at once.
    """

    def __init__(self, endpoint: Endpoint, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        try:
            self.si = SmartConnect(
                host=endpoint.hostname,
                port=endpoint.port,
                user=endpoint.user,
                pwd=endpoint.password,
                sslContext=ssl_context(endpoint.trust),
                thumbprint=endpoint.trust.thumbprint,
                httpConnectionTimeout=int(timeout),
            )
        except vim.fault.InvalidLogin:
            raise LoginFailed(
                f"vCenter {endpoint.host} refused the login of {endpoint.user!r}: check the user "
                "name and password"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateMismatch(
                f"the certificate of {endpoint.host} is not signed by the configured CA: "
                f"{exc.verify_message}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"cannot reach vCenter {endpoint.host}: {exc}") from exc
        soap: SoapStubAdapter = self.si._stub
        self._session_manager = self.si.RetrieveContent().sessionManager._moId
        stub = ResilientStub(soap, self._login, endpoint.host)
        self.si = vim.ServiceInstance("ServiceInstance", stub)
        self.content = self.si.RetrieveContent()
        self.api_version: str = stub.version

    def _login(self, soap: SoapStubAdapter) -> None:
        """Log ``soap`` in again; the dead session's cookie must not go along (vCenter would
        take the Login as a call of that session)."""
        soap.cookie = ""
        manager = vim.SessionManager(self._session_manager, soap)
        manager.Login(userName=self.endpoint.user, password=self.endpoint.password, locale=None)

    def close(self) -> None:
        """Log out, trying once: the session may be gone and vCenter with it."""
        stub: ResilientStub = self.si._stub
        try:
            vim.SessionManager(self._session_manager, stub.soap).Logout()
        except (OSError, vmodl.MethodFault, http.client.HTTPException, VmaccelError) as exc:
            # VmaccelError: a new connection met another certificate (CertificateMismatch).
            logger.debug("logout from %s failed: %s", self.endpoint.host, exc)
        stub.DropConnections()

    def __enter__(self) -> VCenter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def session_cookie(self) -> str:
        """``vmware_soap_session=...`` for HTTP requests on behalf of this session."""
        cookie: str = self.si._stub.cookie
        return cookie.split(";", 1)[0]

    def renew_session(self, stale: str) -> str:
        """The session cookie to use instead of ``stale``, which vCenter refused to an HTTP
        client (the datastore transport): logs in again unless that was done meanwhile."""
        stub: ResilientStub = self.si._stub
        stub.renew_if(lambda: self.session_cookie == stale)
        return self.session_cookie

    def ref(self, kind: type[Any], moref: str) -> Any:
        return kind(moref, self.si._stub)

    def props(self, obj: Any, *paths: str) -> dict[str, Any]:
        """Properties of one managed object; unset properties are absent from the result."""
        found = self.props_of([obj], type(obj), paths)
        return found.get(obj._moId, {})

    def props_of(
        self, objs: Sequence[Any], kind: type[Any], paths: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """moref -> {path: value} for many objects of one type, in one round trip."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=o, skip=False) for o in objs],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))],
        )
        return {obj._moId: props for obj, props in self._retrieve(spec)}

    def all_of(self, kind: type[Any], paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """moref -> properties for every object of ``kind`` in the inventory."""
        return self.all_of_kinds({kind: paths}).get(kind, {})

    def all_of_kinds(
        self, wanted: Mapping[type[Any], Sequence[str]]
    ) -> dict[type[Any], dict[str, dict[str, Any]]]:
        """kind -> moref -> properties for every object of each kind, read through one
        container view in one retrieval (the view's members are not fetched separately)."""
        kinds = list(wanted)
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, kinds, True)
        try:
            pc = vmodl.query.PropertyCollector
            spec = pc.FilterSpec(
                objectSet=[
                    pc.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            pc.TraversalSpec(
                                name="view", type=vim.view.ContainerView, path="view", skip=False
                            )
                        ],
                    )
                ],
                propSet=[pc.PropertySpec(type=k, pathSet=list(p)) for k, p in wanted.items()],
            )
            found = self._retrieve(spec)
        finally:
            view.DestroyView()
        out: dict[type[Any], dict[str, dict[str, Any]]] = {k: {} for k in kinds}
        for obj, props in found:
            for k in kinds:
                if isinstance(obj, k):
                    out[k][obj._moId] = props
                    break
        return out

    def _retrieve(self, spec: Any) -> list[tuple[Any, dict[str, Any]]]:
        """(object, {path: value}) for everything ``spec`` selects, following continuations."""
        pc = self.content.propertyCollector
        out: list[tuple[Any, dict[str, Any]]] = []
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        while result is not None:
            out.extend((o.obj, {p.name: p.val for p in o.propSet or ()}) for o in result.objects)
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
        return out

    def wait_task(self, task: Any, what: str, timeout: float = 3600.0) -> Any:
        """Wait for ``task``; return its result or raise its fault as a VCenterError."""
        deadline = time.monotonic() + timeout
        delay = 0.01  # short tasks (snapshot removal, reconfigure) are seen done early
        while time.monotonic() < deadline:
            info = self.props(task, "info.state", "info.error", "info.result")
            state = info.get("info.state")
            if state == "success":
                return info.get("info.result")
            if state == "error":
                fault = info.get("info.error")
                raise TaskFailed(what, fault)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise VCenterError(f"{what} did not finish within {timeout:.0f} s")


class TaskFailed(VCenterError):
    """A vCenter task ended in error. ``fault_type`` names the vim fault class."""

    def __init__(self, what: str, fault: Any) -> None:
        msg = getattr(fault, "msg", None) or type(fault).__name__
        super().__init__(f"{what} failed: {msg}")
        self.fault_type = type(fault).__name__
