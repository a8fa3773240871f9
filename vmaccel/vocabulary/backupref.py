"""Naming a backup: ``ID``, ``UUID``, ``VM@latest``, ``VM@-N``, ``VM@<time>`` or ``VM@<dir>``.

One grammar for every command that takes a backup, the REST API and the mount:

``42``                      the backup with that id
``3f2a...-...``             the backup with that uuid (36 characters, as ``backups show`` prints)
``VM@latest``               the newest complete backup of VM
``VM@-N``                   N backups before the newest (``VM@-1`` is the one before it)
``VM@2026-05-01T10:00:00Z`` a backup directory name as the mount shows it (``..._<id>`` for a
                            second backup within the same second), or any ISO 8601 date or time
                            (``2026-05-01``, ``2026-05-01T12:00``, ``...+02:00``; no zone means
                            UTC): the newest backup of VM started at or before it — "the state
                            before Tuesday".

The VM name is everything before the last ``@`` (VM names may contain ``@``). Parsing is pure;
:meth:`BackupRef.select` picks among one VM's backups, which the caller looked up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from vmaccel.vocabulary.errors import BackupNotFound, UsageError
from vmaccel.vocabulary.units import format_time

LATEST = "latest"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_BACK = re.compile(r"^-(\d{1,9})$")
FORMS = "ID, UUID, VM@latest, VM@-N or VM@<ISO time>"


class Stamped(Protocol):
    """What selection needs of a backup: its id and start time (UNIX seconds, UTC)."""

    @property
    def id(self) -> int: ...

    @property
    def started(self) -> float: ...


S = TypeVar("S", bound=Stamped)


@dataclass(frozen=True)
class BackupRef:
    """A parsed backup reference. Exactly one of ``id``, ``uuid`` or ``vm`` is set; with
    ``vm``, exactly one of ``latest``, ``back`` (N >= 1) or ``when`` (a time or directory
    name, as typed)."""

    text: str
    id: int | None = None
    uuid: str | None = None
    vm: str | None = None
    back: int | None = None
    when: str | None = None

    @classmethod
    def parse(cls, text: str) -> BackupRef:
        """The reference ``text`` spells; raises :class:`UsageError` naming the forms."""
        raw = text.strip()
        vm, sep, when = raw.rpartition("@")
        if not sep:
            if raw.isdigit():
                return cls(text, id=int(raw))
            if _UUID.match(raw):
                return cls(text, uuid=raw.lower())
            raise UsageError(f"{text!r} is not a backup reference ({FORMS})")
        if not vm or not when:
            raise UsageError(f"{text!r} is not a backup reference ({FORMS})")
        if when == LATEST:
            return cls(text, vm=vm, back=0)
        back = _BACK.match(when)
        if back:
            return cls(text, vm=vm, back=int(back.group(1)))
        return cls(text, vm=vm, when=when)

    def select(self, backups: Sequence[S]) -> S:
        """The backup this VM reference names among ``backups`` (one VM's, any order).

        Raises :class:`BackupNotFound` when none matches (also for an empty sequence) and
        :class:`UsageError` for text that is neither a directory name nor an ISO time.
        """
        if self.vm is None:
            raise UsageError(f"{self.text!r} names no VM; look it up by id or uuid")
        if not backups:
            raise BackupNotFound(f"VM {self.vm!r} has no complete backups")
        ordered = sorted(backups, key=lambda b: (b.started, b.id))
        if self.back is not None:
            if self.back >= len(ordered):
                raise BackupNotFound(
                    f"VM {self.vm!r} has {len(ordered)} backups; {self.text!r} asks for "
                    f"the one {self.back} before the newest"
                )
            return ordered[-1 - self.back]
        assert self.when is not None  # noqa: S101 - parse sets when whenever back is None
        named = dir_names(ordered)
        if self.when in named:
            return named[self.when]
        limit = parse_time(self.when).timestamp()
        before = [b for b in ordered if int(b.started) <= limit]
        if not before:
            raise BackupNotFound(
                f"no backup of {self.vm} at or before {self.when} "
                f"(the oldest started {dir_time(ordered[0].started)})"
            )
        return before[-1]


def dir_time(ts: float) -> str:
    """The name of a backup's directory in the mount: :func:`format_time` of its start."""
    return format_time(ts)


def dir_names(backups: Sequence[S]) -> dict[str, S]:
    """Directory names for one VM's backups, oldest first; stable as backups arrive (a second
    backup within the same second is ``<time>_<id>``)."""
    ordered = sorted(backups, key=lambda b: (b.started, b.id))
    names: dict[str, S] = {}
    for b in ordered:
        name = dir_time(b.started)
        names[name if name not in names else f"{name}_{b.id}"] = b
    return names


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r} is neither 'latest', -N, a backup directory name, nor an ISO 8601 time "
            "(for example 2026-05-01T10:00:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
