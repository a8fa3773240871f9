"""``requests`` sessions for vCenter HTTP endpoints (vAPI, datastore ``/folder``) that verify
exactly as the configured trust says. Kept apart from :mod:`vmaccel.plugin.vcenter.tls` so that runs
which only speak SOAP do not import ``requests``; use
:func:`vmaccel.plugin.vcenter.tls.requests_session`.
"""

from __future__ import annotations

from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from vmaccel.plugin.vcenter.models import TlsTrust


class _PinnedAdapter(HTTPAdapter):
    """Verifies the pinned SHA-256 fingerprint on every connection (urllib3's
    ``assert_fingerprint``); the CA chain is deliberately not consulted."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        kwargs["cert_reqs"] = "CERT_NONE"
        super().init_poolmanager(*args, **kwargs)


class _PinnedSession(requests.Session):
    """A session whose ``https://`` adapter stays the pinned one.

    The vSphere Automation SDK mounts its own ``HTTPAdapter`` on the session it is given (to
    size the pool) before logging in; with the pin living in the adapter and ``verify`` off,
    that would silently send the password to any server. Later mounts for HTTPS are refused.
    """

    def mount(self, prefix: str | bytes, adapter: requests.adapters.BaseAdapter) -> None:
        current = self.adapters.get("https://")
        text = prefix.decode() if isinstance(prefix, bytes) else prefix
        if isinstance(current, _PinnedAdapter) and text.lower().startswith("https"):
            return
        super().mount(prefix, adapter)


def requests_session(trust: TlsTrust) -> requests.Session:
    """A ``requests`` session that verifies exactly as ``trust`` says (environment ignored)."""
    session = requests.Session() if trust.ca_file is not None else _PinnedSession()
    session.trust_env = False
    if trust.ca_file is not None:
        session.verify = trust.ca_file
    else:
        if trust.thumbprint is None:  # TlsTrust forbids it; never fall through unverified
            raise ValueError("TlsTrust needs exactly one of a thumbprint or a CA file")
        session.verify = False  # the adapter asserts the pinned fingerprint instead
        # urllib3 would warn about "unverified" requests: they are verified by the pin.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        session.mount("https://", _PinnedAdapter(trust.thumbprint))
    return session
