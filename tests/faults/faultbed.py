"""The vSphere bed as the vCenter fault suites use it: VMs with small random disks, vmaccel
pointed at the bed (directly or through a `TcpProxy`), and the checks every fault ends with.

After each injected fault: `vmaccel verify --full` is clean, no backup that did not complete
left an image row, no leftover vmaccel snapshot stays on the VM, and the latest complete backup
reads byte for byte as the VM's disks (the restore path: the repository's image reader).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.vsphere.bed import DiskInfo, VmInfo, VsphereBed
from tests.plugin.conftest import Cli, Result
from tests.plugin.imagecheck import assert_image_equals, images_of
from tests.plugin.vimcheck import snapshots
from vmaccel.catalog import Repository

KiB, MiB = 1 << 10, 1 << 20
PASSWORD_ENV = "VMACCEL_TEST_FAULT_VC_PASSWORD"


def small_disk(path: Path, size: int = 8 * MiB, seed: int = 0) -> Path:
    """A sparse raw disk with random 64 KiB blocks in about a third of it (no filesystem:
    read whole, so every byte is compared)."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for block in range(0, size, 64 * KiB):
            if rng.random() < 0.35:
                f.seek(block)
                f.write(rng.randbytes(64 * KiB))
    return path


@dataclass
class FaultVm:
    """A bed VM with one small disk attached."""

    bed: VsphereBed
    vm: VmInfo
    disk: DiskInfo

    @property
    def name(self) -> str:
        return self.vm.name

    def write(self, offset: int, seed: int, length: int = 20000) -> None:
        """A guest write (recorded by CBT)."""
        data = random.Random(seed).randbytes(length)
        self.bed.control.guest_write(self.vm.name, self.disk.key, offset, data)

    def disks(self) -> dict[str, DiskInfo]:
        (now,) = [v for v in self.bed.control.vms() if v.moref == self.vm.moref]
        return {f"disk-{d.key}": d for d in now.disks}

    def our_snapshots(self) -> list[str]:
        return [n for n in snapshots(self.bed, self.vm.moref) if n.startswith("vmaccel-")]


def register_vcenter(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, bed: VsphereBed, name: str, port: int | None = None
) -> str:
    """Add the bed as vCenter `name`, at its own port or at `port` (a proxy in front of it)."""
    monkeypatch.setenv(PASSWORD_ENV, bed.password)
    url = bed.url if port is None else f"https://127.0.0.1:{port}/sdk"
    result = cli(
        "vcenter", "add", name, "--url", url, "--user", bed.user,
        "--password-env", PASSWORD_ENV, "--thumbprint", bed.thumbprint_sha256,
    )  # fmt: skip
    assert result.rc == 0, result.err
    return name


def backup(cli: Cli, repo: Path, vcenter: str, vms: list[FaultVm], *extra: str) -> Result:
    args: list[str] = []
    for vm in vms:
        args += ["--vm", vm.name]
    return cli("backup", "--repo", repo, "--vcenter", vcenter, *args, "--json", *extra)


def ok_backup(cli: Cli, repo: Path, vcenter: str, vms: list[FaultVm], *extra: str) -> Any:
    """Back up `vms`; every one must succeed. Returns vm name -> its report."""
    result = backup(cli, repo, vcenter, vms, *extra)
    assert result.rc == 0, result.err + result.out
    return result.vms


@dataclass(frozen=True)
class Damage:
    """What one injected fault broke (the `Tally.add` flags)."""

    damaged: bool
    lost: bool
    wrong: bool


def check_after(
    cli: Cli, repo: Path, vms: list[FaultVm], committed: dict[str, int], compare: bool = True
) -> Damage:
    """The checks every fault ends with. `committed`: complete backups each VM must have now.
    `compare`: the latest backups must read as the disks do now (False after a failed run
    when the guest wrote since the last good one). Asserts nothing: the caller records the
    damage, then asserts there is none."""
    damaged = cli("verify", "--repo", repo, "--full").rc != 0
    lost = wrong = False
    with Repository.open(repo) as r:
        for row in r.backups(None, state=None):
            if row.state != "complete" and r.images(row):
                damaged = True  # a half-done backup left image rows
        for vm in vms:
            lost |= len(r.backups(vm.name)) != committed.get(vm.name, 0)
    for vm in vms:
        damaged |= bool(vm.our_snapshots())
        if compare and committed.get(vm.name):
            wrong |= not latest_equals_disks(repo, vm)
    return Damage(damaged, lost, wrong)


def latest_equals_disks(repo: Path, vm: FaultVm) -> bool:
    """Whether the VM's latest complete backup reads exactly as its disks now."""
    latest = images_of(repo, vm.name)[-1]
    disks = vm.disks()
    if sorted(latest) != sorted(disks):
        return False
    try:
        for name, disk in disks.items():
            assert_image_equals(repo, latest[name], disk.path)
    except AssertionError:
        return False
    return True
