"""VM and disk selection passed through the CLI against the vSphere bed: `--folder` takes the
VMs of a folder (and only those), `--exclude-vm` leaves matching VMs out and says so,
`--exclude-disk VM:DISK` leaves one disk out of that VM's backup."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pyVmomi import vim

from testbed.vsphere import vimclient
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.plugin.conftest import Cli
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.jsonshape import validate
from tests.plugin.test_vcenter_outcomes import MiB, small_disk

pytestmark = pytest.mark.vsphere


def _into_new_folder(bed: VsphereBed, name: str, vms: list[VmInfo]) -> str:
    """Make folder ``name`` under DC0's VM folder, move ``vms`` into it; its inventory path."""
    with vimclient.connect(bed) as si:
        (dc,) = [e for e in si.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        folder = dc.vmFolder.CreateFolder(name)
        task = folder.MoveIntoFolder_Task([vimclient.vm_by_moref(si, vm.moref) for vm in vms])
        vimclient.wait_task(si, task)
        return f"/{dc.name}/vm/{name}"


def test_folder_exclude_vm_and_exclude_disk(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    tmp_path: Path,
) -> None:
    bed, repo = plugin_bed, new_repo("repo")
    kept, dropped = fresh_vm(), fresh_vm()
    disks = {}
    for vm, seed in ((kept, 1), (dropped, 2)):
        disks[vm.name] = bed.control.attach_disk(
            vm.name, small_disk(tmp_path / f"{seed}", seed=seed)
        )
    second = bed.control.add_disk(kept.name, small_disk(tmp_path / "extra", 4 * MiB, seed=3))
    path = _into_new_folder(bed, "cli-selection", [kept, dropped])

    r = cli(
        "backup", "--repo", repo, "--vcenter", vcenter, "--folder", path,
        "--exclude-vm", dropped.name[:-1] + "[" + dropped.name[-1] + "]",  # a pattern, not a name
        "--exclude-disk", f"{kept.name}:disk-{second.key}",
        "--json",
    )  # fmt: skip
    assert r.rc == 0, r.err + r.out
    validate("backup", r.json)
    # Only the folder's VMs were considered (the bed has more), and the excluded one was named.
    assert [v["vm"] for v in r.json["vms"]] == [kept.name]
    assert f"skipping {dropped.name}: excluded by --exclude-vm" in r.err
    (report,) = r.json["vms"]
    assert [d["disk"] for d in report["disks"]] == [f"disk-{disks[kept.name].key}"]
    (images,) = images_of(repo, kept.name)
    assert sorted(images) == [f"disk-{disks[kept.name].key}"]
    assert_image_equals(repo, images[f"disk-{disks[kept.name].key}"], disks[kept.name].path)
    assert images_of(repo, dropped.name) == []

    # Without the exclusions, the same folder gives both VMs and both disks.
    full = cli("backup", "--repo", repo, "--vcenter", vcenter, "--folder", path, "--json")
    assert full.rc == 0, full.err
    assert sorted(full.vms) == sorted([kept.name, dropped.name])
    assert len(full.vms[kept.name]["disks"]) == 2

    # New images store every name of their disk, and `restore disk` takes each of them.
    image = images_of(repo, kept.name)[-1][f"disk-{second.key}"]
    assert image.meta.key == second.key and image.meta.label and image.meta.unit
    assert re.fullmatch(r"scsi\d+:\d+", image.meta.unit), image.meta.unit
    forms = [str(second.key), image.meta.label.upper(), image.meta.unit]
    for i, form in enumerate(forms):
        out = tmp_path / f"restored-{i}.raw"
        r = cli("restore", "disk", f"{kept.name}@latest", form, "--to", out, "--repo", repo)
        assert r.rc == 0, r.err
        assert out.read_bytes() == second.path.read_bytes()
    r = cli("restore", "disk", f"{kept.name}@latest", "Hard disk 9", "--to", out, "--repo", repo)
    assert r.rc == 7 and "no disk 'Hard disk 9'; choose " in r.err and image.meta.unit in r.err
