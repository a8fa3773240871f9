"""The console in Chromium: a folder of a restore point downloaded as a zip whose files equal
the guest image's; unknown pages and restore points answer HTML 404 pages (the API keeps
its JSON); the policy form's tag picker filled from the vCenter bed saves a picked tag and
shows it ticked when the policy is edited."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect

from testbed.guestimages.model import GuestImage
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.api.conftest import VM, Api, api, api_env, gpt_image, serve_process
from tests.console.conftest import Tab
from tests.plugin.conftest import (
    Tagger,
    _fresh_vms,
    cli,
    config_dir,
    fresh_vm,
    new_repo,
    plugin_bed,
    tagger,
)
from tests.plugin.conftest import vcenter as vcenter
from vmaccel.service import policies, users
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "api", "api_env", "cli", "config_dir", "fresh_vm", "gpt_image",
           "new_repo", "plugin_bed", "tagger"]  # fmt: skip

PASSWORD = "picker-pass-1"


@pytest.fixture(scope="module")
def console(api: Api) -> Iterator[Api]:
    users.add_user(api.ctx, "zoe", "restore", PASSWORD)
    yield api


def test_a_folder_downloads_as_a_zip_of_the_guest_files(
    console: Api, chromium: Browser, gpt_image: GuestImage, tmp_path: Path
) -> None:
    linux = gpt_image.volume("linux").files
    tab = Tab(chromium, console.info.url)
    tab.login("zoe", PASSWORD)
    page = tab.go(f"/console/backups/{VM}@latest?path=p2")
    with page.expect_download() as info:
        page.get_by_role("row", name="docs/").get_by_role("link", name="Zip").click()
    assert info.value.suggested_filename.endswith("-docs.zip")
    with zipfile.ZipFile(info.value.path()) as archive:
        got = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    want = {p: f.sha256 for p, f in linux.items() if p.startswith("docs/") and f.kind == "file"}
    assert want and set(got) == set(want)
    for path, sha in want.items():
        assert hashlib.sha256(got[path]).hexdigest() == sha, path

    page = tab.go(f"/console/backups/{VM}@latest?path=p2/docs")
    with page.expect_download() as info:
        page.locator("#folder-zip").click()
    with zipfile.ZipFile(info.value.path()) as archive:
        assert f"docs/{next(iter(want))[5:]}" in archive.namelist()
    assert tab.hosts == {f"127.0.0.1:{console.info.port}"}
    tab.close()


def test_unknown_console_pages_answer_html_404(console: Api, chromium: Browser) -> None:
    tab = Tab(chromium, console.info.url)
    tab.login("zoe", PASSWORD)
    for path in ("/console/no-such-page", "/console/backups/9999"):
        response = tab.page.goto(console.info.url + path)
        assert response is not None and response.status == 404, path
        assert response.headers["content-type"].startswith("text/html")
        expect(tab.page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(tab.page.get_by_role("link", name="Policies")).to_be_visible()  # the nav
    tab.shot("not-found")
    tab.close()
    api_404 = requests.get(console.url + "/no-such-route", verify=str(console.info.certificate),
                           timeout=30)  # fmt: skip
    assert api_404.status_code == 404 and api_404.json()["error"]["type"] == "NotFound"
    anonymous = requests.get(console.info.url + "/console/static/missing.css",
                             verify=str(console.info.certificate), timeout=30)  # fmt: skip
    assert anonymous.status_code == 404 and "text/html" in anonymous.headers["content-type"]


@pytest.mark.vsphere
def test_the_tag_picker_saves_a_picked_tag(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    tagger: Tagger,
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    chromium: Browser,
    tmp_path: Path,
) -> None:
    spec = tagger.tag(fresh_vm().moref, "picker-gold")
    tagger.tag(fresh_vm().moref, "picker-bronze")
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    users.add_user(ctx, "opal", "operator", "operator-pass")
    with serve_process(ctx, tmp_path / "serve.log") as info:
        tab = Tab(chromium, info.url)
        page = tab.login("opal", "operator-pass")
        page = tab.go("/console/policies/new")
        picker = page.locator("#tag-picker")
        expect(picker).to_contain_text(f"Tags of vCenter {vcenter}")
        category = picker.get_by_role("group", name="backup")
        expect(category.get_by_role("checkbox", name="picker-bronze")).not_to_be_checked()
        category.get_by_role("checkbox", name="picker-gold").check()
        page.get_by_label("Name", exact=True).fill("picked")
        expect(page.get_by_label("vCenter (as registered")).to_have_value(vcenter)
        page.get_by_label("Tags (CATEGORY:TAG").fill("backup:not-created-yet")
        tab.shot("tag-picker")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="Policy picked")).to_be_visible()
        assert policies.get_policy(ctx, "picked").policy.tags == ("backup:not-created-yet", spec)

        page = tab.go("/console/policies/picked/edit")
        expect(page.get_by_role("checkbox", name="picker-gold")).to_be_checked()
        expect(page.get_by_label("Tags (CATEGORY:TAG")).to_have_value("backup:not-created-yet")
        page.get_by_role("checkbox", name="picker-gold").uncheck()
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="Policy picked")).to_be_visible()
        assert policies.get_policy(ctx, "picked").policy.tags == ("backup:not-created-yet",)
        assert tab.hosts == {f"127.0.0.1:{info.port}"}
        tab.close()
