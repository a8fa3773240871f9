"""Pytest glue for the vSphere test bed (the bed itself lives in testbed/vsphere/bed.py).

`vsphere_bed` is one bed per test session. Tests share it, so each test that changes a VM takes
its own with `bed_vm`: a VM no other test of the session has used, with faults cleared after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed, start_bed


@pytest.fixture(scope="session")
def vsphere_bed() -> Iterator[VsphereBed]:
    """A running vcsim bed (built on first use, cached in ~/.cache/vmaccel)."""
    # 12 VMs per host and cluster: one fresh VM for each test that needs one.
    with start_bed(qcda_window=1 << 20, machines=12) as bed:
        yield bed


@pytest.fixture(scope="session")
def _unused_vms(vsphere_bed: VsphereBed) -> list[VmInfo]:
    return sorted(vsphere_bed.control.vms(), key=lambda vm: vm.name, reverse=True)


@pytest.fixture
def bed_vm(vsphere_bed: VsphereBed, _unused_vms: list[VmInfo]) -> Iterator[VmInfo]:
    """A VM of the bed that no other test has touched; fault injection is cleared afterwards."""
    if not _unused_vms:
        pytest.fail("the bed ran out of fresh VMs: raise `machines` in vsphere_bed")
    yield _unused_vms.pop()
    vsphere_bed.control.clear_faults()
