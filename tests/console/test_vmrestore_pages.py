"""A VM restored from the console against the vCenter bed: a ``restore`` user fills the
Restore VM form of a restore point, watches the task live (htmx) until it succeeds, and the new
VM's disk equals the backup image; the user is offered no rollback. An operator then rolls the
VM back after a guest write, through the confirmation step, and the disk equals the image."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.api.conftest import serve_process
from tests.console.conftest import Tab
from tests.plugin.conftest import _fresh_vms, cli, config_dir, fresh_vm, new_repo, plugin_bed
from tests.plugin.conftest import vcenter as vcenter
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.test_vcenter_outcomes import small_disk
from vmaccel.cli.app import main
from vmaccel.service import users
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "vcenter"]
pytestmark = pytest.mark.vsphere
MiB = 1 << 20


def _fill_common(page: Page, prefix: str, vcenter: str, datastore_path: str) -> None:
    page.locator(f"#{prefix}-vcenter").fill(vcenter)
    page.locator(f"#{prefix}-transport").select_option("file")
    page.locator(f"#{prefix}-paths").fill(datastore_path)


def _instant_page(tab: Tab, vm: str) -> None:
    """Start with an unknown vCenter: the task fails and says why; the session's record is
    left ``failed`` (nothing was made) and listed, and its owner stops it."""
    page = tab.page
    page.get_by_role("link", name="Instant").click()
    page.get_by_label("Restore point").fill("1")
    page.get_by_label("vCenter").fill("nowhere")
    page.get_by_label("ESXi host").fill("DC0_H0")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#task-state")).to_have_text("failed", timeout=30_000)
    expect(page.get_by_role("alert")).to_contain_text("nowhere")
    page.get_by_role("link", name="Instant sessions").click()
    expect(page.locator("#sessions")).to_contain_text("failed")
    tab.shot("instant")
    page.get_by_role("button", name=f"Stop {vm}-instant").click()
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=30_000)
    page.get_by_role("link", name="Instant sessions").click()
    expect(page.locator("#sessions")).to_contain_text("No instant sessions.")


def test_restore_a_vm_from_the_console_then_roll_it_back(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    chromium: Browser,
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    key = bed.control.attach_disk(vm.name, small_disk(tmp_path / "disk", seed=9)).key
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    datastore_path = f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}"
    rc = main(["backup", "--repo", str(ctx.require_repo()), "--vcenter", vcenter, "--vm",
               vm.name, "--transport", "file", "--datastore-path", datastore_path])  # fmt: skip
    assert rc == 0
    image = images_of(ctx.require_repo(), vm.name)[-1][f"disk-{key}"]
    users.add_user(ctx, "rita", "restore", "restore-pass")
    users.add_user(ctx, "opal", "operator", "operator-pass")
    new = f"{vm.name}-console"
    with serve_process(ctx, tmp_path / "serve.log") as info:
        tab = Tab(chromium, info.url)
        page = tab.login("rita", "restore-pass")
        tab.go("/console/backups/1")
        page.get_by_role("link", name="Restore VM").click()
        expect(page.get_by_role("button", name="Roll back…")).to_have_count(0)
        _fill_common(page, "vm", vcenter, datastore_path)
        page.get_by_label("VM name").fill(new)
        page.get_by_label("Network mapping").fill("DC0_DVPG0=VM Network")
        tab.shot("restore-vm")
        page.get_by_role("button", name="Restore VM").click()
        expect(page.locator("#task-state")).to_have_text("succeeded", timeout=60_000)
        expect(page.locator("#task-result")).to_contain_text(new)
        tab.shot("restore-vm-task")
        (disk,) = bed.control.vm_config(new).disks
        assert disk.path is not None
        assert_image_equals(ctx.require_repo(), image, disk.path)
        _instant_page(tab, vm.name)
        assert tab.hosts == {f"127.0.0.1:{info.port}"}
        tab.close()

        bed.control.guest_write(vm.name, key, 2 * MiB + 7, os.urandom(100_000))
        tab = Tab(chromium, info.url)
        page = tab.login("opal", "operator-pass")
        tab.go("/console/backups/1/vm")
        _fill_common(page, "rb", vcenter, datastore_path)
        page.get_by_role("button", name="Roll back…").click()
        expect(page.get_by_role("heading", name=f"Roll {vm.name} back")).to_be_visible()
        page.get_by_role("button", name="Yes, power off and roll back").click()
        expect(page.locator("#task-state")).to_have_text("succeeded", timeout=60_000)
        expect(page.locator("#task-result")).to_contain_text("changed")
        tab.close()
    (disk,) = [d for d in bed.control.vm_config(vm.name).disks if d.key == key]
    assert disk.path is not None
    assert_image_equals(ctx.require_repo(), image, disk.path)
