"""Helpers for the daemon's bed tests: `vmaccel serve` as a real process, waiting on job
rows, the bed's snapshots as vSphere shows them, and detaching tags."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from com.vmware.vapi.std_client import DynamicID
from pyVmomi import vim

from testbed.vsphere import vimclient
from testbed.vsphere.bed import VsphereBed
from tests.plugin.conftest import Tagger
from vmaccel.service.context import Context
from vmaccel.service.jobs import JobDetail, list_jobs, show_job

VMACCEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmaccel"
SNAPSHOT_PREFIX = "vmaccel-"
T = TypeVar("T")


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


@contextlib.contextmanager
def most_open_snapshots(bed: VsphereBed) -> Iterator[list[int]]:
    """While the block runs, the most VMs vSphere showed with a vmaccel snapshot at once
    (polled), in the yielded one-item list."""
    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(vmaccel_snapshots(bed)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield most
    finally:
        stop.set()
        watcher.join()


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
