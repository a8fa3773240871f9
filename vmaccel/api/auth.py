"""Who may call what: bearer tokens, their scopes, and the limit on failed attempts.

Every route but ``/health`` needs ``Authorization: Bearer <token>`` (a token made by
``vmaccel token create`` or ``POST /tokens``); the route's scope must be at most the token's
(``read`` < ``restore`` < ``admin``, :func:`vmaccel.service.tokens.allows`). A missing
token is 401; a wrong, revoked or malformed one is 401 and counts as a failed attempt of
the client address; a token of too small a scope is 403.

Console sessions: a request without ``Authorization`` may instead carry the web console's
session cookie (:data:`SESSION_COOKIE`, :mod:`vmaccel.service.users`); its user's role maps
to a scope (admin -> admin, operator -> admin without ``/tokens``, restore -> restore).
Every request with a method other than GET/HEAD/OPTIONS must then also carry the session's
CSRF token in :data:`CSRF_HEADER` (else 403). A cookie that names no live session is 401
and counts as a failed attempt, like a wrong token.

Failed attempts: after ``limit`` failures from one address within ``window`` seconds,
every request from it that needs a token is refused with 429 and ``Retry-After`` (seconds,
rounded up) until the oldest of those failures is older than the window — also with a
valid token, so guessing cannot go on beside real use. Counts live in memory (a restart
forgets them). Token values are never logged: only the address and the outcome are.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vmaccel.catalog.index.tokens import TokenRow
from vmaccel.service import tokens, users
from vmaccel.service.context import Context

logger = logging.getLogger(__name__)

MAX_CLIENTS = 10_000  # addresses tracked at once; the oldest are forgotten beyond that

bearer = HTTPBearer(auto_error=False, description="An API token: `vmaccel token create`.")


class FailedAttempts:
    """Failed authentications per client address in a sliding window. Thread safe.

    ``limit`` failures within ``window`` seconds block the address (see the module
    docstring); ``clock`` is monotonic seconds."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0.0 when it may now)."""
        with self._lock:
            times = self._recent(client)
            if times is None or len(times) < self.limit:
                return 0.0
            return max(times[-self.limit] + self.window - self._clock(), 0.0)

    def fail(self, client: str) -> None:
        """Record one failed attempt of ``client`` now."""
        with self._lock:
            times = self._recent(client)
            if times is None:
                if len(self._seen) >= MAX_CLIENTS:
                    self._seen.pop(next(iter(self._seen)))
                times = self._seen[client] = deque(maxlen=max(self.limit, 1))
            times.append(self._clock())

    def _recent(self, client: str) -> deque[float] | None:
        times = self._seen.get(client)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._seen[client]
            return None
        return times


SESSION_COOKIE = "vmaccel_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token (never its value) or the console user, and the client
    address. Exactly one of ``token`` and ``user`` is set."""

    token: TokenRow | None
    client: str
    user: str | None = None
    scope: str = "read"

    @property
    def who(self) -> str:
        """How change records name the caller: ``api token 3``, ``console user alice``."""
        if self.token is not None:
            return f"api token {self.token.id}"
        return f"console user {self.user}"


def api_context(request: Request) -> Context:
    """The service context the application was built with."""
    ctx: Context = request.app.state.ctx
    return ctx


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def require(scope: str) -> Callable[..., Caller]:
    """A dependency admitting requests whose token allows ``scope``."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        client = _client(request)
        attempts: FailedAttempts = request.app.state.attempts
        wait = attempts.retry_after(client)
        if wait > 0:
            raise HTTPException(
                429,
                "too many failed authentication attempts from this address; retry later",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if credentials is None and request.cookies.get(SESSION_COOKIE):
            caller = _session_caller(request, client)
        else:
            caller = _token_caller(request, credentials, client)
        if not tokens.allows(caller.scope, scope):
            raise HTTPException(
                403, f"this needs a scope of {scope!r}; {caller.who} has {caller.scope!r}"
            )
        return caller

    return check


def _token_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None, client: str
) -> Caller:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(401, "an API token is required (Authorization: Bearer ...)",
                            headers=challenge)  # fmt: skip
    token = tokens.authenticate(request.app.state.ctx, credentials.credentials)
    if token is None:
        request.app.state.attempts.fail(client)
        logger.warning("refused an unknown or revoked API token from %s", client)
        raise HTTPException(401, "the API token is unknown or revoked", headers=challenge)
    return Caller(token, client, scope=token.scope)


def _session_caller(request: Request, client: str) -> Caller:
    """The console user of the request's session cookie, its CSRF token checked."""
    found = users.session(request.app.state.ctx, request.cookies[SESSION_COOKIE])
    if found is None:
        request.app.state.attempts.fail(client)
        raise HTTPException(401, "the console session has ended: log in again")
    if request.method not in SAFE_METHODS and not hmac.compare_digest(
        request.headers.get(CSRF_HEADER, "").encode(), found.csrf.encode()
    ):
        raise HTTPException(403, f"a console request that changes something needs {CSRF_HEADER}")
    role = found.user.role
    if role == "operator" and request.url.path.startswith("/api/v1/tokens"):
        raise HTTPException(403, "API tokens are managed by admins only")
    return Caller(None, client, found.user.name, users.SCOPE_OF_ROLE[role])


ReadCaller = Annotated[Caller, Depends(require("read"))]
RestoreCaller = Annotated[Caller, Depends(require("restore"))]
AdminCaller = Annotated[Caller, Depends(require("admin"))]
Ctx = Annotated[Context, Depends(api_context)]
