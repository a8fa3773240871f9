"""Every endpoint, called with no token and with a token of each scope: 401 without one,
403 below the endpoint's scope, its success status from that scope on (table-driven). The
table must name every route the OpenAPI document lists."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import SCOPES, VM, Api
from vmaccel.service import tokens
from vmaccel.service.instant import instant_root
from vmaccel.service.instantstate import InstantSession, save

_names = itertools.count()
Made = tuple[str, dict[str, Any] | None]


@dataclass(frozen=True)
class Call:
    """``method`` on ``route`` (below /api/v1, as OpenAPI names it) needs ``scope`` (None:
    no token) and answers ``ok``. ``make`` gives the concrete path and JSON body, made
    afresh for every call where the endpoint uses up what it acts on."""

    method: str
    route: str
    scope: str | None
    make: Callable[[Api, Path], Made]
    ok: int = 200


def fixed(path: str, body: dict[str, Any] | None = None) -> Callable[[Api, Path], Made]:
    return lambda api, tmp: (path, body)


def _new_token(api: Api, tmp: Path) -> Made:
    made = api.call("POST", "/tokens", "admin", json={"scope": "read", "name": "throwaway"})
    assert made.status_code == 201, made.text
    return f"/tokens/{made.json()['id']}", None


def _file_restore(api: Api, tmp: Path) -> Made:
    to = tmp / f"files-{next(_names)}"
    return "/restores/files", {"backup": "1", "paths": ["p1/docs"], "to": str(to)}


def _disk_restore(api: Api, tmp: Path) -> Made:
    to = tmp / f"disk-{next(_names)}.raw"
    return "/restores/disk", {"backup": "1", "disk": "disk0", "to": str(to)}


def _task(suffix: str) -> Callable[[Api, Path], Made]:
    def make(api: Api, tmp: Path) -> Made:
        path, body = _file_restore(api, tmp)
        started = api.call("POST", path, "admin", json=body)
        assert started.status_code == 202, started.text
        return f"/restores/{started.json()['id']}{suffix}", None

    return make


def _vm_restore(api: Api, tmp: Path) -> Made:
    # No such vCenter: accepted (202), the task then fails; the scope check comes first.
    return "/restores/vm", {"backup": "1", "vcenter": "nowhere", "name": f"new{next(_names)}"}


def _rollback(api: Api, tmp: Path) -> Made:
    return "/restores/vm/in-place", {"backup": "1", "vcenter": "nowhere", "confirm": True}


def _instant_start(api: Api, tmp: Path) -> Made:
    return "/instant", {"backup": "1", "vcenter": "nowhere", "host": "h", "name": "ir"}


def _session(suffix: str, body: dict[str, Any] | None = None) -> Callable[[Api, Path], Made]:
    """A session record (nothing made yet) started by the restore token: its owner may stop
    it, as may admin; migrate needs admin (the task then fails: the session is not running)."""

    def make(api: Api, tmp: Path) -> Made:
        token = tokens.authenticate(api.ctx, api.tokens["restore"])
        assert token is not None
        name = f"s{next(_names)}"
        record = InstantSession(name, "0", str(api.repo), 1, VM, "nowhere", "h", 0.0,
                                state="failed", owner=f"api token {token.id}")  # fmt: skip
        save(instant_root(api.ctx), record)
        return f"/instant/{name}{suffix}", body

    return make


def _policy_body() -> dict[str, Any]:
    return {"name": f"p{next(_names)}", "vcenter": "nowhere", "tags": ["backup:gold"]}


def _policy(suffix: str, body: dict[str, Any] | None = None) -> Callable[[Api, Path], Made]:
    def make(api: Api, tmp: Path) -> Made:
        made = api.call("POST", "/policies", "admin", json=_policy_body())
        assert made.status_code == 201, made.text
        return f"/policies/{made.json()['name']}{suffix}", body

    return make


def _job(suffix: str) -> Callable[[Api, Path], Made]:
    def make(api: Api, tmp: Path) -> Made:
        path, _ = _policy("/run")(api, tmp)
        queued = api.call("POST", path, "admin")
        assert queued.status_code == 202, queued.text
        return f"/jobs/{queued.json()['id']}{suffix}", None

    return make


ENDPOINTS = [
    Call("GET", "/health", None, fixed("/health")),
    Call("GET", "/repository", "read", fixed("/repository")),
    Call("GET", "/vms", "read", fixed("/vms")),
    Call("GET", "/vms/{vm}/restore-points", "read", fixed(f"/vms/{VM}/restore-points")),
    Call("GET", "/backups", "read", fixed("/backups?limit=1")),
    Call("GET", "/backups/{ref}", "read", fixed("/backups/1")),
    Call("POST", "/backups/{ref}/ack", "admin", fixed(f"/backups/{VM}@latest/ack")),
    Call("GET", "/backups/{ref}/files", "read", fixed("/backups/1/files?path=p1")),
    Call("GET", "/backups/{ref}/download", "read", fixed("/backups/1/download?path=p1/README.txt")),
    Call("GET", "/backups/{ref}/zip", "read", fixed("/backups/1/zip?path=p1/docs")),
    Call("GET", "/vcenters", "read", fixed("/vcenters")),
    Call("GET", "/proxies", "read", fixed("/proxies")),
    # No such vCenter (the scope check comes first); tests/api/test_tags_zip.py asks the bed.
    Call("GET", "/vcenters/{name}/tags", "read", fixed("/vcenters/nowhere/tags"), 404),
    Call("GET", "/files/search", "read", fixed("/files/search?pattern=README.txt")),
    Call("GET", "/files/diff", "read", fixed("/files/diff?a=1&b=2")),
    Call("GET", "/files/history", "read", fixed("/files/history?path=/README.txt")),
    Call("POST", "/restores/files", "restore", _file_restore, 202),
    Call("POST", "/restores/vm", "restore", _vm_restore, 202),
    Call("POST", "/restores/vm/in-place", "admin", _rollback, 202),
    Call("GET", "/instant", "read", fixed("/instant")),
    Call("POST", "/instant", "restore", _instant_start, 202),
    Call("POST", "/instant/{name}/migrate", "admin", _session("/migrate", {"datastore": "d"}), 202),
    Call("POST", "/instant/{name}/stop", "restore", _session("/stop"), 202),
    Call("POST", "/restores/disk", "restore", _disk_restore, 202),
    Call("GET", "/restores", "read", fixed("/restores")),
    Call("GET", "/restores/{task_id}", "read", _task("")),
    Call("GET", "/restores/{task_id}/events", "read", _task("/events")),
    Call("POST", "/restores/{task_id}/cancel", "restore", _task("/cancel")),
    Call("GET", "/policies", "read", fixed("/policies")),
    Call("POST", "/policies", "admin", lambda api, tmp: ("/policies", _policy_body()), 201),
    Call("GET", "/policies/{name}", "read", _policy("")),
    Call("PATCH", "/policies/{name}", "admin", _policy("", {"keep_last": 3})),
    Call("DELETE", "/policies/{name}", "admin", _policy("")),
    Call("GET", "/policies/{name}/history", "read", _policy("/history")),
    # No such vCenter: the selection cannot be resolved (the scope check comes first).
    Call("POST", "/policies/{name}/test", "admin", _policy("/test"), 404),
    Call("POST", "/policies/{name}/run", "admin", _policy("/run"), 202),
    Call("GET", "/jobs", "read", fixed("/jobs")),
    Call("GET", "/jobs/{job_id}", "read", _job("")),
    Call("GET", "/jobs/{job_id}/log", "read", _job("/log")),
    Call("POST", "/jobs/{job_id}/cancel", "admin", _job("/cancel")),
    Call("GET", "/jobs/{job_id}/events", "read", _job("/events")),
    Call("GET", "/tokens", "admin", fixed("/tokens")),
    Call("POST", "/tokens", "admin", fixed("/tokens", {"scope": "read"}), 201),
    Call("DELETE", "/tokens/{token_id}", "admin", _new_token),
]


def _expected(need: str | None, have: str | None, ok: int) -> int:
    if need is None:
        return ok
    if have is None:
        return 401
    return ok if SCOPES.index(have) >= SCOPES.index(need) else 403


@pytest.mark.parametrize("call", ENDPOINTS, ids=lambda c: f"{c.method} {c.route}")
def test_every_endpoint_times_every_scope(api: Api, call: Call, tmp_path: Path) -> None:
    for have in (None, *SCOPES):
        path, body = call.make(api, tmp_path)
        streams = path.endswith("/events")  # a queued job's stream runs until it ends
        got = api.call(call.method, path, have, json=body, stream=streams)
        want = _expected(call.scope, have, call.ok)
        if streams and got.status_code == want == 200:
            first = next(got.iter_lines())
            got.close()
            assert first.startswith(b"event: "), first
            continue
        assert got.status_code == want, f"{call.method} {path} as {have}: {got.text[:300]}"
        if want >= 400:
            assert got.json()["error"]["status"] == want
        if want == 401:
            assert got.headers["WWW-Authenticate"] == "Bearer"


def test_the_table_names_every_route(api: Api) -> None:
    doc = api.call("GET", "/openapi.json", "read").json()
    routes = {
        f"{m.upper()} {p.removeprefix('/api/v1')}" for p, ops in doc["paths"].items() for m in ops
    }
    assert routes == {f"{c.method} {c.route}" for c in ENDPOINTS}
