"""``/health`` (no token), ``/repository`` (statistics) and ``/tokens`` (admin)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from vmaccel.api.auth import AdminCaller, Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import repository, tokens

router = APIRouter(route_class=DocRoute)


def _version() -> str:
    try:
        return version("vmaccel")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", tags=["system"], summary="Liveness (no token needed)")
def health() -> dict[str, Any]:
    return {"status": "ok", "version": _version()}


@router.get("/repository", tags=["system"], summary="Repository statistics")
def repository_stats(ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    """Logical and stored bytes, dedup and compression ratios, chunk and pack counts."""
    return repository.stats(ctx).to_dict()


class NewTokenRequest(BaseModel):
    scope: str = Field(pattern="^(read|restore|admin)$")
    name: str | None = Field(default=None, max_length=200)


@router.get("/tokens", tags=["tokens"], summary="List API tokens (never their values)")
def list_tokens(ctx: Ctx, _: AdminCaller) -> list[dict[str, Any]]:
    return [t.to_dict() for t in tokens.list_tokens(ctx)]


@router.post("/tokens", tags=["tokens"], status_code=201, summary="Create a token (shown once)")
def create_token(body: NewTokenRequest, ctx: Ctx, _: AdminCaller) -> dict[str, Any]:
    return tokens.create_token(ctx, body.scope, body.name).to_dict()


@router.delete("/tokens/{token_id}", tags=["tokens"], summary="Revoke a token")
def revoke_token(token_id: int, ctx: Ctx, _: AdminCaller) -> dict[str, Any]:
    return tokens.revoke_token(ctx, token_id).to_dict()
