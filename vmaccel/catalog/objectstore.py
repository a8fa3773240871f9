"""The object store: the one seam through which a repository persists packs, manifests,
its config and its key.

A store maps keys to immutable byte strings. Keys are ``/``-separated relative names whose
components are non-empty, do not start with ``.`` and are not ``..`` (``packs/ab/<name>``,
``backups/<uuid>``, ``config``, ``key``); :func:`check_key` enforces this for every
implementation. The SQLite index and the lock files are not objects: they belong to the index
and to the lock.

The protocol holds exactly what a repository needs and what S3 offers too:

=====================  ==========================================  ==========================
call                   contract                                    S3
=====================  ==========================================  ==========================
``put``                whole object from bytes, if absent          PUT, ``If-None-Match: *``
``put(replace=True)``  atomic replacement (rebuild-index's          PUT
                       renumbered manifests): old or new, never
                       neither
``stage`` + commit     a big object built in a local staging        multipart upload from the
                       file, then put if absent                     staging file, completed
                                                                   with ``If-None-Match``
``get``                whole object, or ``length`` bytes at         GET, ``Range``
                       ``offset`` (fewer only at its end)
``stat``               size in bytes and modification time          HEAD
``list_prefix``        objects whose key starts with ``prefix``,    ListObjectsV2
                       sorted by key
``delete``             idempotent                                   DELETE
``staged`` / discard   uploads begun and never committed            ListMultipartUploads /
                       (garbage by construction)                    AbortMultipartUpload
``close``              release cached handles (stays usable)        close the connection pool
``protect``            Object Lock: keep objects locked until at    PutObjectRetention
                       least a date (no-op without a lock)
``expire_deletes``     finish deletes that a lock deferred          DELETE of each version
=====================  ==========================================  ==========================

Object Lock (a store with ``lock_seconds > 0``): ``delete`` of an object still locked records
the delete instead of failing (the object is hidden from ``get``, ``stat`` and
``list_prefix`` at once) and ``expire_deletes`` performs it once its lock has run out; see
docs/format.md, "Object Lock", for the retention rule.

Durability barrier: there is no separate ``sync``. Every mutating call is its own barrier:
when ``put``, ``Upload.commit`` or ``delete`` returns, its effect is durable (locally: the
file's fsync, then its directory's fsync; on S3: the acknowledged request). The write order of
DESIGN invariant 1 is kept by callers ordering their calls: a pack's ``commit`` returns before
any index row names it, a manifest's ``put`` returns before its backup's COMMIT, and gc's
``delete`` of a pack follows the commit that removed its row.

A put or an upload interrupted before it returns leaves either no object under its key or the
complete object, never a part of it (at worst a staged upload, which :meth:`ObjectStore.staged`
lists for gc). Errors: a missing object raises :class:`ObjectMissing` (damage, exit code 6);
``put`` or ``commit`` onto an existing key raises :class:`ObjectExists` and never overwrites.

Thread safety: every call may come from any thread; an :class:`Upload` is used by one thread
at a time (the pack writer creates it, its I/O thread writes and commits it).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from vmaccel.vocabulary.errors import DamageError, RepositoryError


class ObjectMissing(DamageError, FileNotFoundError):
    """The object a key names does not exist (the repository lost it, or it never was)."""

    errno = _errno.EIO


class ObjectStoreUnavailable(RepositoryError, ConnectionError):
    """The object store cannot be reached (endpoint down, DNS, TLS, timeouts after retries)."""

    errno = _errno.EHOSTUNREACH


class ObjectStoreDenied(RepositoryError, PermissionError):
    """The object store refused the credentials or the request (wrong keys, no permission)."""

    errno = _errno.EACCES


class ObjectExists(RepositoryError, FileExistsError):
    """A put-if-absent found its key taken: objects are never silently overwritten."""

    errno = _errno.EEXIST


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: ``size`` in bytes, ``mtime`` in UNIX seconds (last written)."""

    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class StagedUpload:
    """An upload begun and never committed: ``name`` identifies it for
    :meth:`ObjectStore.discard_staged`; ``size`` in bytes staged so far, ``mtime`` in UNIX
    seconds of its last write."""

    name: str
    size: int
    mtime: float


class Upload(Protocol):
    """A big object being written to a local staging file.

    ``stream`` takes the bytes; ``commit`` makes them durable and visible under ``key`` (put if
    absent: :class:`ObjectExists` when the key is taken, the staging file then stays for
    ``abort``); ``abort`` discards the staging file (idempotent, also after a failed
    ``commit``). ``path`` is the local staging file, for error messages.
    """

    @property
    def key(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def stream(self) -> BinaryIO: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class ObjectStore(Protocol):
    """Where a repository persists its objects (see the module docstring for the contract).

    ``lock_seconds``: the Object Lock period (0: no lock, deletes are immediate)."""

    @property
    def lock_seconds(self) -> int: ...

    def put(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store ``data`` under ``key``, durably when this returns. Without ``replace`` an
        existing object raises :class:`ObjectExists`; with it, it is replaced atomically."""
        ...

    def stage(self, key: str) -> Upload:
        """Begin a big object for ``key``, written through a local staging file."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes from ``offset`` (in bytes): ``length`` of them, fewer only where
        the object ends first, or all the rest when ``length`` is None."""
        ...

    def prefetch(self, key: str, offset: int, length: int) -> None:
        """Hint that ``length`` bytes of ``key`` at ``offset`` (bytes) will be read soon: the
        store may start reading them in the background. Best effort: returns without waiting
        for the bytes and never raises (a missing object is reported by the read itself)."""
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        ...

    def delete(self, key: str) -> bool:
        """Delete ``key`` (no error when it is missing), durably when this returns. False
        when the store may not delete it yet (an object lock): it records the delete and
        carries it out once allowed, and the bytes stay stored until then."""
        ...

    def staged(self) -> list[StagedUpload]:
        """Uploads begun and never committed, sorted by name."""
        ...

    def discard_staged(self, name: str) -> None:
        """Delete one of :meth:`staged` (no error when it is gone already)."""
        ...

    def close(self) -> None:
        """Release cached handles; the store stays usable and reopens what it needs."""
        ...

    def protect(self, keys: Iterable[str], since: float) -> int:
        """Keep each of ``keys`` locked until at least ``since`` (UNIX seconds) plus
        ``lock_seconds``; never shortens a lock. Returns how many locks were extended
        (0 without Object Lock)."""
        ...

    def expire_deletes(self) -> tuple[int, int]:
        """Perform the deletes a lock deferred whose lock has run out: returns (deleted,
        still waiting); (0, 0) without Object Lock."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` when it is a valid object key (see the module docstring), else raise
    :class:`ValueError`: keys come from the repository's code, never from users."""
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key
