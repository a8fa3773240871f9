"""Fixtures for plugin tests: the CLI run in-process, repositories, and a vSphere bed of our own.

The backup tests take a fresh VM each (they enable CBT, attach disks, leave snapshots behind on
purpose), more than the shared `vsphere_bed` holds besides the bed's own self-tests, so this
package starts its own bed (`plugin_bed`, <1 s to start) with enough VMs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from com.vmware.cis.tagging_client import CategoryModel
from com.vmware.vapi.std_client import DynamicID
from vmware.vapi.vsphere.client import create_vsphere_client

from testbed.vsphere.bed import VmInfo, VsphereBed, start_bed
from vmaccel.cli.app import main

VCENTER = "bed"
PASSWORD_ENV = "VMACCEL_TEST_VC_PASSWORD"


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing is written to ~/.config; no repository or passphrase leaks in from outside."""
    path = tmp_path / "config"
    monkeypatch.setenv("VMACCEL_CONFIG_DIR", str(path))
    monkeypatch.delenv("VMACCEL_REPO", raising=False)
    monkeypatch.delenv("VMACCEL_PASSPHRASE", raising=False)
    return path


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def vms(self) -> dict[str, Any]:
        """vm name -> its report, from `backup --json` output."""
        return {v["vm"]: v for v in self.json["vms"]}


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `vmaccel ARGS...` in-process; returns the exit code and what it printed."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


@pytest.fixture
def new_repo(tmp_path: Path, cli: Cli) -> Callable[[str], Path]:
    def make(name: str = "repo") -> Path:
        path = tmp_path / name
        result = cli("repo", "init", "--repo", path)
        assert result.rc == 0, result.err
        return path

    return make


# -- the vSphere bed -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def plugin_bed() -> Iterator[VsphereBed]:
    # An 8 MiB QueryChangedDiskAreas window: the 512 MiB guest disks need the startOffset loop.
    with start_bed(qcda_window=8 << 20, machines=18) as bed:
        yield bed


@pytest.fixture(scope="session")
def _fresh_vms(plugin_bed: VsphereBed) -> list[VmInfo]:
    return sorted(plugin_bed.control.vms(), key=lambda vm: vm.name, reverse=True)


@pytest.fixture
def fresh_vm(plugin_bed: VsphereBed, _fresh_vms: list[VmInfo]) -> Iterator[Callable[[], VmInfo]]:
    """Hands out VMs no other test has touched; faults are cleared after the test."""

    def take() -> VmInfo:
        if not _fresh_vms:
            pytest.fail("plugin_bed ran out of fresh VMs: raise `machines`")
        return _fresh_vms.pop()

    yield take
    plugin_bed.control.clear_faults()


@pytest.fixture
def vcenter(plugin_bed: VsphereBed, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bed added as vCenter "bed" (password from the environment, thumbprint pinned)."""
    monkeypatch.setenv(PASSWORD_ENV, plugin_bed.password)
    result = cli(
        "vcenter",
        "add",
        VCENTER,
        "--url",
        plugin_bed.url,
        "--user",
        plugin_bed.user,
        "--password-env",
        PASSWORD_ENV,
        "--thumbprint",
        plugin_bed.thumbprint_sha256,
    )
    assert result.rc == 0, result.err
    return VCENTER


class Tagger:
    """Attaches tags of category "backup" to VMs through the vSphere Automation SDK."""

    def __init__(self, bed: VsphereBed) -> None:
        self._client = create_vsphere_client(
            server=bed.host, username=bed.user, password=bed.password, session=bed.http_session()
        )
        tagging = self._client.tagging
        spec = tagging.Category.CreateSpec(
            name="backup",
            description="",
            cardinality=CategoryModel.Cardinality.MULTIPLE,
            associable_types=set(),
        )
        self._category = tagging.Category.create(spec)
        self._tags: dict[str, str] = {}

    def tag(self, vm_moref: str, name: str) -> str:
        """Attach tag `name` (created on first use) to the VM; returns "backup:NAME"."""
        tagging = self._client.tagging
        if name not in self._tags:
            spec = tagging.Tag.CreateSpec(name=name, description="", category_id=self._category)
            self._tags[name] = tagging.Tag.create(spec)
        tagging.TagAssociation.attach(
            self._tags[name], DynamicID(type="VirtualMachine", id=vm_moref)
        )
        return f"backup:{name}"


@pytest.fixture(scope="session")
def tagger(plugin_bed: VsphereBed) -> Tagger:
    return Tagger(plugin_bed)
