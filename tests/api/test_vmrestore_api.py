"""VM restore, rollback and instant recovery through the API, over real HTTPS against a
running ``vmaccel serve`` and the vCenter bed: a backed-up VM comes back as a new VM whose
disk equals the backup image; after a guest write, a rollback (admin, confirmed) leaves the
disk equal to the image again; an instant session started through the API is listed and,
stopped by the token that started it (not by another), leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed
from testbed.vsphere.nas import pin_ports
from tests.api.conftest import Api, serve_process
from tests.plugin.conftest import _fresh_vms, cli, config_dir, fresh_vm, new_repo, plugin_bed
from tests.plugin.conftest import vcenter as vcenter
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.test_vcenter_outcomes import small_disk
from vmaccel.cli.app import main
from vmaccel.fusemount.mount import mounts
from vmaccel.plugin.nfsexport import ExportServer, ExportSettings
from vmaccel.service import instant, tokens
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "vcenter"]
pytestmark = pytest.mark.vsphere

MiB = 1 << 20
HOST = "DC0_H0"


def task_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    """The task as each event of its stream showed it, until it ended."""
    got = api.call("GET", f"/restores/{task_id}/events", "read", stream=True)
    assert got.status_code == 200
    return [
        json.loads(line.removeprefix("data: "))
        for line in got.iter_lines(decode_unicode=True)
        if line.startswith("data: ")
    ]


def _finished(api: Api, answer: Any) -> dict[str, Any]:
    assert answer.status_code == 202, answer.text
    final = task_events(api, answer.json()["id"])[-1]
    assert final["state"] == "succeeded", final
    return final


def _backed_up(bed: VsphereBed, vm: VmInfo, repo: Path, tmp_path: Path) -> int:
    """The VM with one data disk, backed up over the file transport; the disk's key."""
    key = bed.control.attach_disk(vm.name, small_disk(tmp_path / "disk", seed=5)).key
    rc = main(["backup", "--repo", str(repo), "--vcenter", "bed", "--vm", vm.name,
               "--transport", "file", *_file_args(bed), "--json"])  # fmt: skip
    assert rc == 0
    return key


def _file_args(bed: VsphereBed) -> list[str]:
    return ["--datastore-path", f"LocalDS_0={bed.datastore_dirs['LocalDS_0']}"]


@contextlib.contextmanager
def _serving(ctx: Context, tmp_path: Path) -> Iterator[Api]:
    secrets = {s: tokens.create_token(ctx, s, s).secret for s in ("read", "restore", "admin")}
    with serve_process(ctx, tmp_path / "serve.log") as info:
        yield Api(info, ctx.require_repo(), ctx, secrets, tmp_path / "serve.log")


def test_a_vm_restored_as_new_then_rolled_back_equals_the_backup(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    tmp_path: Path,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    key = _backed_up(bed, vm, ctx.require_repo(), tmp_path)
    image = images_of(ctx.require_repo(), vm.name)[-1][f"disk-{key}"]
    paths = [{"datastore": "LocalDS_0", "path": str(bed.datastore_dirs["LocalDS_0"])}]
    where = {"backup": f"{vm.name}@latest", "vcenter": vcenter, "transport": "file",
             "datastore_paths": paths}  # fmt: skip
    with _serving(ctx, tmp_path) as api:
        # Replacing a VM changes one that exists: admin only, refused before a task exists.
        refused = api.call("POST", "/restores/vm", "restore", json={**where, "overwrite": True})
        assert refused.status_code == 403, refused.text
        new = f"{vm.name}-api"
        body = {**where, "name": new,
                "networks": [{"source": "DC0_DVPG0", "target": "VM Network"}]}  # fmt: skip
        final = _finished(api, api.call("POST", "/restores/vm", "restore", json=body))
        assert final["kind"] == "restore-vm" and final["result"]["action"] == "new"
        assert final["done"] == final["total"] > 0
        (disk,) = bed.control.vm_config(new).disks
        assert disk.path is not None
        assert_image_equals(ctx.require_repo(), image, disk.path)

        bed.control.guest_write(vm.name, key, 3 * MiB + 5, os.urandom(200_000))
        rollback = {**where, "confirm": False}
        unconfirmed = api.call("POST", "/restores/vm/in-place", "admin", json=rollback)
        assert unconfirmed.status_code == 400, unconfirmed.text
        assert "confirm" in unconfirmed.json()["error"]["message"]
        rollback["confirm"] = True
        assert (
            api.call("POST", "/restores/vm/in-place", "restore", json=rollback).status_code == 403
        )
        final = _finished(api, api.call("POST", "/restores/vm/in-place", "admin", json=rollback))
        assert final["kind"] == "rollback" and final["result"]["action"] == "in-place"
        assert [d["mode"] for d in final["result"]["disks"]] == ["changed"]
        written = sum(d["bytes_written"] + d["bytes_zeroed"] for d in final["result"]["disks"])
        assert 200_000 <= written < image.size  # what changed, not the whole disk
        (disk,) = [d for d in bed.control.vm_config(vm.name).disks if d.key == key]
        assert disk.path is not None
        assert_image_equals(ctx.require_repo(), image, disk.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.fuse
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                    reason="needs root and /dev/fuse")  # fmt: skip
def test_an_instant_session_through_the_api_is_listed_then_stopped_by_its_owner(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bed, vm = plugin_bed, fresh_vm()
    ports = {"VMACCEL_NFS_PORT": _free_port(), "VMACCEL_NFS_MOUNT_PORT": _free_port()}
    for name in ("VMACCEL_NFS_ADDRESS", "VMACCEL_NFS_CLIENT", "VMACCEL_NFS_BIND"):
        monkeypatch.setenv(name, "127.0.0.1")
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    pin_ports(bed, "127.0.0.1", *ports.values())
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir, env=dict(os.environ))
    _backed_up(bed, vm, ctx.require_repo(), tmp_path)
    name = f"{vm.name}-ir"
    try:
        with _serving(ctx, tmp_path) as api:
            body = {"backup": f"{vm.name}@latest", "vcenter": vcenter, "host": HOST,
                    "name": name, "power_on": True}  # fmt: skip
            final = _finished(api, api.call("POST", "/instant", "restore", json=body))
            session = final["result"]
            assert session["state"] == "running" and session["name"] == name
            listed = api.call("GET", "/instant", "read").json()
            assert [(s["name"], s["state"], s["mount_alive"]) for s in listed] == [
                (name, "running", True)
            ]
            assert bed.control.vm_config(name).power_state == "poweredOn"
            other = tokens.create_token(ctx, "restore", "another").secret
            refused = api.call("POST", f"/instant/{name}/stop", token=other)
            assert refused.status_code == 403, refused.text
            _finished(api, api.call("POST", f"/instant/{name}/stop", "restore"))
            assert api.call("GET", "/instant", "read").json() == []
        assert name not in {v.name for v in bed.control.vms()}
        assert not any(str(p).startswith(str(config_dir)) for p in mounts())
        assert not (config_dir / "instant" / name).exists()
    finally:
        if (instant.instant_root(ctx) / name / "session.json").exists():
            instant.stop(ctx, name)
        ExportServer(ExportSettings(config_dir / "instant" / "nfs")).stop()
        pin_ports(bed, "127.0.0.1", 0, 0)
