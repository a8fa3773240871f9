"""The FastAPI application of ``/api/v1``: routers, error handlers, state, OpenAPI.

:func:`create_app` builds one application over one service
:class:`~vmaccel.service.context.Context`; it holds no logic of its own. Endpoints are plain
``def`` functions, so every service call (SQLite, image reads, guest filesystems) runs in
the server's thread pool, never on the event loop; only the event streams are ``async``
and they only sleep and look at in-memory state.

``app.state`` holds the context (``ctx``), the failed-attempt counter (``attempts``), the
restore tasks (``tasks``) and ``closing``, a ``threading.Event`` that ends every event
stream when the server shuts down.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from vmaccel import console
from vmaccel.api import errors
from vmaccel.api.auth import FailedAttempts, ReadCaller
from vmaccel.api.jsonbody import AsciiJSONResponse
from vmaccel.api.routes import (
    backups,
    files,
    instant,
    jobs,
    policies,
    proxies,
    restores,
    system,
    vcenters,
    vmrestores,
)
from vmaccel.api.tasks import TaskRunner
from vmaccel.service.context import Context

PREFIX = "/api/v1"


@dataclass(frozen=True)
class ApiSettings:
    """``failed_limit`` failed authentications per client address within ``failed_window``
    seconds before it gets 429; ``restore_workers`` restores run at once."""

    failed_limit: int = 10
    failed_window: float = 60.0
    restore_workers: int = 2


def create_app(ctx: Context, settings: ApiSettings | None = None) -> FastAPI:
    """The application serving ``/api/v1`` over ``ctx`` (its repository must be given)."""
    settings = settings or ApiSettings()
    ctx.require_repo()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.closing.set()
        app.state.tasks.close()

    app = FastAPI(
        title="vmaccel",
        summary="Accelerator backups for VMware vSphere: the REST API of `vmaccel serve`.",
        version="1",
        openapi_url=None,  # served below, behind a token like everything but /health
        docs_url=None,  # the bundled pages would load scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )
    app.state.ctx = ctx
    app.state.attempts = FailedAttempts(settings.failed_limit, settings.failed_window)
    app.state.tasks = TaskRunner(settings.restore_workers)
    app.state.closing = threading.Event()
    errors.install(app)
    for module in (
        system, backups, files, vmrestores, restores, instant, policies, jobs, vcenters, proxies,
    ):  # fmt: skip
        app.include_router(module.router, prefix=PREFIX)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    console.mount(app)  # the web console: /console, same port and TLS

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False, response_model=None)
    def openapi_document(_: ReadCaller) -> dict[str, Any]:
        return app.openapi()

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the one error body declared for every error status."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    doc.setdefault("components", {}).setdefault("schemas", {})["Error"] = errors.ERROR_SCHEMA
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, item in doc.get("paths", {}).items():
        if path == f"{PREFIX}/health":
            continue  # answers without a token, always 200
        for op in item.values():
            responses = op.setdefault("responses", {})
            for status, text in _ERRORS.items():
                responses.setdefault(status, {"description": text, **ref})
    app.openapi_schema = doc
    return doc


_ERRORS = {
    "400": "Bad request (a usage error).",
    "401": "No token, or an unknown or revoked one.",
    "403": "The token's scope is too small.",
    "404": "Not found.",
    "429": "Too many failed authentications from this address (see Retry-After).",
}
