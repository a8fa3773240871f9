"""Restoring guest files and directories from a backup into a directory, without FUSE.

``vmaccel restore file --repo R BACKUP GUEST_PATH... --to DIR`` reads the guest filesystems
of the backup's images through ``guestfs`` (the same trees the mount shows under ``files/``)
and writes what it finds below DIR. Guest metadata is hostile input (DESIGN.md invariant 8);
what follows is the contract, and every rule is a must:

Never outside DIR
    DIR is opened once; every directory below it is created with ``mkdirat`` and entered with
    ``openat(O_DIRECTORY | O_NOFOLLOW)``, and every file is created with
    ``openat(O_CREAT | O_EXCL | O_NOFOLLOW)`` relative to its parent's descriptor. No path
    string below DIR is ever resolved by the kernel, so a symlink found in DIR (restored,
    pre-existing, or planted by someone else during the restore) can never redirect a write:
    entering it fails (``ELOOP``) and that entry is reported as failed.
Names
    A guest name is used as stored (``FileStat.name_bytes`` where the filesystem stores bytes,
    so invalid UTF-8, newlines and so on survive); a name that is empty, ``.``, ``..`` or holds
    ``/`` or NUL is skipped with its reason.
Symlinks
    recreated as symlinks (never followed) only when their target is relative, has ``..``
    only as leading components, and those do not climb above DIR from the link's location.
    This is stricter than lexical normalisation on purpose: ``a/../..`` resolves through
    ``a``, which may itself be a symlink, so only a target that climbs real directories and then
    descends by names can be proven to stay inside. Everything else is skipped with its reason
    (absolute target, escaping target, ``..`` after a name, empty target).
Special files
    device nodes, fifos and sockets (and anything the parser reports as "other") are skipped.
Hard links
    every name of a multiply linked file is restored as a separate copy (counted in the
    report): linking would need the first copy's directory descriptor kept open.
Metadata
    permission bits (defaults 0644/0755 where the filesystem has none: FAT, NTFS), mtime and
    atime; uid/gid when running as root and the filesystem records them. setuid/setgid are
    dropped unless ownership was restored. A directory's metadata is applied after its
    contents, so restoring into it is not blocked by its own mode and its mtime holds.
Existing entries
    an existing file or symlink is left alone (skipped) unless ``overwrite``; then the new one
    is written under a temporary name in the same directory and renamed over it (rename
    replaces a symlink itself, never its target). Existing directories are merged into.
Contents
    read in 1 MiB pieces; 4 KiB blocks that are all zeros are not written (the file is
    extended with ``ftruncate``), so sparse files stay sparse. Every chunk is verified by the
    image reader: damage fails that file (its partial copy is removed) and the restore goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat as statmod
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmaccel.fusemount.guestfiles import GuestFile, GuestFiles
from vmaccel.fusemount.source import CatalogView
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileStat
from vmaccel.vocabulary.errors import NotFound, RestoreError, UsageError, VmaccelError
from vmaccel.vocabulary.units import format_bytes, format_duration

logger = logging.getLogger(__name__)

PIECE = 1 << 20
ZERO_BLOCK = 4096
MAX_DEPTH = 512
_ZEROS = bytes(PIECE)
_ZERO_BLOCK = bytes(ZERO_BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreIncomplete(RestoreError):
    """Some entries could not be restored (damage, unreadable metadata, target errors)."""


@dataclass(frozen=True)
class GuestSource:
    """One GUEST_PATH resolved: the image and guestfs volume holding it, the volume's name as
    the mount shows it under ``files/``, and the absolute guest path (``/`` for the root)."""

    image_id: int
    volume: str
    shown: str
    path: str

    @property
    def display(self) -> str:
        return self.shown + (self.path if self.path != "/" else "")


@dataclass(frozen=True)
class Entry:
    """A skipped or failed entry: its path below DIR (display form) and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class FileRestoreReport:
    """What a file restore did. ``bytes`` counts file contents restored (holes included)."""

    target: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    hardlink_copies: int
    skipped: tuple[Entry, ...]
    failed: tuple[Entry, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "files": self.files, "dirs": self.dirs,
            "symlinks": self.symlinks, "bytes": self.bytes,
            "hardlink_copies": self.hardlink_copies, "seconds": self.seconds,
            "skipped": [{"path": e.path, "reason": e.reason} for e in self.skipped],
            "failed": [{"path": e.path, "error": e.reason} for e in self.failed],
        }

    def summary(self) -> list[str]:
        lines = [
            f"restored {self.files} files ({format_bytes(self.bytes)}), {self.dirs} directories "
            f"and {self.symlinks} symlinks to {self.target} in {format_duration(self.seconds)}"
        ]
        if self.hardlink_copies:
            lines.append(f"{self.hardlink_copies} hard links restored as separate copies")
        lines += [f"skipped {e.path}: {e.reason}" for e in self.skipped]
        lines += [f"FAILED {e.path}: {e.reason}" for e in self.failed]
        return lines


@dataclass
class _Tally:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    hardlink_copies: int = 0
    skipped: list[Entry] = field(default_factory=list)
    failed: list[Entry] = field(default_factory=list)


def display(parts: tuple[bytes, ...]) -> str:
    """A path below DIR for reports: undecodable bytes as ``\\xNN``, control characters
    escaped, so one entry is always one printable line."""
    text = b"/".join(parts).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def unsafe_name(name: bytes) -> str | None:
    """Why ``name`` cannot be a directory entry below DIR, or None if it can."""
    if name in (b"", b".", b".."):
        return f"unsafe name {name!r}"
    if b"/" in name or b"\0" in name:
        return "name holds '/' or NUL"
    return None


def symlink_refusal(target: bytes, depth: int) -> str | None:
    """Why a symlink with ``target``, at ``depth`` directories below DIR, is not restored.

    None means it provably resolves inside DIR (see the module docstring for the rule).
    """
    if not target:
        return "empty symlink target"
    if target.startswith(b"/"):
        return "absolute symlink target"
    parts = [p for p in target.split(b"/") if p not in (b"", b".")]
    ups = 0
    while ups < len(parts) and parts[ups] == b"..":
        ups += 1
    if b".." in parts[ups:]:
        return "symlink target has '..' after a name"
    if ups > depth:
        return "symlink target escapes the restore directory"
    return None


def resolve_guest_path(
    guest: GuestFiles, volumes: dict[str, tuple[int, str]], text: str
) -> GuestSource:
    """GUEST_PATH -> where it lives. ``<volume>/<path>`` as under the mount's ``files/``; the
    volume may be left out when exactly one volume holds the path. A first component naming
    a volume always means that volume. ``..`` is refused; a leading ``/`` is ignored."""
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"guest path {text!r} must not contain '..'")
    if not parts:
        raise UsageError("a guest path must name a volume or a file, e.g. p1/etc/hosts")
    if parts[0] in volumes:
        image_id, volume = volumes[parts[0]]
        path = "/" + "/".join(parts[1:])
        try:
            guest.stat(image_id, volume, path)  # symlinks on the way are never followed
        except (GuestFsError, OSError) as exc:
            raise NotFound(f"guest path {text!r}: {exc}") from exc
        return GuestSource(image_id, volume, parts[0], path)
    path = "/" + "/".join(parts)
    holders = []
    for shown, (image_id, volume) in sorted(volumes.items()):
        try:
            guest.stat(image_id, volume, path)
        except (GuestFsError, OSError):
            continue
        holders.append(GuestSource(image_id, volume, shown, path))
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise NotFound(
            f"no volume holds {text!r} (volumes: {', '.join(sorted(volumes)) or 'none'}); "
            "name it as <volume>/<path>"
        )
    names = ", ".join(h.shown for h in holders)
    raise UsageError(f"{text!r} exists in several volumes ({names}); name it as <volume>/<path>")


def restore_guest_paths(
    view: CatalogView, backup_id: int, guest_paths: list[str], target: Path,
    overwrite: bool = False,
) -> FileRestoreReport:
    """Resolve ``guest_paths`` in backup ``backup_id`` and restore them below ``target``.

    Raises :class:`NotFound`/:class:`UsageError` for a guest path that names nothing or is
    ambiguous, before anything is written."""
    guest = GuestFiles(view.open_image)
    try:
        try:
            volumes = guest.volumes(view.disks(backup_id))
        except GuestFsError as exc:
            raise RestoreError(f"cannot read the backup's guest filesystems: {exc}") from exc
        sources = [resolve_guest_path(guest, volumes, p) for p in guest_paths]
        return restore_files(guest, sources, target, overwrite)
    finally:
        guest.close()


def restore_files(
    guest: GuestFiles, sources: list[GuestSource], target: Path, overwrite: bool = False
) -> FileRestoreReport:
    """Restore ``sources`` (each as ``DIR/<its base name>``) below ``target``; never raises for
    one entry's failure (see the report). Raises :class:`RestoreError` if DIR is unusable."""
    start = time.monotonic()
    try:
        target.mkdir(exist_ok=True)
        root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"cannot use {target} as the restore directory: {exc}") from exc
    tally = _Tally()
    try:
        worker = _Restorer(guest, tally, overwrite, chown=os.geteuid() == 0)
        for src in sources:
            try:
                st = guest.stat(src.image_id, src.volume, src.path)
            except (VmaccelError, GuestFsError, OSError) as exc:
                tally.failed.append(Entry(src.display, str(exc)))
                continue
            base = src.shown if src.path == "/" else src.path.rsplit("/", 1)[1]
            name = os.fsencode(base) if src.path == "/" else (st.name_bytes or os.fsencode(base))
            worker.restore(src, src.path, st, root, (name,))
    finally:
        os.close(root)
    return FileRestoreReport(
        str(target), tally.files, tally.dirs, tally.symlinks, tally.bytes,
        tally.hardlink_copies, tuple(tally.skipped), tuple(tally.failed),
        time.monotonic() - start,
    )


class _Restorer:
    """The walk: one guest entry at a time, relative to its parent directory's descriptor."""

    def __init__(self, guest: GuestFiles, tally: _Tally, overwrite: bool, chown: bool) -> None:
        self.guest, self.tally, self.overwrite, self.chown = guest, tally, overwrite, chown
        self._inodes: set[tuple[int, str, int]] = set()

    def restore(
        self, src: GuestSource, path: str, st: FileStat, parent: int, rel: tuple[bytes, ...]
    ) -> None:
        """Restore the guest entry ``path`` (stat ``st``) as ``rel[-1]`` in directory ``parent``;
        ``rel`` is its path below DIR."""
        where = display(rel)
        why = unsafe_name(rel[-1])
        if why is None and st.error is not None:
            self.tally.failed.append(Entry(where, st.error))
            return
        if why is None and st.kind == "other":
            why = "device node, fifo or socket: not restored"
        if why is None and len(rel) > MAX_DEPTH:
            why = f"deeper than {MAX_DEPTH} directories"
        if why is not None:
            self.tally.skipped.append(Entry(where, why))
            return
        try:
            if st.kind == "dir":
                self._dir(src, path, st, parent, rel)
            elif st.kind == "symlink":
                self._symlink(st, parent, rel)
            else:
                self._file(src, path, st, parent, rel)
        except (VmaccelError, GuestFsError, OSError) as exc:
            logger.warning("restore of %s failed: %s", where, exc)
            self.tally.failed.append(Entry(where, _message(exc)))

    def _dir(
        self, src: GuestSource, path: str, st: FileStat, parent: int, rel: tuple[bytes, ...]
    ) -> None:
        name = rel[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass  # merge into an existing directory; a symlink there fails the open below
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:  # ENOTDIR or ELOOP: a symlink (or a file) is in the way
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if statmod.S_ISLNK(old.st_mode):
                raise OSError(errno.ELOOP, "a symlink is in the way (never followed)") from exc
            raise
        try:
            children = self.guest.listdir(src.image_id, src.volume, path)
            for child in children:
                child_name = child.name_bytes or os.fsencode(child.name)
                child_path = path.rstrip("/") + "/" + child.name
                self.restore(src, child_path, child, fd, (*rel, child_name))
            self._metadata(fd, st, default_perm=0o755)
        finally:
            os.close(fd)
        self.tally.dirs += 1

    def _symlink(self, st: FileStat, parent: int, rel: tuple[bytes, ...]) -> None:
        target = os.fsencode(st.target or "")
        why = symlink_refusal(target, len(rel) - 1)
        if why is not None:
            self.tally.skipped.append(Entry(display(rel), f"{why} ({display((target,))})"))
            return
        name = rel[-1]
        if not self._may_replace(parent, name, rel):
            return
        temp = _temp_name()
        os.symlink(target, temp, dir_fd=parent)
        try:
            if self.chown and st.uid is not None and st.gid is not None:
                os.chown(temp, st.uid, st.gid, dir_fd=parent, follow_symlinks=False)
            if st.mtime_ns is not None:
                times = (st.atime_ns or st.mtime_ns, st.mtime_ns)
                os.utime(temp, ns=times, dir_fd=parent, follow_symlinks=False)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            _unlink_quietly(temp, parent)
            raise
        self.tally.symlinks += 1

    def _file(
        self, src: GuestSource, path: str, st: FileStat, parent: int, rel: tuple[bytes, ...]
    ) -> None:
        name = rel[-1]
        if not self._may_replace(parent, name, rel):
            return
        # Without overwrite the final name is created exclusively (nothing may appear there
        # meanwhile); with it, a temporary name is renamed over the old entry at the end.
        dest = _temp_name() if self.overwrite else name
        stream = self.guest.open(src.image_id, src.volume, path)
        try:
            fd = os.open(dest, _NEW_FILE, 0o600, dir_fd=parent)
        except BaseException:
            stream.close()
            raise
        try:
            _copy_sparse(stream, fd, st.size)
            self._metadata(fd, st, default_perm=0o644)
            os.close(fd)
            fd = -1
            if dest != name:
                os.rename(dest, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            _unlink_quietly(dest, parent)
            raise
        finally:
            stream.close()
        self.tally.files += 1
        self.tally.bytes += st.size
        if st.nlink > 1:
            key = (src.image_id, src.volume, st.inode)
            if key in self._inodes:
                self.tally.hardlink_copies += 1
            self._inodes.add(key)

    def _may_replace(self, parent: int, name: bytes, rel: tuple[bytes, ...]) -> bool:
        """False (and the entry skipped) when ``name`` exists in ``parent`` and may not be
        replaced; a directory is never replaced by a file or symlink."""
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if statmod.S_ISDIR(old.st_mode):
            self.tally.failed.append(Entry(display(rel), "a directory exists there"))
            return False
        if not self.overwrite:
            self.tally.skipped.append(Entry(display(rel), "exists (pass --overwrite to replace)"))
            return False
        return True

    def _metadata(self, fd: int, st: FileStat, default_perm: int) -> None:
        owned = False
        if self.chown and st.uid is not None and st.gid is not None:
            os.fchown(fd, st.uid, st.gid)
            owned = True
        perm = default_perm if st.mode is None else st.mode & 0o7777
        if not owned:
            perm &= ~(statmod.S_ISUID | statmod.S_ISGID)
        os.fchmod(fd, perm)
        if st.mtime_ns is not None:
            os.utime(fd, ns=(st.atime_ns or st.mtime_ns, st.mtime_ns))


def _copy_sparse(stream: GuestFile, fd: int, size: int) -> None:
    """Copy ``size`` bytes of ``stream`` to the empty file ``fd``, skipping all-zero 4 KiB
    blocks (holes), then set the length."""
    buf = bytearray(PIECE)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        want = min(PIECE, size - pos)
        got = stream.read_into(pos, view[:want])
        if got != want:
            raise RestoreError(f"the guest file ended early at byte {pos + got} of {size}")
        if buf[:want] != _ZEROS[:want]:
            _write_data_blocks(fd, buf, want, pos)
        pos += want
    os.ftruncate(fd, size)


def _write_data_blocks(fd: int, buf: bytearray, length: int, offset: int) -> None:
    """pwrite the runs of ``buf[:length]`` that are not all-zero 4 KiB blocks."""
    run_start = None
    for lo in range(0, length, ZERO_BLOCK):
        hi = min(lo + ZERO_BLOCK, length)
        zero = buf[lo:hi] == _ZERO_BLOCK[: hi - lo]
        if not zero and run_start is None:
            run_start = lo
        elif zero and run_start is not None:
            _pwrite_all(fd, memoryview(buf)[run_start:lo], offset + run_start)
            run_start = None
    if run_start is not None:
        _pwrite_all(fd, memoryview(buf)[run_start:length], offset + run_start)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _temp_name() -> bytes:
    # Not derived from the entry's name: a long guest name (255 bytes) leaves no room.
    return b".vmaccel-" + secrets.token_hex(6).encode() + b".partial"


def _unlink_quietly(name: bytes, parent: int) -> None:
    try:
        os.unlink(name, dir_fd=parent)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            logger.warning("could not remove partial %r: %s", name, exc)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not exc.filename:
        return exc.strerror
    return str(exc) or type(exc).__name__
