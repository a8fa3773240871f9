"""``/instant``: instant recovery — run a backed-up VM from the backup over NFS, list the
sessions, move one to production storage, stop one (``vmaccel instant``).

Start, migrate and stop are tasks of the restore task runner (202; watch them at
``/restores/{id}`` and ``/restores/{id}/events``): each can take a while (a mount, an NFS
export, a Storage vMotion). The list is the sessions' records on this host, as
``vmaccel instant list --json`` shows them. Scopes (see :mod:`vmaccel.service.vmtasks`):
list ``read``; start ``restore``; migrate ``admin``; stop ``restore`` for a session the
caller started, ``admin`` for any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from vmaccel.api.auth import AdminCaller, Ctx, ReadCaller, RestoreCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.api.tasks import TaskRunner
from vmaccel.service import instant, tokens, vmtasks

router = APIRouter(tags=["instant"], route_class=DocRoute)


class InstantStartBody(BaseModel):
    backup: str = Field(description="Any backup reference: id, UUID, VM@latest, ...")
    vcenter: str = Field(description="A vCenter added with `vmaccel vcenter add`.")
    host: str = Field(description="The ESXi host that mounts the export and runs the VM.")
    name: str | None = Field(default=None, description="The VM's name (default <vm>-instant).")
    datastore: str | None = Field(default=None, description="The VM's home (config, swap).")
    networks: dict[str, str] = Field(default={}, description="Source network -> target.")
    power_on: bool = False


class MigrateBody(BaseModel):
    datastore: str = Field(min_length=1, description="The production datastore.")


class StopBody(BaseModel):
    keep_overlay: bool = Field(default=False, description="Keep the guest writes.")


def _queue(request: Request, order: vmtasks.TaskOrder) -> dict[str, Any]:
    runner: TaskRunner = request.app.state.tasks
    return runner.submit(order.kind, order.request, order.work).to_dict()


@router.get("/instant", summary="Instant sessions")
def list_sessions(ctx: Ctx, _: ReadCaller) -> list[dict[str, Any]]:
    """Every session: state, VM, datastore, overlay bytes, whether its mount runs."""
    return [vmtasks.session_doc(v) for v in instant.list_sessions(ctx)]


@router.post("/instant", status_code=202, summary="Start an instant session")
def start(
    body: InstantStartBody, request: Request, ctx: Ctx, caller: RestoreCaller
) -> dict[str, Any]:
    req = instant.StartRequest(
        body.backup, body.vcenter, body.host, name=body.name, datastore=body.datastore,
        networks=dict(body.networks), power_on=body.power_on, owner=caller.who,
    )  # fmt: skip
    return _queue(request, vmtasks.instant_start_order(ctx, req))


@router.post("/instant/{name}/migrate", status_code=202, summary="Move to production storage")
def migrate(
    name: str, body: MigrateBody, request: Request, ctx: Ctx, _: AdminCaller
) -> dict[str, Any]:
    """Storage vMotion to ``datastore``; the session then ends (the VM stays)."""
    return _queue(request, vmtasks.instant_migrate_order(ctx, name, body.datastore))


@router.post("/instant/{name}/stop", status_code=202, summary="Stop an instant session")
def stop(
    name: str, request: Request, ctx: Ctx, caller: RestoreCaller, body: StopBody | None = None
) -> dict[str, Any]:
    """Power off and remove the VM, the datastore, the export, the mount (and overlay)."""
    found = vmtasks.session(ctx, name)
    if not vmtasks.may_end(found, caller.who, tokens.allows(caller.scope, "admin")):
        raise HTTPException(
            403, f"instant session {name} was started by {found.owner or 'the CLI'}: "
            f"stopping it needs a scope of 'admin'; {caller.who} has {caller.scope!r}",
        )  # fmt: skip
    keep = body.keep_overlay if body is not None else False
    return _queue(request, vmtasks.instant_stop_order(ctx, name, keep))
