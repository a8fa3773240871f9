"""The test bed's NFS client: what an ESXi host reads from and writes to a NAS datastore.

This kernel has no NFS client, so the bed talks NFS v3 over TCP from user space through libnfs
(Debian's ``libnfs13``, the library behind ``nfs-cat``/``nfs-ls``), loaded with ctypes. A test
that reads a disk through :class:`NfsClient` reads exactly what the export serves, the bytes an
ESXi host mounting it as a datastore would see.

Ports: like ESXi, the client asks the server's portmapper (rpcbind) for the MOUNT and NFS
ports unless ``nfs_port``/``mount_port`` are given. Units: offsets and lengths in bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testbed.vsphere.bed import VsphereBed

_CHUNK = 1 << 20


class NfsError(OSError):
    """An NFS call failed; the message is libnfs's."""


class _Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


class _Stat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [("next", ctypes.POINTER(_Dirent)), ("name", ctypes.c_char_p),
                    ("inode", ctypes.c_uint64)]


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("nfs") or "libnfs.so.13"
    lib = ctypes.CDLL(name, use_errno=True)
    vp, u64 = ctypes.c_void_p, ctypes.c_uint64
    lib.nfs_init_context.restype = vp
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [vp]
    lib.nfs_parse_url_full.restype = ctypes.POINTER(_Url)
    lib.nfs_parse_url_full.argtypes = [vp, ctypes.c_char_p]
    lib.nfs_destroy_url.argtypes = [ctypes.POINTER(_Url)]
    lib.nfs_mount.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_umount.argtypes = [vp]
    lib.nfs_destroy_context.argtypes = [vp]
    lib.nfs_open.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(vp)]
    lib.nfs_close.argtypes = [vp, vp]
    lib.nfs_fsync.argtypes = [vp, vp]
    lib.nfs_pread.argtypes = [vp, vp, u64, u64, vp]
    lib.nfs_pwrite.argtypes = [vp, vp, u64, u64, vp]
    lib.nfs_stat64.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(_Stat64)]
    lib.nfs_opendir.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(vp)]
    lib.nfs_readdir.restype = ctypes.POINTER(_Dirent)
    lib.nfs_readdir.argtypes = [vp, vp]
    lib.nfs_closedir.argtypes = [vp, vp]
    lib.nfs_create.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(vp)]
    lib.nfs_unlink.argtypes = [vp, ctypes.c_char_p]
    return lib


@dataclass(frozen=True)
class NfsStat:
    size: int
    mode: int
    ino: int


class NfsClient:
    """One mounted export (NFS v3, TCP). Not thread safe: one client per thread."""

    def __init__(self, host: str, export: str, nfs_port: int = 0, mount_port: int = 0) -> None:
        self._lib = _library()
        self._ctx = self._lib.nfs_init_context()
        if not self._ctx:
            raise NfsError("libnfs: cannot create a context")
        query = "&".join(f"{k}={v}" for k, v in (("nfsport", nfs_port), ("mountport", mount_port))
                         if v)
        url = f"nfs://{host}{export}/" + (f"?{query}" if query else "")
        parsed = self._lib.nfs_parse_url_full(self._ctx, url.encode())
        if not parsed:
            self._fail(f"parsing {url}")
        try:
            if self._lib.nfs_mount(self._ctx, parsed.contents.server, parsed.contents.path) != 0:
                self._fail(f"mounting {host}:{export}")
        finally:
            self._lib.nfs_destroy_url(parsed)
        self.host, self.export = host, export

    def _fail(self, what: str) -> None:
        message = self._lib.nfs_get_error(self._ctx) or b"unknown error"
        raise NfsError(f"{what}: {message.decode(errors='replace')}")

    def close(self) -> None:
        if self._ctx:
            self._lib.nfs_umount(self._ctx)
            self._lib.nfs_destroy_context(self._ctx)
            self._ctx = None

    def __enter__(self) -> NfsClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stat(self, path: str) -> NfsStat:
        st = _Stat64()
        if self._lib.nfs_stat64(self._ctx, _abs(path), ctypes.byref(st)) != 0:
            self._fail(f"stat {path}")
        return NfsStat(st.size, st.mode, st.ino)

    def listdir(self, path: str = "/") -> list[str]:
        handle = ctypes.c_void_p()
        if self._lib.nfs_opendir(self._ctx, _abs(path), ctypes.byref(handle)) != 0:
            self._fail(f"listing {path}")
        names = []
        try:
            while True:
                ent = self._lib.nfs_readdir(self._ctx, handle)
                if not ent:
                    break
                name = ent.contents.name.decode(errors="surrogateescape")
                if name not in (".", ".."):
                    names.append(name)
        finally:
            self._lib.nfs_closedir(self._ctx, handle)
        return sorted(names)

    def _open(self, path: str, flags: int) -> ctypes.c_void_p:
        fh = ctypes.c_void_p()
        if self._lib.nfs_open(self._ctx, _abs(path), flags, ctypes.byref(fh)) != 0:
            self._fail(f"opening {path}")
        return fh

    def chunks(self, path: str, chunk: int = _CHUNK) -> Iterator[bytes]:
        """The whole file, in pieces of up to ``chunk`` bytes."""
        size = self.stat(path).size
        fh = self._open(path, os.O_RDONLY)
        buf = ctypes.create_string_buffer(chunk)
        try:
            offset = 0
            while offset < size:
                n = self._lib.nfs_pread(self._ctx, fh, offset, min(chunk, size - offset), buf)
                if n <= 0:
                    self._fail(f"reading {path} at byte {offset}")
                yield buf.raw[:n]
                offset += n
        finally:
            self._lib.nfs_close(self._ctx, fh)

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes (default: to the end) from ``offset``."""
        if length is None:
            length = self.stat(path).size - offset
        fh = self._open(path, os.O_RDONLY)
        out = bytearray()
        buf = ctypes.create_string_buffer(_CHUNK)
        try:
            while len(out) < length:
                n = self._lib.nfs_pread(self._ctx, fh, offset + len(out),
                                        min(_CHUNK, length - len(out)), buf)
                if n < 0:
                    self._fail(f"reading {path} at byte {offset + len(out)}")
                if n == 0:
                    break
                out += buf.raw[:n]
        finally:
            self._lib.nfs_close(self._ctx, fh)
        return bytes(out)

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` and commit it (fsync), as a guest flush would."""
        fh = self._open(path, os.O_RDWR)
        try:
            done = 0
            while done < len(data):
                piece = data[done : done + _CHUNK]
                n = self._lib.nfs_pwrite(self._ctx, fh, offset + done, len(piece), piece)
                if n <= 0:
                    self._fail(f"writing {path} at byte {offset + done}")
                done += n
            if self._lib.nfs_fsync(self._ctx, fh) != 0:
                self._fail(f"committing {path}")
        finally:
            self._lib.nfs_close(self._ctx, fh)

    def create(self, path: str, data: bytes, exclusive: bool = True) -> None:
        """Create ``path`` with ``data`` (exclusively by default: as ESXi takes a lock file)."""
        fh = ctypes.c_void_p()
        flags = os.O_RDWR | (os.O_EXCL if exclusive else 0)
        if self._lib.nfs_create(self._ctx, _abs(path), flags, 0o644, ctypes.byref(fh)) != 0:
            self._fail(f"creating {path}")
        self._lib.nfs_close(self._ctx, fh)
        if data:
            self.write(path, 0, data)

    def unlink(self, path: str) -> None:
        if self._lib.nfs_unlink(self._ctx, _abs(path)) != 0:
            self._fail(f"removing {path}")

    def sha256(self, path: str) -> str:
        h = hashlib.sha256()
        for piece in self.chunks(path):
            h.update(piece)
        return h.hexdigest()


def pin_ports(bed: VsphereBed, host: str, nfs_port: int, mount_port: int) -> None:
    """Make the bed reach the NFS server on ``host`` at these ports instead of asking its
    portmapper (several servers on one machine: rpcbind knows only the last registered)."""
    bed.control._call("PUT", "nas-ports", data=json.dumps(
        {"host": host, "nfs_port": nfs_port, "mount_port": mount_port}).encode())


def _abs(path: str) -> bytes:
    return ("/" + path.lstrip("/")).encode(errors="surrogateescape")
