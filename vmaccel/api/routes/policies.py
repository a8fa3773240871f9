"""``/policies``: create, read, change and remove policies; their history; test a selection
live; run one now (queued for the daemon)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from vmaccel.api.auth import AdminCaller, Caller, Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import policies
from vmaccel.service.policyspec import Policy

router = APIRouter(tags=["policies"], route_class=DocRoute)

PolicyBody = Annotated[
    dict[str, Any],
    Body(
        description="A policy as GET /policies/{name} shows it: name, vcenter, tags, "
        "schedule, retention (keep_*), ... (unknown or invalid fields are refused).",
        examples=[{"name": "gold", "vcenter": "vc1", "tags": ["backup:gold"]}],
    ),
]


def _who(caller: Caller) -> str:
    return caller.who


@router.get("/policies", summary="Every policy")
def list_policies(ctx: Ctx, _: ReadCaller) -> list[dict[str, Any]]:
    return [p.to_dict() for p in policies.list_policies(ctx)]


@router.post("/policies", status_code=201, summary="Add a policy")
def add_policy(body: PolicyBody, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    return policies.add_policy(ctx, Policy.from_dict(body), who=_who(caller)).to_dict()


@router.get("/policies/{name}", summary="One policy")
def get_policy(name: str, ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    return policies.get_policy(ctx, name).to_dict()


@router.patch("/policies/{name}", summary="Change fields of a policy")
def edit_policy(name: str, body: PolicyBody, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    return policies.edit_policy(ctx, name, body, who=_who(caller)).to_dict()


@router.delete("/policies/{name}", summary="Remove a policy")
def remove_policy(name: str, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    return policies.remove_policy(ctx, name, who=_who(caller)).to_dict()


@router.get("/policies/{name}/history", summary="Every change of a policy")
def policy_history(name: str, ctx: Ctx, _: ReadCaller) -> list[dict[str, Any]]:
    return [c.to_dict() for c in policies.policy_history(ctx, name)]


@router.post("/policies/{name}/test", summary="Resolve the selection live: what a run would do")
def test_policy(name: str, ctx: Ctx, _: AdminCaller) -> dict[str, Any]:
    return policies.test_policy(ctx, name).to_dict()


@router.post("/policies/{name}/run", status_code=202, summary="Run a policy now")
def run_policy(name: str, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Queued for the daemon, which starts it at once; a run already queued or running is
    returned."""
    return policies.run_policy_now(ctx, name, who=_who(caller)).to_dict()
