"""What every console page shares: templates, the session of a request, the CSRF check,
formatting filters and the security headers of a rendered page.

A page needs a live session (:func:`console_user`); without one it redirects to the login
page. A state-changing request (POST) must carry the session's CSRF token, as the form
field ``csrf`` or the ``X-CSRF-Token`` header htmx sends (every page sets it on ``<body>``).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from vmaccel.service import users
from vmaccel.service.context import Context
from vmaccel.service.users import Lockout
from vmaccel.vocabulary.units import format_bytes

__all__ = ["Lockout"]

PREFIX = "/console"
HERE = Path(__file__).parent
STATIC = HERE / "static"
SESSION_COOKIE = "vmaccel_session"  # the API's auth reads the same name
CSRF_HEADER = "X-CSRF-Token"
HTMX = "htmx-2.0.4.min.js"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
EDITORS = frozenset({"admin", "operator"})  # roles that may change policies and jobs

templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _ratio(value: float | None) -> str:
    return "-" if not value else f"{value:.2f}x"


templates.env.filters.update(
    bytes=lambda n: format_bytes(int(n or 0)), when=_when, ratio=_ratio, q=quote
)


class LoginRequired(Exception):
    """No live session: the handler redirects to the login page."""


@dataclass(frozen=True)
class ConsoleUser:
    """The user of a request's session, its role and the session's CSRF token."""

    name: str
    role: str
    csrf: str

    @property
    def can_edit(self) -> bool:
        """Whether the role may change policies and run or cancel jobs."""
        return self.role in EDITORS


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def console_user(request: Request) -> ConsoleUser:
    """The session's user; raises :class:`LoginRequired` without a live session."""
    found = users.session(context(request), request.cookies.get(SESSION_COOKIE, ""))
    if found is None:
        raise LoginRequired()
    return ConsoleUser(found.user.name, found.user.role, found.csrf)


def editor(request: Request) -> ConsoleUser:
    """The session's user if its role may change policies and jobs, else a 403 page."""
    user = console_user(request)
    if not user.can_edit:
        raise Forbidden(f"the role {user.role!r} may browse and restore only")
    return user


class Forbidden(Exception):
    """An action the user's role or the request's CSRF token does not allow: a 403 page."""


async def checked(request: Request) -> ConsoleUser:
    """The session's user after the CSRF token of a POST was checked (403 without it)."""
    user = console_user(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else ""
    if not hmac.compare_digest(sent.encode(), user.csrf.encode()):
        raise Forbidden("the form is stale or forged (CSRF token missing): reload the page")
    return user


User = Annotated[ConsoleUser, Depends(console_user)]
Editor = Annotated[ConsoleUser, Depends(editor)]
Checked = Annotated[ConsoleUser, Depends(checked)]
Ctx = Annotated[Context, Depends(context)]


def render(
    request: Request, name: str, user: ConsoleUser | None, status: int = 200, **values: Any
) -> HTMLResponse:
    """The template ``name`` with ``values``, the user and the security headers."""
    response = templates.TemplateResponse(
        request,
        name,
        {"user": user, "prefix": PREFIX, "htmx": HTMX, **values},
        status_code=status,
    )
    secure(response)
    return response


def secure(response: HTMLResponse | RedirectResponse) -> None:
    """Headers every console answer carries: CSP (this host only), no framing, no cache."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"


def login_redirect(request: Request, exc: LoginRequired) -> RedirectResponse:
    """Where a request without a session goes: the login page, then back."""
    target = request.url.path
    response = RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
    secure(response)
    return response


def forbidden_page(request: Request, exc: Forbidden) -> HTMLResponse:
    """The 403 page: what was refused and why."""
    return error_page(request, 403, str(exc))


ERROR_TITLES = {403: "Refused", 404: "Not found", 405: "Not allowed"}


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """An HTML error page with ``status``; the navigation shows when a session is live."""
    try:
        user: ConsoleUser | None = console_user(request)
    except LoginRequired:
        user = None
    title = ERROR_TITLES.get(status, "Error")
    return render(request, "error.html", user, status=status, message=message, title=title)
