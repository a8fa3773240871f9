"""A policy made, tested, run and watched through the API against the vCenter bed: the
job's live events end in success and its restore point is listed; changes are recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.api.conftest import Api, serve_process
from tests.plugin.conftest import _fresh_vms, cli, config_dir, fresh_vm, new_repo, plugin_bed
from tests.plugin.conftest import vcenter as vcenter
from tests.plugin.test_vcenter_outcomes import small_disk
from vmaccel.service import tokens
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "vcenter"]
pytestmark = pytest.mark.vsphere


def _job_events(api: Api, job_id: int) -> list[tuple[str, dict[str, Any]]]:
    got = api.call("GET", f"/jobs/{job_id}/events", "read", stream=True)
    assert got.status_code == 200
    out, kind = [], ""
    for line in got.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((kind, json.loads(line.removeprefix("data: "))))
    return out


def test_a_policy_through_the_api(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    tmp_path: Path,
) -> None:
    vm = fresh_vm()
    plugin_bed.control.attach_disk(vm.name, small_disk(tmp_path / "disk", seed=7))
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    admin = tokens.create_token(ctx, "admin").secret
    with serve_process(ctx, tmp_path / "serve.log", tick=0.3) as info:
        api = Api(info, ctx.require_repo(), ctx, {"admin": admin, "read": admin})
        spec = {
            "name": "api-gold", "vcenter": vcenter, "vm_patterns": [vm.name],
            "schedule": "0 0 1 1 *", "quiesce": False,
            "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
        }  # fmt: skip
        made = api.call("POST", "/policies", "admin", json=spec)
        assert made.status_code == 201, made.text
        assert made.json()["version"] == 1
        tested = api.call("POST", "/policies/api-gold/test", "admin").json()
        assert [v["vm"] for v in tested["vms"]] == [vm.name]
        queued = api.call("POST", "/policies/api-gold/run", "admin")
        assert queued.status_code == 202
        events = _job_events(api, queued.json()["id"])
        kinds = {k for k, _ in events}
        assert {"job", "log"} <= kinds
        final = [e for k, e in events if k == "job"][-1]
        assert final["state"] in ("succeeded", "warning"), final  # a disk with no filesystem warns
        ((vm_job),) = final["vms"]
        assert vm_job["vm"] == vm.name and vm_job["backup_id"] is not None
        listed = api.call("GET", "/backups", "read", params={"vm": vm.name}).json()
        assert [b["id"] for b in listed["items"]] == [vm_job["backup_id"]]
        jobs = api.call("GET", "/jobs", "read", params={"policy": "api-gold"}).json()
        assert [j["id"] for j in jobs] == [final["id"]]

        edited = api.call("PATCH", "/policies/api-gold", "admin", json={"keep_last": 3})
        assert edited.json()["version"] == 2 and edited.json()["keep_last"] == 3
        bad = api.call("PATCH", "/policies/api-gold", "admin", json={"keep_lots": 3})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "UsageError"
        assert api.call("DELETE", "/policies/api-gold", "admin").status_code == 200
        assert api.call("GET", "/policies/api-gold", "read").status_code == 404
        history = api.call("GET", "/policies/api-gold/history", "read").json()
        assert [c["action"] for c in history] == ["add", "edit", "remove"]
        assert {c["who"] for c in history} == {"api token 1"}
