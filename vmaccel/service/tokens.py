"""API tokens: create (shown once), list, revoke, and check the one a request carries.

A token is ``vmaccel_`` followed by 32 random bytes in URL-safe base64 (43 characters). The
catalog keeps only its SHA-256 digest: with 256 bits of randomness nothing can be guessed
from it, so a slow password hash (argon2, scrypt) would only slow every request down. The
token's first characters are kept as a ``hint`` so a list tells tokens apart.

Scopes are ordered: ``read`` (look at everything) < ``restore`` (also write restores to this
host) < ``admin`` (also change policies, run and cancel jobs, manage tokens); a token
allows every scope up to its own. No function here logs or returns a token value except
:func:`create_token`, once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from vmaccel.catalog.index.tokens import TokenRow
from vmaccel.catalog.repository import Repository
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import NotFound, UsageError

SCOPES = ("read", "restore", "admin")
PREFIX = "vmaccel_"
_HINT = len(PREFIX) + 6  # characters of a token kept to tell it apart
_LEASE = "api-token"  # what token changes say they are in the repository's lease list

__all__ = [
    "SCOPES",
    "NewToken",
    "TokenRow",
    "allows",
    "authenticate",
    "create_token",
    "list_tokens",
    "revoke_token",
]


@dataclass(frozen=True)
class NewToken:
    """A token just created: its row and, this once, its value (``secret``)."""

    token: TokenRow
    secret: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {**self.token.to_dict(), "token": self.secret}


def allows(have: str, need: str) -> bool:
    """Whether a token of scope ``have`` may do what needs scope ``need``."""
    return SCOPES.index(have) >= SCOPES.index(need)


def digest(secret: str) -> bytes:
    """The SHA-256 the catalog keeps of a token."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def create_token(ctx: Context, scope: str, name: str | None = None) -> NewToken:
    """Create a token of ``scope`` (one of :data:`SCOPES`) named ``name`` (default: the
    scope and the time). Durable when it returns; the value is in the result only."""
    if scope not in SCOPES:
        raise UsageError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")
    secret = PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    label = name if name else f"{scope} token of {time.strftime('%Y-%m-%d', time.gmtime(now))}"
    with ctx.open(lease=_LEASE) as r:
        with r.index.writing():
            token_id = r.index.add_token(label, scope, digest(secret), secret[:_HINT], now)
        return NewToken(_token(r, token_id), secret)


def list_tokens(ctx: Context) -> list[TokenRow]:
    """Every token (revoked ones too), oldest first; never their values."""
    with ctx.open() as r:
        return r.index.tokens()


def revoke_token(ctx: Context, token_id: int) -> TokenRow:
    """Revoke token ``token_id`` (revoking again keeps the first time); it is refused from
    the next request on. Raises :class:`NotFound` for an unknown id."""
    with ctx.open(lease=_LEASE) as r:
        _token(r, token_id)
        with r.index.writing():
            r.index.revoke_token(token_id, time.time())
        return _token(r, token_id)


def authenticate(ctx: Context, secret: str) -> TokenRow | None:
    """The valid (not revoked) token whose value is ``secret``, else None. The lookup is by
    digest: timing can tell at most how much of a digest matched, which says nothing about
    a token."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    with ctx.open() as r:
        row = r.index.token_by_digest(digest(secret))
    if row is None or row.revoked is not None or row.scope not in SCOPES:
        return None
    return row


def _token(r: Repository, token_id: int) -> TokenRow:
    row = r.index.token(token_id)
    if row is None:
        raise NotFound(f"no API token {token_id} in {r.path}")
    return row
