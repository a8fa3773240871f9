"""Helpers for the daemon's bed tests: `vmaccel serve` as a real process, waiting on job
rows, the bed's snapshots as vSphere shows them and as its snapshot log recorded them, and
detaching tags."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from com.vmware.vapi.std_client import DynamicID
from pyVmomi import vim

from testbed.vsphere import vimclient
from testbed.vsphere.bed import VsphereBed
from testbed.vsphere.snaplog import most_open_per_datastore, unpaired
from tests.plugin.conftest import Tagger
from tests.plugin.test_vcenter_outcomes import MiB, small_disk
from vmaccel.service.context import Context
from vmaccel.service.jobs import JobDetail, list_jobs, show_job

VMACCEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmaccel"
SNAPSHOT_PREFIX = "vmaccel-"
T = TypeVar("T")


def slow_disk(path: Path, seed: int) -> Path:
    """A raw disk whose backup lasts seconds over any transport, for tests that stop a run
    mid-disk: 256 MiB with random data in about a third of it, then 2 GiB of zeros that the
    http transport reads too (it has no sparse map) and the file transport's data extents
    leave out."""
    small_disk(path, 256 * MiB, seed=seed)
    os.truncate(path, 2304 * MiB)
    return path


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` (every 0.1 s) until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ctx_for(repo: Path) -> Context:
    return Context.from_env(os.environ, repo)


def finished_runs(repo: Path, policy: str) -> list[JobDetail]:
    """The ended runs of ``policy``, oldest first, with their VM jobs."""
    ctx = ctx_for(repo)
    jobs = [j for j in list_jobs(ctx, policy, limit=200) if j.finished is not None]
    return [show_job(ctx, j.id) for j in reversed(jobs)]


@contextlib.contextmanager
def serve(
    repo: Path, log: Path, *extra: str, listen: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`vmaccel serve` (scheduler only unless ``listen`` says where the REST API listens;
    fast tick, no gc/verify) until the block ends: then SIGTERM and wait (kill -9 if it does
    not stop in 60 s)."""
    api = ["--listen", listen] if listen else ["--no-api"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(VMACCEL), "serve", "--repo", str(repo), *api, "--tick", "0.3",
             "--stop-timeout", "20", "--gc-schedule", "off", "--verify-schedule", "off",
             *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def vmaccel_snapshots(bed: VsphereBed) -> dict[str, list[str]]:
    """VM name -> names of the vmaccel snapshots it has now (VMs without any left out)."""
    out: dict[str, list[str]] = {}
    with vimclient.connect(bed) as si:
        content = si.RetrieveContent()
        assert content.viewManager is not None
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            for vm in view.view:
                props = vimclient.props(si, vm, "name", "snapshot")
                names = _snapshot_names(props.get("snapshot"))
                mine = [n for n in names if n.startswith(SNAPSHOT_PREFIX)]
                if mine:
                    out[props["name"]] = mine
        finally:
            view.Destroy()
    return out


def snapshot_seq(bed: VsphereBed) -> int:
    """The last seq of the bed's snapshot log (0 if empty): take it before a run, then read
    what the run did with `assert_snapshot_limit(bed, since, ...)`."""
    return max((e.seq for e in bed.control.snapshot_events()), default=0)


def assert_snapshot_limit(
    bed: VsphereBed, since: int, vms: Iterable[str], limit: int
) -> dict[str, int]:
    """From the bed's snapshot log after seq ``since``: every VM of ``vms`` had a vmaccel
    snapshot created and removed, every one of their vmaccel snapshots created was removed and
    none removed was created before ``since``; no datastore ever held more than ``limit``
    vmaccel snapshots at once (of any VM). Returns the most open at once per datastore."""
    names = set(vms)
    log = bed.control.snapshot_events(since)
    mine = [e for e in log if e.snapshot.startswith(SNAPSHOT_PREFIX)]
    ours = [e for e in mine if e.vm in names]
    assert {e.vm for e in ours if e.event == "created"} == names, ours
    assert unpaired(ours) == [], unpaired(ours)
    most = most_open_per_datastore(mine)
    assert most and max(most.values()) <= limit, most
    return most


def _snapshot_names(info: Any) -> list[str]:
    names: list[str] = []
    stack = list(info.rootSnapshotList) if info is not None else []
    while stack:
        node = stack.pop()
        names.append(node.name)
        stack.extend(node.childSnapshotList or ())
    return names


def untag(tagger: Tagger, vm_moref: str, name: str) -> None:
    """Detach tag ``name`` (made by ``tagger.tag``) from the VM."""
    tag_id = tagger._tags[name]
    tagger._client.tagging.TagAssociation.detach(
        tag_id, DynamicID(type="VirtualMachine", id=vm_moref)
    )
