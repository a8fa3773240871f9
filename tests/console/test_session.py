"""Console sessions over HTTPS without a browser: the cookie's flags, the API accepting the
session with its CSRF token (and refusing it without), roles mapped to scopes, log out,
and the vendored htmx file checked against its pinned digest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.conftest import VM, Api, api, api_env, gpt_image
from vmaccel.console.web import HTMX, STATIC
from vmaccel.service import users

__all__ = ["api", "api_env", "gpt_image"]

HTMX_SHA256 = "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"  # 2.0.4


@pytest.fixture(scope="module")
def site(api: Api) -> Iterator[Api]:
    users.add_user(api.ctx, "ops", "operator", "operator-pass")
    users.add_user(api.ctx, "res", "restore", "restore-pass")
    yield api


def _session(api: Api, name: str, password: str) -> tuple[requests.Session, str]:
    """A logged-in session and its CSRF token."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(api.info.certificate)
    got = s.post(api.info.url + "/console/login", data={"username": name, "password": password},
                 allow_redirects=False, timeout=30)  # fmt: skip
    assert got.status_code == 303, got.text
    cookie = got.headers["Set-Cookie"]
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=strict"))
    found = users.session(api.ctx, s.cookies["vmaccel_session"])
    assert found is not None
    return s, found.csrf


def test_the_api_takes_the_session_with_its_csrf_token(site: Api, tmp_path: Path) -> None:
    s, csrf = _session(site, "res", "restore-pass")
    assert s.get(site.url + "/vms", timeout=30).json()[0]["vm"] == VM
    body = {"backup": f"{VM}@latest", "paths": ["p1"], "to": str(tmp_path / "out")}
    refused = s.post(site.url + "/restores/files", json=body, timeout=30)
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.text
    started = s.post(site.url + "/restores/files", json=body, headers={"X-CSRF-Token": csrf},
                     timeout=30)  # fmt: skip
    assert started.status_code == 202, started.text
    policy = s.post(site.url + "/policies", json={"name": "p", "vcenter": "v"},
                    headers={"X-CSRF-Token": csrf}, timeout=30)  # fmt: skip
    assert policy.status_code == 403  # restore role: scope restore
    page = s.post(site.info.url + "/console/logout", timeout=30, allow_redirects=False)
    assert page.status_code == 403  # no CSRF token: refused, still logged in
    out = s.post(site.info.url + "/console/logout", data={"csrf": csrf}, allow_redirects=False,
                 timeout=30)  # fmt: skip
    assert out.status_code == 303
    s.cookies.set("vmaccel_session", "gone")
    assert s.get(site.url + "/vms", timeout=30).status_code == 401


def test_operators_change_policies_but_not_tokens(site: Api) -> None:
    s, csrf = _session(site, "ops", "operator-pass")
    headers = {"X-CSRF-Token": csrf}
    assert s.get(site.url + "/policies", timeout=30).status_code == 200
    assert s.get(site.url + "/tokens", timeout=30).status_code == 403
    made = s.post(site.url + "/tokens", json={"scope": "admin"}, headers=headers, timeout=30)
    assert made.status_code == 403


def test_pages_need_a_session_and_carry_a_strict_csp(site: Api) -> None:
    s = requests.Session()
    s.trust_env = False
    got = s.get(site.info.url + "/console/vms", verify=str(site.info.certificate),
                allow_redirects=False, timeout=30)  # fmt: skip
    assert got.status_code == 303 and "/console/login" in got.headers["Location"]
    assert "default-src 'self'" in got.headers["Content-Security-Policy"]


def test_vendored_htmx_is_the_pinned_release() -> None:
    data = (STATIC / HTMX).read_bytes()
    assert hashlib.sha256(data).hexdigest() == HTMX_SHA256
    assert (STATIC / "htmx-LICENSE.txt").read_text().startswith("Zero-Clause BSD")
