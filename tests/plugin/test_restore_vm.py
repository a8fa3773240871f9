"""`restore vm` against the bed (issue 12, "Full VM restore"): a VM with two disks (the gpt
guest image with ext4 and NTFS, and the mbr one with XFS and NTFS, both thin/sparse) is backed
up, then comes back as a new VM whose configuration matches the original's and whose disks
equal the backup images byte for byte, sending at most 1.1x the images' allocated bytes, over
every transport that writes (file, nbd, and http: an NFC import of streamOptimized VMDKs);
`--overwrite` never removes the old VM when the new one fails; `--into-vm` adds one disk to an
existing VM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image
from testbed.vsphere import vimclient
from testbed.vsphere.bed import VmInfo, VsphereBed
from testbed.vsphere.bedrecords import VmConfig
from tests.plugin.conftest import Cli
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.jsonshape import validate
from vmaccel.catalog import Repository

pytestmark = pytest.mark.vsphere

NBD_WRITE = "nbdkit -s --exit-with-parent file {path}"


def _two_disk_vm(
    bed: VsphereBed, vm: VmInfo, images: Mapping[str, GuestImage], tmp_path: Path
) -> None:
    first, second = tmp_path / "gpt.img", tmp_path / "mbr.img"
    clone_image(images["gpt"].path, first)
    clone_image(images["mbr"].path, second)
    bed.control.attach_disk(vm.name, first)
    bed.control.add_disk(vm.name, second)


def _file_opts(bed: VsphereBed) -> list[str]:
    return ["--datastore-path", f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}"]


def _backup(cli: Cli, repo: Path, vcenter: str, vm: str, bed: VsphereBed) -> None:
    result = cli(
        "backup", "--repo", repo, "--vcenter", vcenter, "--vm", vm, "--transport", "file",
        *_file_opts(bed), "--json",
    )  # fmt: skip
    assert result.rc == 0, result.err + result.out
    assert result.vms[vm]["ok"], result.out


def _restore(cli: Cli, repo: Path, vcenter: str, vm: str, *args: str) -> Any:
    result = cli("restore", "vm", f"{vm}@latest", "--repo", repo, "--vcenter", vcenter, *args)
    assert result.rc == 0, result.err + result.out
    validate("restore vm", result.json)
    return result.json


def _allocated(repo: Path, vm: str) -> dict[str, int]:
    """disk name -> bytes of the newest image's data runs."""
    out = {}
    with Repository.open(repo) as r:
        for name, image in images_of(repo, vm)[-1].items():
            with r.open_image(image) as reader:
                out[name] = sum(n for _, n, data in reader.extents() if data)
    return out


def _assert_same_shape(new: VmConfig, old: VmConfig, network: str) -> None:
    assert (new.num_cpu, new.memory_mb, new.firmware, new.guest_id, new.version) == (
        old.num_cpu, old.memory_mb, old.firmware, old.guest_id, old.version,
    )  # fmt: skip
    assert new.instance_uuid != old.instance_uuid
    controllers = sorted(
        (d.type, d.bus_number) for d in old.devices if d.type.endswith("SCSIController")
    )
    assert (
        sorted((d.type, d.bus_number) for d in new.devices if d.type.endswith("SCSIController"))
        == controllers
    )
    assert sorted(d.capacity for d in new.disks) == sorted(d.capacity for d in old.disks)
    assert all(d.thin for d in new.disks), new.disks
    assert old.nics and [n.network for n in new.nics] == [network] * len(old.nics)
    assert {n.mac_address for n in new.nics}.isdisjoint({n.mac_address for n in old.nics})
    assert not any("ctkEnabled" in k for k in new.extra_config), new.extra_config


def _assert_disks_equal_backup(
    repo: Path, vm: str, report: Mapping[str, Any], bed: VsphereBed, new_vm: str
) -> None:
    images = images_of(repo, vm)[-1]
    by_file = {d.file_name: d.path for d in bed.control.vm_config(new_vm).disks}
    allocated = _allocated(repo, vm)
    assert len(report["disks"]) == len(images) == 2
    for disk in report["disks"]:
        path = by_file[disk["target"]]
        assert path is not None
        assert_image_equals(repo, images[disk["disk"]], path)
        assert disk["bytes_written"] <= 1.1 * allocated[disk["disk"]], (disk, allocated)
        assert disk["bytes_written"] < disk["size"] / 2  # sparse: holes were not sent


def test_new_vm_matches_the_backup_over_every_transport(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    _two_disk_vm(bed, vm, guest_images, tmp_path)
    repo = new_repo("repo")
    _backup(cli, repo, vcenter, vm.name, bed)
    old = bed.control.vm_config(vm.name)

    transports = (("file", []), ("nbd", ["--nbd-command", NBD_WRITE]), ("http", []))
    for transport, extra in transports:
        seen = len(bed.control.uploads())
        name = f"{vm.name}-{transport}"
        report = _restore(
            cli, repo, vcenter, vm.name, "--name", name, "--transport", transport,
            "--network", "DC0_DVPG0=VM Network", *_file_opts(bed), *extra, "--json",
        )  # fmt: skip
        assert report["action"] == "new" and report["vm"] == name
        assert {d["transport"] for d in report["disks"]} == {transport}
        new = bed.control.vm_config(name)
        _assert_same_shape(new, old, "VM Network")
        assert new.change_tracking_enabled == old.change_tracking_enabled
        _assert_disks_equal_backup(repo, vm.name, report, bed, name)
        uploads = [u for u in bed.control.uploads(seen) if u.kind == "nfc"]
        sent = sorted(d["bytes_written"] for d in report["disks"])
        assert sorted(u.bytes_received for u in uploads) == (sent if transport == "http" else [])

    # The original's name is taken: refused without --overwrite, nothing created.
    before = {v.name for v in bed.control.vms()}
    result = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--transport", "file", *_file_opts(bed),
    )  # fmt: skip
    assert result.rc == 9 and "--overwrite" in result.err, result.err
    # The original still holds the saved identity: a copy cannot take it too.
    result = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--name", f"{vm.name}-twin", "--keep-identity", "--transport", "file", *_file_opts(bed),
    )  # fmt: skip
    assert result.rc == 9 and "without --keep-identity" in result.err, result.err
    assert {v.name for v in bed.control.vms()} == before


def test_overwrite_replaces_only_after_success(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    _two_disk_vm(bed, vm, guest_images, tmp_path)
    repo = new_repo("repo")
    _backup(cli, repo, vcenter, vm.name, bed)
    old = bed.control.vm_config(vm.name)
    names = {v.name for v in bed.control.vms()}
    seen = max((e.seq for e in bed.control.vm_events()), default=0)

    # The new VM fails after creation (its CBT reset task fails): it is removed, the old VM
    # is still there with its disks.
    bed.control.inject_fault("task", after=1)
    result = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--overwrite", "--transport", "file", *_file_opts(bed),
    )  # fmt: skip
    assert result.rc != 0 and "failed" in result.err, result.err + result.out
    bed.control.clear_faults()
    events = [(e.event, e.name) for e in bed.control.vm_events(seen) if vm.name in e.name]
    assert [kind for kind, _ in events] == ["created", "destroyed"], events
    assert events[0][1].startswith(f"{vm.name}-vmaccel-"), events
    assert {v.name for v in bed.control.vms()} == names
    still = bed.control.vm_config(vm.name)
    assert still.moref == old.moref and still.instance_uuid == old.instance_uuid
    assert all(d.path is not None and d.path.exists() for d in still.disks)

    # The same restore without the fault replaces it.
    report = _restore(
        cli, repo, vcenter, vm.name, "--overwrite", "--keep-identity", "--transport", "file",
        *_file_opts(bed), "--json",
    )  # fmt: skip
    assert report["action"] == "replace" and report["replaced"] == old.moref
    assert {v.name for v in bed.control.vms()} == names
    new = bed.control.vm_config(vm.name)
    assert new.moref != old.moref and new.instance_uuid == old.instance_uuid
    assert sorted(n.mac_address for n in new.nics) == sorted(n.mac_address for n in old.nics)
    _assert_disks_equal_backup(repo, vm.name, report, bed, vm.name)


def test_one_disk_into_an_existing_vm(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
    guest_images: Mapping[str, GuestImage],
    tmp_path: Path,
) -> None:
    bed, vm, other = plugin_bed, fresh_vm(), fresh_vm()
    _two_disk_vm(bed, vm, guest_images, tmp_path)
    repo = new_repo("repo")
    _backup(cli, repo, vcenter, vm.name, bed)
    second = sorted(images_of(repo, vm.name)[-1])[-1]
    before = {d.file_name for d in bed.control.vm_config(other.name).disks}
    result = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--disk", second, "--into-vm", other.name, "--transport", "file", *_file_opts(bed),
    )  # fmt: skip
    assert result.rc == 0, result.err + result.out
    (added,) = [d for d in bed.control.vm_config(other.name).disks if d.file_name not in before]
    lines = result.out.splitlines()
    assert lines[0].startswith(f"restored a disk of backup 1 into VM {other.name} ({other.moref})")
    assert lines[1].startswith(f"  {second} -> {added.file_name} [file, new]: "), lines
    assert added.path is not None
    assert_image_equals(repo, images_of(repo, vm.name)[-1][second], added.path)

    # --into-vm takes exactly one disk: a usage error, nothing added.
    result = cli(
        "restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
        "--into-vm", other.name,
    )  # fmt: skip
    assert result.rc == 2 and "exactly one --disk" in result.err, result.err
    assert len(bed.control.vm_config(other.name).disks) == len(before) + 1


def _placed(bed: VsphereBed, moref: str) -> tuple[str, str, str]:
    """(folder name, name of the resource pool's owner, power state) of a VM."""
    with vimclient.connect(bed) as si:
        vm = vimclient.vm_by_moref(si, moref)
        p = vimclient.props(si, vm, "parent", "resourcePool", "runtime.powerState")
        folder = vimclient.props(si, p["parent"], "name")["name"]
        owner = vimclient.props(si, p["resourcePool"], "owner")["owner"]
        return folder, vimclient.props(si, owner, "name")["name"], p["runtime.powerState"]


def test_placement_by_name_and_clear_refusals(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    cli: Cli,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    repo = new_repo("repo")
    _backup(cli, repo, vcenter, vm.name, bed)  # the VM's own small disk
    with vimclient.connect(bed) as si:
        dc = si.content.rootFolder.childEntity[0]
        vimclient.props(si, dc, "vmFolder")["vmFolder"].CreateFolder(f"restored-{vm.name}")
    base = ["restore", "vm", f"{vm.name}@latest", "--repo", repo, "--vcenter", vcenter,
            "--transport", "file", *_file_opts(bed)]  # fmt: skip
    net = ["--network", "DC0_DVPG0=VM Network"]

    seen = max((e.seq for e in bed.control.vm_events()), default=0)
    refusals = [
        (["--name", f"{vm.name}-x1", "--datastore", "nosuch"], "datastore 'nosuch' does not exist"),
        (
            ["--name", f"{vm.name}-x2", "--network", "DC0_DVPG0=nosuch"],
            "mapped to 'nosuch', which does not",
        ),
        (
            ["--name", f"{vm.name}-x3", *net, "--folder", "/DC0/vm/nosuch"],
            "no VM folder '/DC0/vm/nosuch'",
        ),
        (["--name", f"{vm.name}-x4", *net, "--resource-pool", "Resources"], "--host or --cluster"),
        (["--name", f"{vm.name}-x5", *net, "--host", "h", "--cluster", "c"], "not both"),
    ]
    for args, message in refusals:
        result = cli(*base, *args)
        assert result.rc != 0 and message in result.err, (args, result.err)
    assert [e for e in bed.control.vm_events(seen) if vm.name in e.name] == []  # none made

    name = f"{vm.name}-placed"
    result = cli(
        *base, "--name", name, *net, "--folder", f"/DC0/vm/restored-{vm.name}",
        "--cluster", "DC0_C0", "--resource-pool", "Resources", "--power-on", "--json",
    )  # fmt: skip
    assert result.rc == 0, result.err
    validate("restore vm", result.json)
    assert result.json["powered_on"] is True
    assert _placed(bed, result.json["moref"]) == (f"restored-{vm.name}", "DC0_C0", "poweredOn")
