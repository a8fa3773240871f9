"""SQLite implementation of :class:`~vmaccel.catalog.index.protocols.PolicyIndex`: the
``policy`` table (the current spec of each policy) and ``policy_change`` (its history).

A spec is an opaque JSON object here; the service layer gives it its fields
(:mod:`vmaccel.service.policyspec`). Every change (add, edit, remove) bumps the policy's
``version`` and appends one ``policy_change`` row in the same transaction, so the history
is complete: the spec of version N is the ``spec`` of the change row with that version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.index.connection import Connection
from vmaccel.vocabulary.errors import IndexCorrupt

ADD, EDIT, REMOVE = "add", "edit", "remove"


@dataclass(frozen=True)
class PolicyRow:
    """The current spec of one policy; ``version`` counts its changes (1 after the first add; a
    policy removed and added again continues the count);
    ``created`` and ``updated`` are UNIX seconds."""

    name: str
    spec: Mapping[str, Any]
    version: int
    created: float
    updated: float


@dataclass(frozen=True)
class PolicyChangeRow:
    """One change of a policy: ``action`` add, edit or remove; ``spec`` the spec it left
    (None for a removal); ``who`` says through what (cli, apply, api:<token name>)."""

    id: int
    policy: str
    version: int
    at: float
    action: str
    spec: Mapping[str, Any] | None
    who: str


def _load(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise IndexCorrupt(f"a policy spec in the catalog is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise IndexCorrupt("a policy spec in the catalog is no JSON object")
    return doc


def _row(r: Any) -> PolicyRow:
    spec = _load(r[1])
    assert spec is not None  # noqa: S101 - the column is NOT NULL
    return PolicyRow(r[0], spec, r[2], r[3], r[4])


class SqlitePolicies(Connection):
    def put_policy(self, name: str, spec: Mapping[str, Any], at: float, who: str) -> PolicyRow:
        """Add ``name`` (version 1) or replace its spec (version + 1), and record the change.
        Must run inside :meth:`writing`."""
        text = json.dumps(spec, sort_keys=True)
        old = self.policy(name)
        version = self._last_version(name) + 1
        if old is None:
            self._execute(
                "INSERT INTO policy (name, spec, version, created, updated) VALUES (?, ?, ?, ?, ?)",
                (name, text, version, at, at),
            )
        else:
            self._execute(
                "UPDATE policy SET spec = ?, version = ?, updated = ? WHERE name = ?",
                (text, version, at, name),
            )
        self._add_change(name, version, at, ADD if old is None else EDIT, text, who)
        return PolicyRow(name, spec, version, old.created if old else at, at)

    def delete_policy(self, name: str, at: float, who: str) -> PolicyRow | None:
        """Remove ``name`` (None when there is none) and record the removal. Must run
        inside :meth:`writing`."""
        old = self.policy(name)
        if old is None:
            return None
        self._execute("DELETE FROM policy WHERE name = ?", (name,))
        self._add_change(name, old.version + 1, at, REMOVE, None, who)
        return old

    def _last_version(self, name: str) -> int:
        """The highest version ``name`` ever had (a re-added policy continues its count)."""
        rows = self._query("SELECT MAX(version) FROM policy_change WHERE policy = ?", (name,))
        return int(rows[0][0] or 0)

    def _add_change(
        self, name: str, version: int, at: float, action: str, spec: str | None, who: str
    ) -> None:
        self._execute(
            "INSERT INTO policy_change (policy, version, at, action, spec, who)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, at, action, spec, who),
        )

    def policy(self, name: str) -> PolicyRow | None:
        rows = self._query(
            "SELECT name, spec, version, created, updated FROM policy WHERE name = ?", (name,)
        )
        return _row(rows[0]) if rows else None

    def policies(self) -> list[PolicyRow]:
        """Every policy, by name."""
        rows = self._query("SELECT name, spec, version, created, updated FROM policy ORDER BY name")
        return [_row(r) for r in rows]

    def policy_changes(self, name: str) -> list[PolicyChangeRow]:
        """Every change of ``name`` (also of earlier policies of that name), oldest first."""
        rows = self._query(
            "SELECT id, policy, version, at, action, spec, who FROM policy_change"
            " WHERE policy = ? ORDER BY id",
            (name,),
        )
        return [PolicyChangeRow(r[0], r[1], r[2], r[3], r[4], _load(r[5]), r[6]) for r in rows]
