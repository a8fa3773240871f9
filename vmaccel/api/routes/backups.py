"""``/vms`` and ``/backups``: VMs with their restore points, backups listed, shown, acked."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from vmaccel.api.auth import AdminCaller, Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import backups, restorepoints
from vmaccel.service.restorepoints import MAX_LIMIT, BackupQuery

router = APIRouter(tags=["backups"], route_class=DocRoute)

Offset = Annotated[int, Query(ge=0, description="Skip this many (0-based).")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="At most this many.")]
Order = Annotated[Literal["newest", "oldest"], Query(description="Newest first by default.")]


@router.get("/vms", summary="VMs that have restore points")
def list_vms(ctx: Ctx, _: ReadCaller) -> list[dict[str, Any]]:
    return [v.to_dict() for v in restorepoints.list_vms(ctx)]


@router.get("/vms/{vm}/restore-points", summary="The restore points of one VM, paged")
def vm_restore_points(
    vm: str,
    ctx: Ctx,
    _: ReadCaller,
    clean: bool = False,
    order: Order = "newest",
    offset: Offset = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    query = BackupQuery(
        vm=vm, clean=clean, newest_first=order == "newest", offset=offset, limit=limit
    )
    return restorepoints.page_backups(ctx, query).to_dict()


@router.get("/backups", summary="Backups, filtered and paged")
def list_backups(
    ctx: Ctx,
    _: ReadCaller,
    vm: str | None = None,
    clean: Annotated[
        bool, Query(description="Only restore points before the first suspicious (unacked) one.")
    ] = False,
    since: Annotated[float | None, Query(description="Started at or after (UNIX s).")] = None,
    until: Annotated[float | None, Query(description="Started before (UNIX s).")] = None,
    verdict: Annotated[str | None, Query(description="ok, suspicious, ... or none.")] = None,
    order: Order = "newest",
    offset: Offset = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    query = BackupQuery(vm, clean, since, until, verdict, order == "newest", offset, limit)
    return restorepoints.page_backups(ctx, query).to_dict()


@router.get("/backups/{ref}", summary="One backup with its images")
def show_backup(ref: str, ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    """``ref``: id, UUID, VM@latest, VM@-N or VM@<ISO time>."""
    return backups.show_backup(ctx, ref).to_dict()


@router.post("/backups/{ref}/ack", summary="Acknowledge a suspicious verdict (false alarm)")
def ack_backup(ref: str, ctx: Ctx, _: AdminCaller) -> dict[str, Any]:
    return backups.ack_backup(ctx, ref).to_dict()
