"""A guest folder of a backup as a zip archive, produced as a stream of pieces.

The archive is written with :mod:`zipfile` into a sink that never seeks (local headers
carry data descriptors), and every piece written is handed on at once: memory holds one
1 MiB read buffer, the directories on the path being walked and the central directory
(about 100 bytes per entry), never a file or the folder. Members whose declared size
needs it (>= 4 GiB, and any archive past 4 GiB or 65535 entries) get ZIP64 records.

Guest names are hostile input (DESIGN.md invariant 8); the archive holds only what unpacks
inside the folder it is unpacked into:

- every member lies under one top directory, named after the folder (or the volume);
- a name that is empty, ``.``, ``..`` or holds ``/`` or NUL is skipped
  (:func:`vmaccel.fusemount.filerestore.unsafe_name`); ``\\`` becomes ``_`` (Windows tools
  read it as a separator); undecodable bytes become U+FFFD;
- symlinks are stored as symlinks only when their target provably stays inside the top
  directory (:func:`~vmaccel.fusemount.filerestore.symlink_refusal`), never followed;
- device nodes, fifos, sockets and entries with unreadable metadata are skipped;
- hard links are stored as separate copies; deeper than 512 directories is skipped.

What was skipped, and why, is listed in the archive's comment. A file that cannot be read
(damage found on the way) ends the stream with an error: the client gets a truncated
archive, never one with wrong bytes in it.
"""

from __future__ import annotations

import contextlib
import stat as statmod
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vmaccel.fusemount.filerestore import (
    MAX_DEPTH,
    GuestSource,
    resolve_guest_path,
    symlink_refusal,
    unsafe_name,
)
from vmaccel.fusemount.guestfiles import GuestFiles
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileStat
from vmaccel.service.context import Context
from vmaccel.service.guestfiles import guest_backup
from vmaccel.vocabulary.errors import GuestDataError, UsageError

PIECE = 1 << 20  # bytes read from the image per step
COMMENT_LIMIT = 65535  # bytes a zip comment may hold
_EPOCH_1980 = 315532800  # the earliest time a zip entry can carry (UNIX s)


@dataclass(frozen=True)
class Skipped:
    """An entry left out of the archive: its name inside the archive and why."""

    name: str
    reason: str


@dataclass
class GuestFolder:
    """A guest folder open for zipping until its context ends: ``top`` is the archive's top
    directory, ``filename`` the download's suggested name. :func:`zip_pieces` fills
    ``files``, ``bytes`` (file contents) and ``skipped`` as it goes."""

    backup_id: int
    vm: str
    top: str
    source: GuestSource
    guest: GuestFiles
    files: int = 0
    bytes: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"{self.vm}-{self.backup_id}-{self.top}.zip"


@contextlib.contextmanager
def open_guest_folder(ctx: Context, backup: str, path: str) -> Iterator[GuestFolder]:
    """The folder (or volume) ``path`` of backup ``backup`` (any reference), open until the
    context ends. Raises :class:`UsageError` when ``path`` is empty, holds ``..`` or names no
    directory, :class:`NotFound` when it names nothing."""
    if not [p for p in path.split("/") if p not in ("", ".")]:
        raise UsageError("name a folder or a volume to download as a zip, e.g. p1/etc")
    with guest_backup(ctx, backup) as (row_id, vm, guest, volumes):
        src = resolve_guest_path(guest, volumes, path)
        st = guest.stat(src.image_id, src.volume, src.path)
        if st.kind != "dir":
            raise UsageError(f"{src.display} is a {st.kind}, not a folder")
        base = src.shown if src.path == "/" else src.path.rsplit("/", 1)[1]
        name = zip_name(st.name_bytes if src.path != "/" and st.name_bytes else base.encode())
        yield GuestFolder(row_id, vm, name or "folder", src, guest)


def zip_name(raw: bytes) -> str | None:
    """A guest name as one component of a member's name, or None when it is unsafe."""
    if unsafe_name(raw) is not None:
        return None
    return raw.decode("utf-8", "replace").replace("\\", "_")


def zip_pieces(folder: GuestFolder, compress: bool = True) -> Iterator[bytes]:
    """The archive of ``folder``, piece by piece (each at most about 1 MiB). ``compress``:
    files are deflated (zlib's default level), else stored; folders and symlinks are
    stored. Raises :class:`GuestDataError` when a file cannot be read to its end."""
    sink = _Sink()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(sink, "w", method, allowZip64=True) as zf:
        for rel, path, st in _walk(folder):
            if st.kind == "dir":
                zf.writestr(_info(rel + "/", st, statmod.S_IFDIR, 0o755), b"")
            elif st.kind == "symlink":
                target = (st.target or "").encode()
                zf.writestr(_info(rel, st, statmod.S_IFLNK, 0o777), target)
            else:
                yield from _file(zf, sink, folder, rel, path, st)
            yield sink.take()
        zf.comment = _comment(folder)
    yield sink.take()


class _Sink:
    """A write-only, non-seekable file that keeps what was written until taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _walk(folder: GuestFolder) -> Iterator[tuple[str, str, FileStat]]:
    """(member name, guest path, stat) of the top directory and everything below it that may go into
    the archive, depth first, by name; what may not is added to ``folder.skipped``."""
    src, guest = folder.source, folder.guest
    top = guest.stat(src.image_id, src.volume, src.path)
    yield folder.top, src.path, top
    stack = [(src.path, folder.top, 1)]
    while stack:
        path, rel, depth = stack.pop()
        try:
            children = guest.listdir(src.image_id, src.volume, path)
        except (GuestFsError, OSError) as exc:
            folder.skipped.append(Skipped(rel + "/", f"cannot list: {exc}"))
            continue
        below: list[tuple[str, str, int]] = []
        for child in sorted(children, key=lambda c: c.name):
            name = zip_name(child.name_bytes or child.name.encode("utf-8", "surrogateescape"))
            where = f"{rel}/{name}" if name is not None else f"{rel}/{child.name!r}"
            why = _refusal(child, name, depth)
            if why is not None:
                folder.skipped.append(Skipped(where, why))
                continue
            child_path = path.rstrip("/") + "/" + child.name
            yield where, child_path, child
            if child.kind == "dir":
                below.append((child_path, where, depth + 1))
        stack.extend(reversed(below))


def _refusal(st: FileStat, name: str | None, depth: int) -> str | None:
    """Why the entry ``st`` (``depth`` directories below the top) stays out, or None."""
    if name is None:
        return unsafe_name(st.name_bytes or st.name.encode("utf-8", "surrogateescape"))
    if st.error is not None:
        return st.error
    if st.kind == "other":
        return "device node, fifo or socket"
    if st.kind == "dir" and depth >= MAX_DEPTH:
        return f"deeper than {MAX_DEPTH} directories"
    if st.kind == "symlink":
        return symlink_refusal((st.target or "").encode(), depth)
    return None


def _file(
    zf: zipfile.ZipFile, sink: _Sink, folder: GuestFolder, rel: str, path: str, st: FileStat
) -> Iterator[bytes]:
    """Write the regular file ``st`` (guest ``path``) as member ``rel``, yielding what was
    written so far."""
    src = folder.source
    info = _info(rel, st, statmod.S_IFREG, 0o644)
    info.file_size = st.size  # decides ZIP64 before the local header is written
    info.compress_type = zf.compression
    stream = folder.guest.open(src.image_id, src.volume, path)
    try:
        view = memoryview(bytearray(PIECE))
        with zf.open(info, "w") as out:
            pos = 0
            while pos < st.size:
                want = min(PIECE, st.size - pos)
                got = stream.read_into(pos, view[:want])
                if got != want:
                    raise GuestDataError(
                        f"{rel}: the guest file ended early at byte {pos + got} of {st.size}"
                    )
                out.write(view[:got])
                pos += got
                yield sink.take()
    finally:
        stream.close()
    folder.files += 1
    folder.bytes += st.size


def _info(name: str, st: FileStat, kind: int, default_perm: int) -> zipfile.ZipInfo:
    seconds = max(st.mtime_ns / 1e9, _EPOCH_1980) if st.mtime_ns is not None else _EPOCH_1980
    info = zipfile.ZipInfo(name, time.gmtime(seconds)[:6])
    perm = default_perm if st.mode is None else st.mode & 0o777
    info.external_attr = ((kind | perm) << 16) | (0x10 if kind == statmod.S_IFDIR else 0)
    info.create_system = 3  # unix: the mode bits above are read
    return info


def _comment(folder: GuestFolder) -> bytes:
    """The archive's comment: what it holds and every skipped entry, cut to fit."""
    head = (
        f"vmaccel: backup {folder.backup_id} of {folder.vm}, {folder.source.display}: "
        f"{folder.files} files; {len(folder.skipped)} entries skipped\n"
    )
    lines = [f"skipped {s.name}: {s.reason}\n" for s in folder.skipped]
    data = (head + "".join(lines)).encode("utf-8", "replace")
    return data[:COMMENT_LIMIT]
