"""The web console of ``vmaccel serve``: server-rendered pages (Jinja2) with htmx for the
live parts, served by the API's server on the same port and TLS under ``/console``.

The console holds no logic of its own: every page reads through the service functions the
REST API's routes call, and every action it offers is one the API offers too (the same
service call, under the same role-to-scope rules). Its only state is the session cookie.
Assets (htmx, pinned, and one stylesheet) ship in ``static/``: no CDN, no web font.
See docs/console.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from vmaccel.console import actions, pages
from vmaccel.console.web import (
    PREFIX,
    STATIC,
    Forbidden,
    Lockout,
    LoginRequired,
    forbidden_page,
    login_redirect,
)

__all__ = ["PREFIX", "mount"]


def mount(app: FastAPI) -> None:
    """Add the console's pages, actions and static files to ``app`` (``/`` leads to it)."""
    app.state.console_lockout = Lockout()
    app.include_router(pages.router, prefix=PREFIX)
    app.include_router(actions.router, prefix=PREFIX)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(LoginRequired, login_redirect)  # type: ignore[arg-type]
    app.add_exception_handler(Forbidden, forbidden_page)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=303)
