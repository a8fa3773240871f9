"""Console users: add, change, remove, list; log in and out; sessions and CSRF; lockout.

Roles and what they map to in the API's scopes (:mod:`vmaccel.service.tokens`):
``admin`` -> ``admin``; ``operator`` (policies, jobs, restores) -> ``admin`` except token
management; ``restore`` (browse and restore only) -> ``restore``.

Passwords are hashed with scrypt (stdlib ``hashlib.scrypt``): N=2**15, r=8, p=1 (32 MiB and
about 0.1 s per hash on one core), a 16-byte random salt, a 32-byte key. The stored text is
``scrypt$N$r$p$<salt b64>$<key b64>``, so the parameters can be raised later without
breaking old hashes. Comparison is constant-time (``hmac.compare_digest``).

A session is 32 random bytes (URL-safe base64) in a cookie; the catalog keeps its SHA-256
only, with a CSRF token (another 32 random bytes) and the expiry (:data:`SESSION_SECONDS`
after login; no sliding renewal). Changing a password or removing a user ends its sessions.

Lockout (:class:`Lockout`): :data:`LOCK_AFTER` failed logins of one user name, or from one
client address, within :data:`LOCK_WINDOW` seconds lock further logins of that name or from
that address until the oldest of those failures is older than the window; while locked even
the right password is refused (guessing cannot go on beside real use). Counts live in memory
of the serving process.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from vmaccel.catalog.index.users import SessionRow, UserRow
from vmaccel.catalog.repository import Repository
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import NotFound, UsageError

ROLES = ("admin", "operator", "restore")
SCOPE_OF_ROLE = {"admin": "admin", "operator": "admin", "restore": "restore"}
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024  # bytes scrypt may use (N=2**15, r=8 needs 32 MiB)
SESSION_SECONDS = 8 * 3600.0
LOCK_AFTER, LOCK_WINDOW = 5, 300.0
MIN_PASSWORD = 8  # characters
_LEASE = "console-user"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")

__all__ = [
    "ROLES",
    "Lockout",
    "LoginRefused",
    "NewSession",
    "SessionRow",
    "UserRow",
    "add_user",
    "hash_password",
    "list_users",
    "login",
    "logout",
    "remove_user",
    "session",
    "set_password",
    "verify_password",
]


class LoginRefused(UsageError):
    """A login that failed: wrong name or password, or locked out (``retry_after`` > 0)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class NewSession:
    """A session just opened: its user, expiry, CSRF token and, this once, the cookie value."""

    user: UserRow
    expires: float
    csrf: str
    secret: str = field(repr=False)


def hash_password(password: str) -> str:
    """The stored text of ``password`` (see the module docstring for the format)."""
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (False for text that is no scrypt hash)."""
    try:
        algo, n, r, p, salt, key = stored.split("$")
        if algo != "scrypt":
            return False
        want = base64.b64decode(key)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = 32) -> bytes:
    data = password.encode("utf-8", "surrogateescape")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=dklen)


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise UsageError(
            f"bad user name {name!r}: 1 to 64 of lower-case letters, digits and . _ - @"
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password must have at least {MIN_PASSWORD} characters")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")


def add_user(ctx: Context, name: str, role: str, password: str) -> UserRow:
    """Add user ``name`` with ``role`` (one of :data:`ROLES`). Durable when it returns."""
    _check_name(name)
    _check_role(role)
    _check_password(password)
    pwhash = hash_password(password)
    with ctx.open(lease=_LEASE) as r:
        if r.index.user(name) is not None:
            raise UsageError(f"user {name!r} exists already: use `vmaccel user passwd`")
        with r.index.writing():
            r.index.add_user(name, role, pwhash, time.time())
        return _user(r, name)


def set_password(
    ctx: Context, name: str, password: str | None = None, role: str | None = None
) -> UserRow:
    """Change the password and/or role of ``name``; its sessions end. Raises
    :class:`NotFound` for an unknown user."""
    if role is not None:
        _check_role(role)
    if password is not None:
        _check_password(password)
    with ctx.open(lease=_LEASE) as r:
        user = _user(r, name)
        pwhash = hash_password(password) if password is not None else user.pwhash
        with r.index.writing():
            r.index.update_user(user.id, role or user.role, pwhash, time.time())
        return _user(r, name)


def remove_user(ctx: Context, name: str) -> UserRow:
    """Remove ``name`` and end its sessions. Raises :class:`NotFound` for an unknown user."""
    with ctx.open(lease=_LEASE) as r:
        user = _user(r, name)
        with r.index.writing():
            r.index.delete_user(user.id)
        return user


def list_users(ctx: Context) -> list[UserRow]:
    """Every user, by name."""
    with ctx.open() as r:
        return r.index.users()


def _user(r: Repository, name: str) -> UserRow:
    row = r.index.user(name)
    if row is None:
        raise NotFound(f"no console user {name!r} in {r.path}")
    return row


def digest(secret: str) -> bytes:
    """The SHA-256 the catalog keeps of a session cookie value."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def login(ctx: Context, name: str, password: str, client: str, lockout: Lockout) -> NewSession:
    """Open a session for ``name`` if ``password`` is right and neither the name nor
    ``client`` is locked out; else raise :class:`LoginRefused` (one message for an unknown
    name and a wrong password, so names cannot be probed)."""
    wait = max(lockout.retry_after("user:" + name), lockout.retry_after("addr:" + client))
    if wait > 0:
        raise LoginRefused(f"too many failed logins: locked for {int(wait) + 1} more seconds", wait)
    with ctx.open() as r:
        user = r.index.user(name)
    stored = user.pwhash if user is not None else _dummy()
    if not verify_password(password, stored) or user is None:
        lockout.fail("user:" + name)
        lockout.fail("addr:" + client)
        raise LoginRefused("wrong user name or password")
    secret, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
    with ctx.open(lease=_LEASE) as r, r.index.writing():
        r.index.add_session(digest(secret), user.id, csrf, now, now + SESSION_SECONDS)
    return NewSession(user, now + SESSION_SECONDS, csrf, secret)


@functools.cache
def _dummy() -> str:
    """A hash no password matches: unknown names take as long as known ones."""
    return hash_password(secrets.token_urlsafe(16))


def session(ctx: Context, secret: str) -> SessionRow | None:
    """The live (not expired) session whose cookie value is ``secret``, else None."""
    if not secret or len(secret) > 200:
        return None
    with ctx.open() as r:
        row = r.index.session(digest(secret))
    if row is None or row.expires <= time.time() or row.user.role not in ROLES:
        return None
    return row


def logout(ctx: Context, secret: str) -> None:
    """End the session whose cookie value is ``secret`` (nothing when there is none)."""
    with ctx.open(lease=_LEASE) as r, r.index.writing():
        r.index.delete_session(digest(secret))


class Lockout:
    """Failed logins per key (``user:NAME``, ``addr:ADDRESS``) in a sliding window.
    Thread safe; ``clock`` is monotonic seconds; at most ``max_keys`` keys are tracked (the
    oldest are forgotten beyond that)."""

    def __init__(
        self,
        limit: int = LOCK_AFTER,
        window: float = LOCK_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.limit, self.window, self._clock, self._max = limit, window, clock, max_keys
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0.0 when it may now)."""
        with self._lock:
            times = self._seen.get(key)
            if times is None:
                return 0.0
            horizon = self._clock() - self.window
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) < self.limit:
                return 0.0
            return max(times[-self.limit] + self.window - self._clock(), 0.0)

    def fail(self, key: str) -> None:
        """Record one failure of ``key`` now."""
        with self._lock:
            times = self._seen.get(key)
            if times is None:
                if len(self._seen) >= self._max:
                    self._seen.pop(next(iter(self._seen)))
                times = self._seen[key] = deque(maxlen=max(self.limit, 1))
            times.append(self._clock())
