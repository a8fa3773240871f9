"""What an administrator sees of the backup proxies (`vmaccel proxies`, GET /proxies), on a
real PostgreSQL catalog: real `vmaccel worker` processes listed running with what they serve,
one killed with -9 shown stalled once its --stalled-after passed, one stopped with SIGTERM
shown stopped, a second live proxy with a taken --name refused; the VMs a proxy backs up now
read from the queue; a repository with its catalog in SQLite has none. No vCenter needed:
an idle proxy never talks to one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.catalog.pgserver import pg, postgres
from tests.daemon.proxyfleet import Proxies, proxies, repo
from tests.daemon.servebed import ctx_for, wait_for
from tests.plugin.conftest import Cli, cli, config_dir
from tests.plugin.jsonshape import validate
from vmaccel.catalog.catalogdb import catalog_url
from vmaccel.catalog.index.proxies import NewProxy
from vmaccel.service import vmqueue
from vmaccel.service.proxies import ProxyRecord, RunningVm, list_proxies

__all__ = ["cli", "config_dir", "pg", "postgres", "proxies", "repo"]


PROXY_LIVENESS = (2.0, 1.0)  # stalled after 2 s; stop within 1 s


def _listed(cli: Cli, repo: Path) -> dict[str, Any]:
    """`vmaccel proxies --json`: the proxies by name (the newest row of each name)."""
    result = cli("proxies", "--repo", repo, "--json")
    assert result.rc == 0, result.err
    doc = result.json
    validate("proxies", doc)
    assert doc["catalog"] == "postgresql" and doc["now"] > 0
    return {p["name"]: p for p in doc["proxies"]}


def _when(cli: Cli, repo: Path, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = _listed(cli, repo).get(name)
        ok = found and found["state"] == state and found["worker_id"] is not None
        return found if ok else None

    return wait_for(f"proxy {name} {state}", probe, timeout)


def test_running_stalled_stopped_and_a_taken_name(
    cli: Cli, repo: Path, proxies: Proxies, tmp_path: Path
) -> None:
    a = proxies.start("pa", "--datastores", "ds1, ds2", "--max-jobs", "3")
    b = proxies.start("pb")
    pa, pb = _when(cli, repo, "pa", "running"), _when(cli, repo, "pb", "running")
    assert (pa["host"], pa["pid"], pa["datastores"], pa["max_jobs"]) == (
        socket.gethostname(), a.pid, ["ds1", "ds2"], 3)  # fmt: skip
    assert (pb["pid"], pb["datastores"], pb["max_jobs"], pb["stopped"]) == (b.pid, [], 2, None)
    assert pa["vms"] == [] and pa["stalled_after"] == 2.0 and pa["silent"] <= 2.0
    assert pa["worker_id"] != pb["worker_id"]

    twin = proxies.start("pa")  # pa is alive: its name is taken
    assert twin.wait(60) == 2
    assert "a proxy named 'pa' already runs" in (tmp_path / "workers.log").read_text()

    os.kill(b.pid, signal.SIGKILL)
    b.wait()
    stalled = _when(cli, repo, "pb", "stalled", timeout=10)
    assert stalled["silent"] > 2.0 and stalled["stopped"] is None

    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0
    stopped = _listed(cli, repo)["pa"]
    assert stopped["state"] == "stopped" and stopped["stopped"] >= pa["last_seen"]

    again = proxies.start("pb")  # the killed proxy's name is free again
    assert _when(cli, repo, "pb", "running")["pid"] == again.pid
    human = cli("proxies", "--repo", repo)
    assert human.rc == 0
    assert {line.split()[1] for line in human.out.splitlines() if line.startswith("p")} == {
        "running", "stopped"}  # fmt: skip


def _claim_one(url: str, task: vmqueue.VmTask) -> int:
    """Queue ``task`` and claim it as a worker of our own (as a proxy would); its id."""
    app = vmqueue.make_app(url)
    with app.open():
        vmqueue.defer(app, task)

    async def claim() -> int:
        async with app.open_async():
            worker_id = int(await app.job_manager.register_worker())
            job = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
            assert job is not None and job.status == vmqueue.DOING
            return worker_id

    # in a thread of its own: a test before this one (the console's browser) may have left
    # an event loop running in this thread, where asyncio.run refuses to start
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, claim()).result()


def test_the_vms_a_proxy_backs_up_now_come_from_the_queue(repo: Path) -> None:
    url = catalog_url(repo)
    assert url is not None
    vmqueue.ensure_schema(url)
    task = vmqueue.VmTask(4, 17, 2, "nightly", "vc", "web-01", "vm-42", "ds1", False)
    worker_id = _claim_one(url, task)
    ctx = ctx_for(repo)
    with ProxyRecord(ctx, NewProxy("px", "h", 1, ("ds1",), 1, 30.0)) as record:
        record.touch(worker_id)
        (px,) = list_proxies(ctx).proxies
        assert (px.state, px.worker_id) == ("running", worker_id)
        assert px.vms == (RunningVm("web-01", "nightly", 4, 17, 2, "ds1"),)
        assert "  web-01: policy nightly, job 4, attempt 2 (ds1)" in px.lines()
        validate("proxies", list_proxies(ctx).to_dict())
    (px,) = list_proxies(ctx).proxies
    assert px.state == "stopped" and px.vms == ()


def test_a_repository_with_its_catalog_in_sqlite_has_no_proxies(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "local"
    assert cli("repo", "init", "--repo", path).rc == 0
    result = cli("proxies", "--repo", path, "--json")
    assert result.rc == 0 and result.json == {"catalog": "sqlite", "now": 0.0, "proxies": []}
    human = cli("proxies", "--repo", path)
    assert human.rc == 0 and "catalog is not on PostgreSQL" in human.out
