"""``/proxies``: the backup proxies (``vmaccel worker``) of the repository, as
``vmaccel proxies --json`` prints them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vmaccel.api.auth import Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import proxies

router = APIRouter(tags=["proxies"], route_class=DocRoute)


@router.get("/proxies", summary="Backup proxies: state, what they serve, VMs in flight")
def list_proxies(ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    """Every proxy that ran in the last 7 days: ``running``, ``stalled`` (silent longer than
    its ``stalled_after``) or ``stopped``, with the VMs it backs up now. On a repository whose
    catalog is not on PostgreSQL, ``catalog`` is ``sqlite`` and the list is empty."""
    return proxies.list_proxies(ctx).to_dict()
