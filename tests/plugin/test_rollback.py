"""`restore vm --in-place` (CBT rollback, issue 12) against the bed: after a guest day on both
disks of a backed-up VM, the rollback writes at most 1.5x the bytes the day changed as change
tracking reports them (64 KiB blocks) and every disk then equals its backup image; after a CBT
reset the disk is written in full and the report says why; the `/folder` HTTP interface is
refused before the VM is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.guestday import GuestDay
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.plugin.conftest import Cli
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.jsonshape import validate

pytestmark = pytest.mark.vsphere

NBD_WRITE = "nbdkit -s --exit-with-parent file {path}"


def _opts(bed: VsphereBed) -> list[str]:
    return ["--datastore-path", f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}"]


def _backup(cli: Cli, repo: Path, vcenter: str, vm: str, bed: VsphereBed) -> None:
    result = cli(
        "backup", "--repo", repo, "--vcenter", vcenter, "--vm", vm, "--transport", "file",
        "--no-skip-free", *_opts(bed), "--json",
    )  # fmt: skip
    assert result.rc == 0 and result.vms[vm]["ok"], result.err + result.out


def _rollback(cli: Cli, repo: Path, vcenter: str, vm: str, *args: str) -> Any:
    result = cli(
        "restore", "vm", f"{vm}@latest", "--repo", repo, "--vcenter", vcenter, "--in-place",
        "--yes", *args, "--json",
    )  # fmt: skip
    assert result.rc == 0, result.err + result.out
    validate("restore vm", result.json)
    return result.json


def _assert_disks_equal_backup(repo: Path, bed: VsphereBed, vm: VmInfo) -> None:
    images = images_of(repo, vm.name)[-1]
    disks = {f"disk-{d.key}": d.path for d in bed.control.vm_config(vm.name).disks}
    assert set(images) == set(disks)
    for name, image in images.items():
        path = disks[name]
        assert path is not None
        assert_image_equals(repo, image, path)


def test_rollback_writes_what_changed_then_full_after_a_cbt_reset(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    guest_day: Callable[..., GuestDay],
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    paths = {name: tmp_path / f"{name}.img" for name in ("gpt", "mbr")}
    for name, path in paths.items():
        clone_image(guest_images[name].path, path)
    keys = {
        "gpt": bed.control.attach_disk(vm.name, paths["gpt"]).key,
        "mbr": bed.control.add_disk(vm.name, paths["mbr"]).key,
    }
    vm = next(v for v in bed.control.vms() if v.name == vm.name)
    repo = new_repo("repo")
    _backup(cli, repo, vcenter, vm.name, bed)

    # changed: the 4 KiB blocks the day changed; tracked: the same as vSphere's change
    # tracking reports it (rounded out to its 64 KiB blocks), what any CBT rollback must write.
    changed = tracked = 0
    for seed, (name, key) in enumerate(sorted(keys.items()), start=1):
        day = guest_day(guest_images[name], 0.03, seed)
        applied = bed.control.apply_guest_day(vm.name, key, day.image.path)
        changed, tracked = changed + applied.written, tracked + applied.tracked
    assert changed > 1 << 20

    # http cannot write ranges: refused before the VM is powered off or written.
    state = bed.control.vm_config(vm.name).power_state
    assert state == "poweredOn"
    refused = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--in-place", "--yes", "--transport", "http",
    )  # fmt: skip
    assert refused.rc != 0 and "replaces whole files" in refused.err, refused.err
    assert bed.control.vm_config(vm.name).power_state == state
    # Powering off needs a yes, and there is no terminal here to ask on.
    unasked = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--in-place", "--transport", "file", *_opts(bed),
    )  # fmt: skip
    assert unasked.rc == 2 and "--yes" in unasked.err, unasked.err
    assert bed.control.vm_config(vm.name).power_state == state

    report = _rollback(cli, repo, vcenter, vm.name, *_opts(bed), "--transport", "file")
    assert report["action"] == "in-place" and report["moref"] == vm.moref
    assert {d["mode"] for d in report["disks"]} == {"changed"}, report
    written = sum(d["bytes_written"] + d["bytes_zeroed"] for d in report["disks"])
    assert changed <= written <= 1.5 * tracked, (written, changed, tracked)
    assert report["cbt_reset"] is True
    assert bed.control.vm_config(vm.name).power_state == "poweredOff"
    _assert_disks_equal_backup(repo, bed, vm)

    # A new backup (full: CBT was reset), a guest write, then tracking reset as after a power
    # loss: the changeId is useless, so every disk is written whole, with the reason.
    _backup(cli, repo, vcenter, vm.name, bed)
    bed.control.guest_write(vm.name, keys["gpt"], 1 << 20, b"\xa5" * 65536)
    bed.control.reset_cbt(vm.name)
    report = _rollback(
        cli, repo, vcenter, vm.name, *_opts(bed), "--transport", "nbd", "--nbd-command", NBD_WRITE
    )
    for disk in report["disks"]:
        assert disk["mode"] == "full" and disk["transport"] == "nbd", disk
        assert "CBT" in disk["reason"], disk
        assert disk["bytes_written"] + disk["bytes_zeroed"] == disk["size"]
    _assert_disks_equal_backup(repo, bed, vm)
