"""The console in Chromium against a running ``vmaccel serve`` (two backups of the gpt
guest image as VM vm1): log in, the dashboard, a restore point's files downloaded and
compared with the image's bytes, a folder restored and compared, a wrong password, the
restore role kept from policies (page and API), a phone-sized screen, and no request to
any host but the server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect

from testbed.guestimages.model import GuestImage
from tests.api.conftest import VM, Api, api, api_env, gpt_image
from tests.console.conftest import PHONE, Tab
from vmaccel.service import users

__all__ = ["api", "api_env", "gpt_image"]

PASSWORD = "console-pass-1"


@pytest.fixture(scope="module")
def console(api: Api) -> Iterator[Api]:
    users.add_user(api.ctx, "ada", "admin", PASSWORD)
    users.add_user(api.ctx, "rita", "restore", PASSWORD)
    yield api


def _base(api: Api) -> str:
    return api.info.url


FILE = "report 2023 final.txt"  # in docs/ of the image's linux volume (p2 in the tree)


def test_log_in_dashboard_browse_download_restore(
    console: Api, chromium: Browser, gpt_image: GuestImage, tmp_path: Path
) -> None:
    linux = gpt_image.volume("linux").files
    tab = Tab(chromium, _base(console))
    page = tab.login("ada", PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("#protected-count")).to_have_text("1")  # vm1, backed up just now
    expect(page.locator("#dedup")).not_to_have_text("-")
    tab.shot("dashboard")

    page.get_by_role("link", name="VMs").click()
    page.get_by_role("link", name=VM, exact=True).click()
    expect(page.locator(".timeline > li")).to_have_count(2)
    page.locator(".timeline .point").first.click()  # the newest restore point
    expect(page.get_by_role("rowheader", name="disk0")).to_be_visible()
    page.get_by_role("link", name="p2/").click()
    page.get_by_role("link", name="docs/").click()
    tab.shot("restore-point")
    with page.expect_download() as info:
        page.get_by_role("row", name=FILE).get_by_role("link", name="Download").click()
    data = Path(info.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == linux[f"docs/{FILE}"].sha256

    page.get_by_role("link", name="p2", exact=True).click()
    page.get_by_role("checkbox", name="restore docs").check()
    target = tmp_path / "restored"
    page.get_by_label("Target folder").fill(str(target))
    page.get_by_role("button", name="Restore", exact=True).click()
    expect(page.locator("#restore-done")).to_contain_text(str(target))
    wanted = {p: f for p, f in linux.items() if p.startswith("docs/") and f.kind == "file"}
    assert wanted
    for path, f in wanted.items():
        got = (target / path).read_bytes()
        assert hashlib.sha256(got).hexdigest() == f.sha256, path
    assert tab.hosts == {f"127.0.0.1:{console.info.port}"}  # nothing left the vmaccel host
    tab.close()


def test_wrong_password_shows_an_error(console: Api, chromium: Browser) -> None:
    tab = Tab(chromium, _base(console))
    page = tab.login("ada", "not the password")
    expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
    expect(page.get_by_role("heading", name="Dashboard")).to_have_count(0)
    tab.shot("login-error")
    tab.close()


def test_restore_role_cannot_edit_policies(console: Api, chromium: Browser) -> None:
    tab = Tab(chromium, _base(console))
    page = tab.login("rita", PASSWORD)
    page.get_by_role("link", name="Policies").click()
    expect(page.get_by_role("heading", name="Policies")).to_be_visible()
    expect(page.locator("#new-policy")).to_have_count(0)
    page.goto(_base(console) + "/console/policies/new")
    expect(page.get_by_role("alert")).to_contain_text("browse and restore only")
    # The API refuses the same session too (403), CSRF token and all.
    cookies = {c["name"]: c["value"] for c in tab.context.cookies()}
    session = users.session(console.ctx, cookies["vmaccel_session"])
    assert session is not None
    got = requests.post(
        console.url + "/policies",
        json={"name": "x", "vcenter": "vc"},
        cookies={"vmaccel_session": cookies["vmaccel_session"]},
        headers={"X-CSRF-Token": session.csrf},
        verify=str(console.info.certificate),
        timeout=30,
    )
    assert got.status_code == 403, got.text
    assert "console user rita" in got.json()["error"]["message"]
    tab.close()


def test_a_phone_sized_screen_needs_no_horizontal_scrolling(
    console: Api, chromium: Browser
) -> None:
    tab = Tab(chromium, _base(console), viewport=PHONE, is_mobile=True, has_touch=True)
    page = tab.login("ada", PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    tab.shot("dashboard-phone")
    page.keyboard.press("Tab")  # the skip link comes first and shows its focus
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    tab.close()


AXE = Path(__file__).parent / "vendor" / "axe-core-4.10.2.min.js"  # from npm, MPL-2.0
PAGES = ("/", "/vms", f"/vms/{VM}", "/backups/1?path=p2/docs", "/policies", "/jobs",
         "/search?pattern=*.txt")  # fmt: skip


def test_main_pages_have_no_serious_accessibility_violations(
    console: Api, chromium: Browser
) -> None:
    tab = Tab(chromium, _base(console), bypass_csp=True)  # axe is injected inline
    tab.login("ada", PASSWORD)
    script = AXE.read_text()
    for path in (*PAGES, "/policies/new"):
        page = tab.go("/console" + path)
        page.add_script_tag(content=script)
        found = page.evaluate("async () => (await axe.run()).violations")
        serious = [(v["id"], v["help"]) for v in found if v["impact"] in ("serious", "critical")]
        assert serious == [], (path, serious)
    tab.close()
