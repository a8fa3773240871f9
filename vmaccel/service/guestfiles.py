"""Guest files of a backup without mounting or restoring: list a directory, read a file.

Paths are ``<volume>/<path>`` as under a mount's ``files/`` and as ``restore file`` takes
them (``p1/etc/hosts``); the volume may be left out when exactly one volume holds the path,
and the empty path (or ``/``) lists the backup's volumes. ``..`` is refused and symlinks are
never followed: a path names exactly one entry of one guest filesystem (see
:mod:`vmaccel.fusemount.filerestore`). Every byte read is verified by the image reader.

Each call opens the repository (for reading) and parses the guest filesystems anew, so a
listing costs a few milliseconds per disk; an open file holds the repository open (gc waits
to delete packs) until it is closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmaccel.fusemount.filerestore import GuestSource, resolve_guest_path
from vmaccel.fusemount.guestfiles import GuestFile, GuestFiles
from vmaccel.fusemount.repoview import RepositoryView
from vmaccel.guestfs.filesystem import FileStat
from vmaccel.service.backups import resolve_backup
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import UsageError


@dataclass(frozen=True)
class GuestEntry:
    """One directory entry (an lstat). ``size`` in bytes; times in nanoseconds since the
    epoch (UTC) or None; ``mode`` the permission bits or None (FAT, NTFS); ``target`` a
    symlink's text, unresolved; ``error`` set when the entry's own metadata is unreadable."""

    name: str
    kind: str
    size: int
    mtime_ns: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    target: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, st: FileStat, name: str | None = None) -> GuestEntry:
        return cls(
            name if name is not None else st.name,
            st.kind,
            st.size,
            st.mtime_ns,
            st.mode,
            st.uid,
            st.gid,
            st.target,
            st.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "target": self.target,
            "error": self.error,
        }


@dataclass(frozen=True)
class GuestDir:
    """What ``path`` of backup ``backup_id`` is (``entry``) and, for a directory, its
    ``entries`` sorted by name (volumes for the empty path). ``path`` is normalised:
    ``<volume>/<path>`` without leading or trailing ``/``, ``""`` for the volumes."""

    backup_id: int
    vm: str
    path: str
    entry: GuestEntry
    entries: tuple[GuestEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "vm": self.vm,
            "path": self.path,
            "entry": self.entry.to_dict(),
            "entries": [e.to_dict() for e in self.entries],
        }


class OpenGuestFile:
    """A regular guest file open for reading: ``entry`` describes it (``size`` in bytes);
    :meth:`read_into` reads at an offset (thread safe). Valid until its context ends."""

    def __init__(self, entry: GuestEntry, stream: GuestFile) -> None:
        self.entry, self._stream = entry, stream

    @property
    def size(self) -> int:
        return self.entry.size

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from byte ``offset``; returns the bytes read (short only at the end)."""
        return self._stream.read_into(offset, buf)


def list_guest_dir(ctx: Context, backup: str, path: str = "") -> GuestDir:
    """The entry ``path`` names in backup ``backup`` (any reference) and, when it is a
    directory, its entries. Raises :class:`NotFound` for a path that names nothing,
    :class:`UsageError` for ``..`` or a path several volumes hold."""
    with guest_backup(ctx, backup) as (row_id, vm, guest, volumes):
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            root = GuestEntry("", "dir", 0)
            vols = tuple(GuestEntry(name, "dir", 0) for name in sorted(volumes))
            return GuestDir(row_id, vm, "", root, vols)
        src = resolve_guest_path(guest, volumes, path)
        st = guest.stat(src.image_id, src.volume, src.path)
        entry = GuestEntry.of(st, _base(src))
        entries: tuple[GuestEntry, ...] = ()
        if st.kind == "dir":
            found = guest.listdir(src.image_id, src.volume, src.path)
            entries = tuple(GuestEntry.of(c) for c in sorted(found, key=lambda c: c.name))
        return GuestDir(row_id, vm, _shown(src), entry, entries)


@contextlib.contextmanager
def open_guest_file(ctx: Context, backup: str, path: str) -> Iterator[OpenGuestFile]:
    """The regular file ``path`` of backup ``backup``, open for reading until the context
    ends. Raises :class:`UsageError` when ``path`` is no regular file (a directory, a
    symlink: never followed), :class:`NotFound` when it names nothing."""
    with guest_backup(ctx, backup) as (_, _vm, guest, volumes):
        src = resolve_guest_path(guest, volumes, path)
        st = guest.stat(src.image_id, src.volume, src.path)
        if st.kind != "file":
            raise UsageError(f"{_shown(src)} is a {st.kind}, not a regular file")
        stream = guest.open(src.image_id, src.volume, src.path)
        try:
            yield OpenGuestFile(GuestEntry.of(st, _base(src)), stream)
        finally:
            stream.close()


@contextlib.contextmanager
def guest_backup(
    ctx: Context, backup: str
) -> Iterator[tuple[int, str, GuestFiles, dict[str, tuple[int, str]]]]:
    """The backup's id and VM, its guest file trees and their volumes (shown name ->
    image id and guestfs name), open until the context ends."""
    with ctx.open() as r:
        row = resolve_backup(r, backup)
        view = RepositoryView(r)
        guest = GuestFiles(view.open_image)
        try:
            yield row.id, row.vm, guest, guest.volumes(view.disks(row.id))
        finally:
            guest.close()


def _base(src: GuestSource) -> str:
    return src.shown if src.path == "/" else src.path.rsplit("/", 1)[1]


def _shown(src: GuestSource) -> str:
    return src.shown + (src.path if src.path != "/" else "")
