"""``/restores/vm``: a backed-up VM back into vSphere — as a new VM, replacing one, one disk
into an existing VM, or rolled back in place — as restore tasks (:mod:`vmaccel.api.tasks`:
progress in bytes, ``/restores/{id}/events``, cancel).

The body mirrors :class:`~vmaccel.service.vmrestores.VmRestoreRequest`; the work is
``vmaccel restore vm``'s. Scopes: :func:`vmaccel.service.vmtasks.vm_restore_scope` (``restore``
for a new VM; ``admin`` for ``overwrite``, ``into_vm`` and the rollback). A rollback needs
``confirm: true`` (the CLI's ``--yes``): it powers the VM off and writes over its disks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from vmaccel.api.auth import AdminCaller, Caller, Ctx, RestoreCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.api.tasks import TaskRunner
from vmaccel.service import tokens, vmtasks
from vmaccel.service.context import Context
from vmaccel.service.vmrestores import VmRestoreRequest

router = APIRouter(tags=["restores"], route_class=DocRoute)


class NetworkMap(BaseModel):
    source: str = Field(min_length=1, description="Network name in the saved configuration.")
    target: str = Field(min_length=1, description="Network name to connect those NICs to.")


class DatastorePath(BaseModel):
    datastore: str = Field(min_length=1)
    path: str = Field(description="Absolute path where the vmaccel host mounts it (file).")


class _Writing(BaseModel):
    backup: str = Field(description="Any backup reference: id, UUID, VM@latest, ...")
    vcenter: str = Field(description="A vCenter added with `vmaccel vcenter add`.")
    disks: list[str] = Field(default=[], description="Disks to restore (empty: all).")
    power_on: bool = False
    transport: str = Field(default="auto", description="auto, nbd, http or file.")
    datastore_paths: list[DatastorePath] = []
    nbd_command: str | None = Field(
        default=None, description="NBD server command template (write mode)."
    )


class VmRestoreBody(_Writing):
    name: str | None = Field(default=None, description="The new VM's name (default: the old).")
    folder: str | None = None
    host: str | None = None
    cluster: str | None = None
    resource_pool: str | None = None
    datastore: str | None = None
    networks: list[NetworkMap] = []
    keep_identity: bool = False
    overwrite: bool = Field(default=False, description="Replace a VM of that name (admin).")
    into_vm: str | None = Field(default=None, description="Add the one disk to this VM (admin).")


class RollbackBody(_Writing):
    confirm: bool = Field(
        default=False, description="Must be true: the VM is powered off and its disks rewritten."
    )


def _paths(found: list[DatastorePath]) -> tuple[tuple[str, Path], ...]:
    return tuple((d.datastore, Path(d.path)) for d in found)


def _submit(request: Request, ctx: Context, req: VmRestoreRequest, caller: Caller,
            confirmed: bool = False) -> dict[str, Any]:  # fmt: skip
    need = vmtasks.vm_restore_scope(req)
    if not tokens.allows(caller.scope, need):
        raise HTTPException(
            403, f"this restore changes an existing VM: it needs a scope of {need!r}; "
            f"{caller.who} has {caller.scope!r}",
        )  # fmt: skip
    order = vmtasks.vm_restore_order(ctx, req, confirmed)
    runner: TaskRunner = request.app.state.tasks
    return runner.submit(order.kind, order.request, order.work).to_dict()


@router.post("/restores/vm", status_code=202, summary="Restore a VM into vSphere")
def restore_vm(
    body: VmRestoreBody, request: Request, ctx: Ctx, caller: RestoreCaller
) -> dict[str, Any]:
    """A new VM from the saved configuration (``overwrite``: replacing the VM of that name
    once the new one is complete), or one disk into ``into_vm``."""
    req = VmRestoreRequest(
        backup=body.backup, vcenter=body.vcenter, name=body.name, folder=body.folder,
        host=body.host, cluster=body.cluster, resource_pool=body.resource_pool,
        datastore=body.datastore, networks=tuple((n.source, n.target) for n in body.networks),
        disks=tuple(body.disks), power_on=body.power_on, keep_identity=body.keep_identity,
        overwrite=body.overwrite, into_vm=body.into_vm, transport=body.transport,
        datastore_paths=_paths(body.datastore_paths), nbd_command=body.nbd_command,
    )  # fmt: skip
    return _submit(request, ctx, req, caller)


@router.post("/restores/vm/in-place", status_code=202, summary="Roll a VM back (CBT)")
def roll_back(
    body: RollbackBody, request: Request, ctx: Ctx, caller: AdminCaller
) -> dict[str, Any]:
    """Write back only what changed since the backup into the VM it was taken from."""
    req = VmRestoreRequest(
        backup=body.backup, vcenter=body.vcenter, disks=tuple(body.disks),
        power_on=body.power_on, in_place=True, transport=body.transport,
        datastore_paths=_paths(body.datastore_paths), nbd_command=body.nbd_command,
    )  # fmt: skip
    return _submit(request, ctx, req, caller, body.confirm)
