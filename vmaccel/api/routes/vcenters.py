"""``/vcenters``: the registered vCenters (no secrets) and the tag categories and tags of
one, read live, for a policy's ``tags`` (the console's tag picker reads the same call)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vmaccel.api.auth import Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import vcenters

router = APIRouter(tags=["vcenters"], route_class=DocRoute)


@router.get("/vcenters", summary="The registered vCenters (no passwords)")
def list_vcenters(ctx: Ctx, _: ReadCaller) -> list[dict[str, Any]]:
    return [{"name": e.name, **vcenters.vcenter_dict(e)} for e in vcenters.list_vcenters(ctx)]


@router.get("/vcenters/{name}/tags", summary="Tag categories and tags of a vCenter (live)")
def list_tags(name: str, ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    """Every category (sorted by name) with its tags; each tag's ``spec`` is the
    ``CATEGORY:TAG`` a policy's ``tags`` takes. Asks vCenter on every call."""
    return vcenters.list_tags(ctx, name).to_dict()
