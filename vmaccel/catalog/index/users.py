"""Console users and their sessions: the ``console_user`` and ``console_session`` tables
(migration ``0008_console_users``).

A user row holds a name, a role and a password hash (the text :mod:`vmaccel.service.users`
makes: algorithm, parameters, salt and hash; never a password). A session row holds only the
SHA-256 ``digest`` of the session's cookie value (32 random bytes: a plain hash cannot be
reversed), the CSRF token the session's pages carry, and its expiry (UNIX seconds). Removing
a user removes its sessions; changing a password ends them too (the service does both in one
transaction).

Like API tokens, users live in the index only: ``repo rebuild-index`` does not bring them
back; add them again after a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index.connection import Connection

_USER = "SELECT id, name, role, pwhash, created, changed FROM console_user"


@dataclass(frozen=True)
class UserRow:
    """One console user. Times are UNIX seconds (UTC); ``pwhash`` is the stored hash text."""

    id: int
    name: str
    role: str
    pwhash: str
    created: float
    changed: float

    def to_dict(self) -> dict[str, Any]:
        """The user without its hash (what lists and the JSON output show)."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created": self.created,
            "changed": self.changed,
        }


@dataclass(frozen=True)
class SessionRow:
    """One console session with its user. ``expires`` in UNIX seconds."""

    user: UserRow
    csrf: str
    created: float
    expires: float


class SqliteUsers(Connection):
    def add_user(self, name: str, role: str, pwhash: str, created: float) -> int:
        """Record a user; returns its id. Must run inside :meth:`writing`."""
        return self._insert(
            "INSERT INTO console_user (name, role, pwhash, created, changed)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (name, role, pwhash, created, created),
        )

    def user(self, name: str) -> UserRow | None:
        """The user called ``name``, or None (also on an index without users yet)."""
        if not self._has_users():
            return None
        rows = self._query(_USER + " WHERE name = ?", (name,))
        return UserRow(*rows[0]) if rows else None

    def users(self) -> list[UserRow]:
        """Every user, by name."""
        if not self._has_users():
            return []
        return [UserRow(*r) for r in self._query(_USER + " ORDER BY name")]

    def update_user(self, user_id: int, role: str, pwhash: str, changed: float) -> None:
        """Set role and hash, and end every session of the user. Inside :meth:`writing`."""
        self._execute(
            "UPDATE console_user SET role = ?, pwhash = ?, changed = ? WHERE id = ?",
            (role, pwhash, changed, user_id),
        )
        self._execute("DELETE FROM console_session WHERE user_id = ?", (user_id,))

    def delete_user(self, user_id: int) -> None:
        """Remove a user and its sessions. Must run inside :meth:`writing`."""
        self._execute("DELETE FROM console_session WHERE user_id = ?", (user_id,))
        self._execute("DELETE FROM console_user WHERE id = ?", (user_id,))

    def add_session(
        self, digest: bytes, user_id: int, csrf: str, created: float, expires: float
    ) -> None:
        """Record a session by its digest, dropping sessions expired at ``created``.
        Must run inside :meth:`writing`."""
        self._execute("DELETE FROM console_session WHERE expires <= ?", (created,))
        self._execute(
            "INSERT INTO console_session (digest, user_id, csrf, created, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            (digest, user_id, csrf, created, expires),
        )

    def session(self, digest: bytes) -> SessionRow | None:
        """The session whose digest is ``digest`` with its user (expired or not), or None."""
        if not self._has_users():
            return None
        rows = self._query(
            "SELECT u.id, u.name, u.role, u.pwhash, u.created, u.changed,"
            " s.csrf, s.created, s.expires FROM console_session s"
            " JOIN console_user u ON u.id = s.user_id WHERE s.digest = ?",
            (digest,),
        )
        if not rows:
            return None
        row = rows[0]
        return SessionRow(UserRow(*row[:6]), row[6], row[7], row[8])

    def delete_session(self, digest: bytes) -> None:
        """End one session (nothing when there is none). Must run inside :meth:`writing`."""
        self._execute("DELETE FROM console_session WHERE digest = ?", (digest,))

    def _has_users(self) -> bool:
        rows = self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'console_user'"
        )
        return bool(rows)
