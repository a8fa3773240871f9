"""The web console of ``vmaccel serve``: server-rendered pages (Jinja2) with htmx for the
live parts, served by the API's server on the same port and TLS under ``/console``.

The console holds no logic of its own: every page reads through the service functions the
REST API's routes call, and every action it offers is one the API offers too (the same
service call, under the same role-to-scope rules). Its only state is the session cookie.
Assets (htmx, pinned, and one stylesheet) ship in ``static/``: no CDN, no web font.
See docs/console.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from vmaccel.console import actions, pages, vmpages
from vmaccel.console.web import (
    PREFIX,
    STATIC,
    Forbidden,
    Lockout,
    LoginRequired,
    error_page,
    forbidden_page,
    login_redirect,
)
from vmaccel.vocabulary.errors import VmaccelError, http_status

__all__ = ["PREFIX", "mount"]


def mount(app: FastAPI) -> None:
    """Add the console's pages, actions and static files to ``app`` (``/`` leads to it)."""
    app.state.console_lockout = Lockout()
    app.include_router(pages.router, prefix=PREFIX)
    app.include_router(actions.router, prefix=PREFIX)
    app.include_router(vmpages.router, prefix=PREFIX)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(LoginRequired, login_redirect)  # type: ignore[arg-type]
    app.add_exception_handler(Forbidden, forbidden_page)  # type: ignore[arg-type]
    _html_errors_below(
        app,
        HTTPException,
        lambda e: (cast(HTTPException, e).status_code, str(cast(HTTPException, e).detail)),
    )
    _html_errors_below(app, VmaccelError, lambda e: (http_status(cast(VmaccelError, e)), str(e)))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=303)


Handler = Callable[[Request, Exception], Response]


def _html_errors_below(
    app: FastAPI, kind: type[Exception], status_of: Callable[[Exception], tuple[int, str]]
) -> None:
    """Answer ``kind`` with an HTML error page on console paths (an unknown page, a backup
    that does not exist); elsewhere the handler registered before (the API's JSON, a plain
    function: Starlette runs it in its thread pool, as it runs this one) stays."""
    before = cast(Handler | None, app.exception_handlers.get(kind))

    def handle(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if before is not None and path != PREFIX and not path.startswith(PREFIX + "/"):
            return before(request, exc)
        status, message = status_of(exc)
        if status == 404 and isinstance(exc, HTTPException):
            message = f"There is no console page at {path}."
        return error_page(request, status, message)

    app.add_exception_handler(kind, handle)
