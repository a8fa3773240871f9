"""API tokens of the REST API: the ``api_token`` table (migration ``0006_api_tokens``).

A row never holds a token, only its SHA-256 ``digest`` (the token is 32 random bytes, so a
plain hash cannot be reversed or guessed; a slow password hash would add nothing), a short
``hint`` (the token's first characters, to tell tokens apart in a list) and its ``scope``.
Revoking sets ``revoked`` (UNIX seconds); rows are kept, so ids are never reused.

Tokens live in the index only: ``repo rebuild-index`` does not bring them back (the packs
and manifests never held them); issue new ones after a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index.connection import Connection

_SELECT = "SELECT id, name, scope, hint, created, revoked FROM api_token"


@dataclass(frozen=True)
class TokenRow:
    """One API token as indexed (never the token itself). Times are UNIX seconds (UTC);
    ``revoked`` is None while the token is valid."""

    id: int
    name: str
    scope: str
    hint: str
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "hint": self.hint,
            "created": self.created,
            "revoked": self.revoked,
        }


class SqliteTokens(Connection):
    def add_token(self, name: str, scope: str, digest: bytes, hint: str, created: float) -> int:
        """Record a token by its digest; returns its id. Must run inside :meth:`writing`."""
        return self._insert(
            "INSERT INTO api_token (name, scope, digest, hint, created) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (name, scope, digest, hint, created),
        )

    def token_by_digest(self, digest: bytes) -> TokenRow | None:
        """The token whose digest is ``digest`` (revoked or not), or None. An index that has
        not been migrated to hold tokens yet holds none."""
        if not self._has_tokens():
            return None
        rows = self._query(_SELECT + " WHERE digest = ?", (digest,))
        return TokenRow(*rows[0]) if rows else None

    def token(self, token_id: int) -> TokenRow | None:
        if not self._has_tokens():
            return None
        rows = self._query(_SELECT + " WHERE id = ?", (token_id,))
        return TokenRow(*rows[0]) if rows else None

    def tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, by id."""
        if not self._has_tokens():
            return []
        return [TokenRow(*r) for r in self._query(_SELECT + " ORDER BY id")]

    def revoke_token(self, token_id: int, when: float) -> None:
        """Mark the token revoked at ``when`` (a token revoked before keeps its first time).
        Must run inside :meth:`writing`."""
        self._execute(
            "UPDATE api_token SET revoked = ? WHERE id = ? AND revoked IS NULL", (when, token_id)
        )

    def _has_tokens(self) -> bool:
        rows = self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'api_token'"
        )
        return bool(rows)
