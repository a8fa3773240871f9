"""Instant recovery against the bed (issue 12, "Instant recovery"): a backed-up VM with two
disks runs from the backup over a real NFS export (nfs-ganesha over the writable FUSE mount),
mounted on the bed's host as a NAS datastore that the bed reads over NFS (libnfs, as ESXi
would). Proven: every disk read over NFS equals the backup image; a write over NFS reads back
and lands in the overlay only (the repository's files hash the same); migrate leaves the VM on
the target datastore with disks equal to the overlay view and ends the session; stop leaves no
export, mount, datastore or VM; kill -9 of the mount process, then stop, cleans everything.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from testbed.vsphere.bed import VmInfo, VsphereBed
from testbed.vsphere.nas import NfsClient, pin_ports
from testbed.vsphere.vimclient import connect, props
from tests.plugin.conftest import Cli
from tests.plugin.imagecheck import images_of
from tests.plugin.test_vcenter_outcomes import small_disk
from vmaccel.catalog import Repository
from vmaccel.fusemount.mount import mounts
from vmaccel.plugin.nfsexport import ExportServer, ExportSettings

pytestmark = [pytest.mark.vsphere, pytest.mark.fuse, pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse")]

MiB = 1 << 20
HOST = "DC0_H0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nfs_env(plugin_bed: VsphereBed, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The export served on loopback, own ports, to the bed (which mounts from 127.0.0.1 at
    those ports: other test runs may have their own NFS server registered with rpcbind)."""
    env = {"VMACCEL_NFS_ADDRESS": "127.0.0.1", "VMACCEL_NFS_CLIENT": "127.0.0.1",
           "VMACCEL_NFS_BIND": "127.0.0.1", "VMACCEL_NFS_PORT": str(_free_port()),
           "VMACCEL_NFS_MOUNT_PORT": str(_free_port())}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pin_ports(plugin_bed, "127.0.0.1", int(env["VMACCEL_NFS_PORT"]),
              int(env["VMACCEL_NFS_MOUNT_PORT"]))
    yield env
    pin_ports(plugin_bed, "127.0.0.1", 0, 0)


@pytest.fixture
def backed_up(plugin_bed: VsphereBed, fresh_vm: Callable[[], VmInfo], vcenter: str,
              new_repo: Callable[[str], Path], cli: Cli, tmp_path: Path) -> tuple[VmInfo, Path]:
    vm = fresh_vm()
    plugin_bed.control.attach_disk(vm.name, small_disk(tmp_path / "a.img", 8 * MiB, 1))
    plugin_bed.control.add_disk(vm.name, small_disk(tmp_path / "b.img", 6 * MiB, 2))
    repo = new_repo("repo")
    result = cli("backup", "--repo", repo, "--vcenter", vcenter, "--vm", vm.name, "--transport",
                 "file", "--datastore-path",
                 f"LocalDS_0={plugin_bed.datastore_dirs['LocalDS_0']}", "--json")
    assert result.rc == 0, result.err + result.out
    return vm, repo


@pytest.fixture
def sessions(cli: Cli, config_dir: Path) -> Iterator[list[str]]:
    """Names of started sessions; any still recorded is stopped after the test, and the NFS
    server is stopped whatever it still exports."""
    names: list[str] = []
    yield names
    for name in names:
        listed = {s["name"] for s in cli("instant", "list", "--json").json}
        if name in listed:
            cli("instant", "stop", name)
    ExportServer(ExportSettings(config_dir / "instant" / "nfs")).stop()


def _start(cli: Cli, repo: Path, vm: VmInfo, name: str, sessions: list[str]) -> dict[str, Any]:
    sessions.append(name)
    result = cli("instant", "start", f"{vm.name}@latest", "--repo", repo, "--vcenter", "bed",
                 "--host", HOST, "--name", name, "--power-on", "--json")
    assert result.rc == 0, result.err + result.out
    session: dict[str, Any] = result.json
    return session


def _image_bytes(repo: Path, vm: str) -> dict[str, bytes]:
    out = {}
    with Repository.open(repo) as r:
        for disk, image in images_of(repo, vm)[-1].items():
            with r.open_image(image) as reader:
                out[disk] = reader.read()
    return out


def _repo_hashes(repo: Path) -> dict[str, str]:
    """Every file of the repository by content; SQLite's shared-memory file of an open reader
    and an empty write-ahead log (a reader's, no writes) are not content."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*"))
            if p.is_file() and "lock" not in p.name and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def _datastores(bed: VsphereBed) -> set[str]:
    with connect(bed) as si:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.Datastore], True)
        try:
            return {props(si, ds, "name")["name"] for ds in view.view}
        finally:
            view.DestroyView()


def _nfs(session: dict[str, Any], env: dict[str, str]) -> NfsClient:
    return NfsClient(session["nfs_address"], session["export_path"],
                     int(env["VMACCEL_NFS_PORT"]), int(env["VMACCEL_NFS_MOUNT_PORT"]))


def _assert_gone(bed: VsphereBed, session: dict[str, Any], config_dir: Path,
                 env: dict[str, str]) -> None:
    assert session["datastore"] not in _datastores(bed)
    assert session["name"] not in {v.name for v in bed.control.vms()}
    assert not any(str(p).startswith(str(config_dir)) for p in mounts())
    assert not (config_dir / "instant" / session["name"] / "session.json").exists()
    exports = config_dir / "instant" / "nfs" / "exports.json"
    assert not exports.exists() or exports.read_text().strip() == "[]"
    with pytest.raises(OSError):
        _nfs(session, env).close()


def test_instant_vm_reads_the_backup_takes_writes_in_the_overlay_and_migrates(
    plugin_bed: VsphereBed, backed_up: tuple[VmInfo, Path], cli: Cli, nfs_env: dict[str, str],
    sessions: list[str], config_dir: Path,
) -> None:
    vm, repo = backed_up
    before = _repo_hashes(repo)
    images = _image_bytes(repo, vm.name)
    session = _start(cli, repo, vm, f"{vm.name}-ir", sessions)
    ds = session["datastore"]
    config = plugin_bed.control.vm_config(session["name"])
    assert config.power_state == "poweredOn"
    files = sorted(d.file_name for d in config.disks)
    assert len(files) == len(images) == 2 and all(f.startswith(f"[{ds}] ") for f in files)

    with _nfs(session, nfs_env) as nfs:
        for disk, data in images.items():
            flat = f"{disk}-flat.vmdk"
            assert nfs.read(flat) == data, disk  # what ESXi reads is the backup
        disk = sorted(images)[0]
        patch = os.urandom(100_000)
        nfs.write(f"{disk}-flat.vmdk", 3 * MiB + 123, patch)
        assert nfs.read(f"{disk}-flat.vmdk", 3 * MiB + 123, len(patch)) == patch
        # ESXi's NFS v3 locking: an exclusive lock file next to the disk, then removed.
        nfs.create(".lck-0000000000000004", b"lock owner\n")
        assert nfs.read(".lck-0000000000000004") == b"lock owner\n"
        with pytest.raises(OSError, match="creating"):
            nfs.create(f"{disk}.vmdk", b"")  # the backup's names stay the backup's
        nfs.unlink(".lck-0000000000000004")
        assert ".lck-0000000000000004" not in nfs.listdir()
    overlay = config_dir / "instant" / session["name"] / "overlay"
    assert sum(p.stat().st_blocks for p in overlay.glob("image-*.data")) > 0
    assert _repo_hashes(repo) == before  # guest writes never reach the repository
    listed = cli("instant", "list", "--json").json
    assert [s["state"] for s in listed] == ["running"] and listed[0]["overlay_bytes"] >= 100_000

    result = cli("instant", "migrate", session["name"], "--datastore", "LocalDS_0")
    assert result.rc == 0, result.err + result.out
    moved = plugin_bed.control.vm_config(session["name"])
    assert all(d.file_name.startswith("[LocalDS_0] ") for d in moved.disks), moved.disks
    expected = dict(images)
    data = bytearray(expected[disk])
    data[3 * MiB + 123 : 3 * MiB + 123 + len(patch)] = patch
    expected[disk] = bytes(data)
    by_name = {Path(d.file_name.split("] ", 1)[1]).stem: d.path for d in moved.disks}
    for name, want in expected.items():
        path = by_name[name]
        assert path is not None and path.read_bytes() == want, name
    assert moved.power_state == "poweredOn"
    _assert_gone_but_vm(plugin_bed, session, config_dir)
    assert _repo_hashes(repo) == before


def _assert_gone_but_vm(bed: VsphereBed, session: dict[str, Any], config_dir: Path) -> None:
    assert session["datastore"] not in _datastores(bed)
    assert not any(str(p).startswith(str(config_dir)) for p in mounts())
    assert not (config_dir / "instant" / session["name"]).exists()


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill-9-then-stop"])
def test_stop_removes_everything(
    plugin_bed: VsphereBed, backed_up: tuple[VmInfo, Path], cli: Cli, nfs_env: dict[str, str],
    sessions: list[str], config_dir: Path, kill: bool,
) -> None:
    vm, repo = backed_up
    session = _start(cli, repo, vm, f"{vm.name}-s{int(kill)}", sessions)
    if kill:
        os.kill(session["mount_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.waitpid(session["mount_pid"], os.WNOHANG)
            except ChildProcessError:
                break
            time.sleep(0.05)
    result = cli("instant", "stop", session["name"])
    assert result.rc == 0, result.err + result.out
    _assert_gone(plugin_bed, session, config_dir, nfs_env)
    assert cli("instant", "list", "--json").json == []


def test_a_start_that_fails_half_way_is_cleaned_by_stop(
    plugin_bed: VsphereBed, backed_up: tuple[VmInfo, Path], cli: Cli, nfs_env: dict[str, str],
    sessions: list[str], config_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The export is restricted to another client, so the host cannot mount it: the session
    is left failed with its mount and export up, and stop removes them."""
    vm, repo = backed_up
    monkeypatch.setenv("VMACCEL_NFS_CLIENT", "192.0.2.1")
    name = f"{vm.name}-bad"
    sessions.append(name)
    result = cli("instant", "start", f"{vm.name}@latest", "--repo", repo, "--vcenter", "bed",
                 "--host", HOST, "--name", name)
    assert result.rc == 11 and "could not mount" in result.err, result.err
    listed = cli("instant", "list", "--json").json
    assert [(s["name"], s["state"], s["mount_alive"]) for s in listed] == [(name, "failed", True)]
    session = listed[0]
    assert session["datastore"] not in _datastores(plugin_bed)
    result = cli("instant", "stop", name)
    assert result.rc == 0, result.err + result.out
    _assert_gone(plugin_bed, session, config_dir, nfs_env)
