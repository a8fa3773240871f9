"""File-level differences between restore points, from the file catalog alone (pure).

:func:`diff_listings` merges two listings streamed in
:func:`~vmaccel.catalog.index.records.path_order` (the order the index streams them in) and
returns what changed: memory grows with the number of changes, never with the unchanged
files. :func:`path_history` turns the versions of one path (one per catalogued volume and
backup) into the restore points where it changed.

What counts as a change:

- ``added`` / ``removed``: a path only in the newer / older listing;
- ``type_changed``: the same path holding another kind (a file became a symlink);
- ``modified``: same path and kind, but size, mtime, permission bits or inode differ (an inode
  change with nothing else is a file replaced by another one, e.g. an editor's atomic save);
- ``renamed``: a removed and an added entry with the same inode, kind, size and mtime (a
  rename moves a name, never data or times). Without inodes (FAT, listings stored before
  inodes were kept) a rename is a removal plus an addition; so is a file renamed and then
  written, since an inode number freed by a deletion and reused by a new file looks the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vmaccel.catalog.index.records import FileRecord, PathVersion, path_order

ChangeKind = Literal["added", "removed", "modified", "type_changed", "renamed"]
CHANGE_KINDS: tuple[ChangeKind, ...] = ("added", "removed", "modified", "type_changed", "renamed")
VolumeStatus = Literal["identical", "compared", "no_listing"]
HistoryKind = Literal["appeared", "changed", "disappeared"]


def entry_dict(entry: FileRecord | None) -> dict[str, Any] | None:
    """One listing entry as JSON (docs/json.md ``entry``); paths are given beside it."""
    if entry is None:
        return None
    return {
        "kind": entry.kind,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "inode": entry.inode,
        "mode": entry.mode,
    }


@dataclass(frozen=True)
class FileChange:
    """One change of one path. ``old``/``new`` are the entries before and after (None for an
    added/removed path); for ``renamed``, ``path`` is the new name and ``old.path`` the old.
    ``fields`` names what differs for ``modified`` (size, mtime, mode, inode) and a renamed
    entry's mode change."""

    change: ChangeKind
    path: str
    old: FileRecord | None
    new: FileRecord | None
    fields: tuple[str, ...] = ()

    @property
    def old_path(self) -> str | None:
        """The name before a rename (None for any other change)."""
        return self.old.path if self.change == "renamed" and self.old is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "path": self.path,
            "old_path": self.old_path,
            "fields": list(self.fields),
            "old": entry_dict(self.old),
            "new": entry_dict(self.new),
        }


@dataclass(frozen=True)
class VolumeDiff:
    """The changes of one volume (matched by disk and volume name) between two restore
    points. ``status``: ``identical`` (same listing: nothing changed, nothing compared),
    ``compared``, or ``no_listing`` (one side has no file catalog for it: ``reason`` says
    which and why; ``changes`` is then empty and means nothing)."""

    disk: str
    volume: str
    fstype: str | None
    status: VolumeStatus
    changes: tuple[FileChange, ...] = ()
    reason: str | None = None

    def counts(self) -> dict[str, int]:
        """Changes per kind, every kind present (0 when none)."""
        found = Counter(c.change for c in self.changes)
        return {kind: found[kind] for kind in CHANGE_KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "volume": self.volume,
            "fstype": self.fstype,
            "status": self.status,
            "reason": self.reason,
            "counts": self.counts(),
            "changes": [c.to_dict() for c in self.changes],
        }


def diff_listings(old: Iterable[FileRecord], new: Iterable[FileRecord]) -> list[FileChange]:
    """What changed from listing ``old`` to listing ``new``, in path order. Both must be in
    :func:`path_order` without duplicates (raises ValueError otherwise: a diff of unordered
    input would be wrong without any sign)."""
    changes: list[FileChange] = []
    removed: list[FileRecord] = []
    added: list[FileRecord] = []
    for a, b in _merge(old, new):
        if b is None and a is not None:
            removed.append(a)
        elif a is None and b is not None:
            added.append(b)
        elif a is not None and b is not None:
            change = compare(a, b)
            if change is not None:
                changes.append(change)
    changes += _pair_renames(removed, added)
    changes.sort(key=lambda c: path_order(c.path))
    return changes


def compare(a: FileRecord, b: FileRecord) -> FileChange | None:
    """The change of one path present in both listings (None when unchanged)."""
    if a.kind != b.kind:
        return FileChange("type_changed", b.path, a, b)
    fields = differing(a, b)
    return FileChange("modified", b.path, a, b, fields) if fields else None


def differing(a: FileRecord, b: FileRecord) -> tuple[str, ...]:
    """Which of size, mtime, mode and inode differ (mode and inode only where both sides
    know them)."""
    fields = []
    if a.size != b.size:
        fields.append("size")
    if a.mtime_ns != b.mtime_ns:
        fields.append("mtime")
    for name in ("mode", "inode"):
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and x != y:
            fields.append(name)
    return tuple(fields)


def _ordered(
    records: Iterable[FileRecord], side: str
) -> Iterator[tuple[tuple[int, bytes], FileRecord]]:
    last: tuple[int, bytes] | None = None
    for r in records:
        key = path_order(r.path)
        if last is not None and key <= last:
            raise ValueError(f"{side} listing is not in path order at {r.path!r}")
        last = key
        yield key, r


def _merge(
    old: Iterable[FileRecord], new: Iterable[FileRecord]
) -> Iterator[tuple[FileRecord | None, FileRecord | None]]:
    """Pairs of entries with the same path; None on the side that lacks it."""
    olds, news = _ordered(old, "older"), _ordered(new, "newer")
    a, b = next(olds, None), next(news, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            yield a[1] if a else None, None
            a = next(olds, None)
        elif a is None or b[0] < a[0]:
            yield None, b[1]
            b = next(news, None)
        else:
            yield a[1], b[1]
            a, b = next(olds, None), next(news, None)


def _identity(r: FileRecord) -> tuple[int | None, str, int, int | None]:
    return r.inode, r.kind, r.size, r.mtime_ns


def _pair_renames(removed: list[FileRecord], added: list[FileRecord]) -> list[FileChange]:
    """Renamed entries (a removed and an added one sharing an identity, paired in path
    order), then what stays removed or added."""
    gone: dict[tuple[int | None, str, int, int | None], list[FileRecord]] = {}
    for r in removed:
        if r.inode is not None:
            gone.setdefault(_identity(r), []).append(r)
    out: list[FileChange] = []
    paired: set[str] = set()
    for b in added:
        candidates = gone.get(_identity(b)) if b.inode is not None else None
        if candidates:
            a = candidates.pop(0)
            paired.add(a.path)
            mode = (
                ("mode",) if a.mode is not None and b.mode is not None and a.mode != b.mode else ()
            )
            out.append(FileChange("renamed", b.path, a, b, mode))
        else:
            out.append(FileChange("added", b.path, None, b))
    out += [FileChange("removed", r.path, r, None) for r in removed if r.path not in paired]
    return out


@dataclass(frozen=True)
class PathEvent:
    """A restore point where a path changed on one volume: ``change`` is ``appeared``,
    ``changed`` (``fields`` says what) or ``disappeared``; ``entry`` is the path's state in
    that restore point (None once it disappeared). ``started`` in UNIX seconds."""

    backup_id: int
    vm: str
    started: float
    disk: str
    volume: str
    change: HistoryKind
    entry: FileRecord | None
    fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "vm": self.vm,
            "started": self.started,
            "disk": self.disk,
            "volume": self.volume,
            "change": self.change,
            "fields": list(self.fields),
            "entry": entry_dict(self.entry),
        }


def path_history(versions: Sequence[PathVersion]) -> list[PathEvent]:
    """The restore points where the path changed, newest first. ``versions`` are grouped by
    VM, disk and volume, each group oldest backup first (as the index returns them); the
    first version holding the path in a group is where it ``appeared``."""
    events: list[PathEvent] = []
    previous: PathVersion | None = None
    for v in versions:
        same_volume = previous is not None and (previous.vm, previous.disk, previous.volume) == (
            v.vm,
            v.disk,
            v.volume,
        )
        before = previous.entry if same_volume and previous is not None else None
        event = _event(v, before)
        if event is not None:
            events.append(event)
        previous = v
    events.sort(key=lambda e: (e.started, e.backup_id, e.vm, e.disk, e.volume), reverse=True)
    return events


def _event(v: PathVersion, before: FileRecord | None) -> PathEvent | None:
    now = v.entry
    where = (v.backup_id, v.vm, v.started, v.disk, v.volume)
    if before is None:
        return None if now is None else PathEvent(*where, "appeared", now)
    if now is None:
        return PathEvent(*where, "disappeared", None)
    fields = ("kind",) if before.kind != now.kind else differing(before, now)
    return PathEvent(*where, "changed", now, fields) if fields else None
