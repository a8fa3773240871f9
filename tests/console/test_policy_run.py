"""A policy by tag made in the console against the vCenter bed, its selection tested, run
now, and watched live (htmx) until it ends in success; every request stays on the host."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.api.conftest import serve_process
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
from tests.plugin.test_vcenter_outcomes import small_disk
from vmaccel.service import policies, users
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "tagger"]
pytestmark = pytest.mark.vsphere
ENDED_WELL = re.compile("succeeded|warning")


def test_add_a_policy_by_tag_run_it_now_and_watch_it_succeed(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    tagger: Tagger,
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    chromium: Browser,
    tmp_path: Path,
) -> None:
    vm = fresh_vm()
    plugin_bed.control.attach_disk(vm.name, small_disk(tmp_path / "disk", seed=11))
    tag = tagger.tag(vm.moref, "console-gold")
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    users.add_user(ctx, "opal", "operator", "operator-pass")
    with serve_process(ctx, tmp_path / "serve.log", tick=0.3) as info:
        tab = Tab(chromium, info.url)
        page = tab.login("opal", "operator-pass")
        page.get_by_role("link", name="Policies").click()
        page.get_by_role("link", name="New policy").click()
        page.get_by_label("Name", exact=True).fill("console-gold")
        page.get_by_label("vCenter").fill(vcenter)
        page.get_by_label("Tags (CATEGORY:TAG, comma separated)").fill(tag)
        page.get_by_label("Schedule (cron)").fill("0 0 1 1 *")
        for keep in ("daily", "weekly", "monthly"):
            page.get_by_label(keep, exact=True).fill("0")
        page.get_by_label("quiesce").uncheck()
        tab.shot("policy-form")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="Policy console-gold")).to_be_visible()
        page.get_by_role("button", name="Test selection").click()
        expect(page.locator("#selection")).to_contain_text(vm.name)
        page.get_by_role("button", name="Run now").click()
        # A disk without a filesystem ends "warning" (no file catalog), as through the API.
        expect(page.locator("#job-state")).to_have_text(ENDED_WELL, timeout=90_000)
        row = page.get_by_role("row", name=vm.name)
        expect(row.get_by_role("link", name="1", exact=True)).to_be_visible()  # restore point 1
        tab.shot("job")
        assert tab.hosts == {f"127.0.0.1:{info.port}"}
        tab.close()
    changes = policies.policy_history(ctx, "console-gold")
    assert [c.to_dict()["who"] for c in changes] == ["console user opal"]
