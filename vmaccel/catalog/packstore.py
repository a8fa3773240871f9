"""Where pack files live: pack names mapped onto the object store. Nothing outside this
module knows a pack's key, and nothing outside the store knows its path.

A pack named ``<name>`` (32 hex digits) is the object ``packs/<name[:2]>/<name>``. New packs
are built through an :class:`~vmaccel.catalog.objectstore.Upload` and appear under their key
only when ``commit`` returns, durable (see :mod:`vmaccel.catalog.objectstore`); uploads never
committed (a killed writer) are the *temporary* packs gc deletes after its grace period.

Errors: a missing pack, or one shorter than a read needs, raises
:class:`~vmaccel.vocabulary.errors.ChunkMissing` naming the pack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vmaccel.catalog.objectstore import ObjectMissing, ObjectStore, Upload
from vmaccel.vocabulary.errors import ChunkMissing

PREFIX = "packs/"


def pack_key(name: str) -> str:
    """The object key of pack ``name``."""
    return f"{PREFIX}{name[:2]}/{name}"


@dataclass(frozen=True)
class PackFile:
    """A stored pack: ``size`` in bytes, ``mtime`` in UNIX seconds (when it was written)."""

    name: str
    size: int
    mtime: float


class PackStore:
    """Packs in an object store. Thread safety is the store's (reads from any thread)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def create(self, name: str) -> Upload:
        """Begin pack ``name``; it is visible only after the upload's ``commit``."""
        return self.store.stage(pack_key(name))

    def read(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes of pack ``name`` at ``offset`` (bytes), exactly."""
        try:
            data = self.store.get(pack_key(name), offset, length)
        except ObjectMissing:
            raise ChunkMissing(f"pack {name} is missing") from None
        if len(data) != length:
            raise ChunkMissing(
                f"pack {name} is shorter than the index says "
                f"(wanted {length} bytes at {offset}, got {len(data)})"
            )
        return data

    def prefetch(self, name: str, offset: int, length: int) -> None:
        """Hint that ``length`` bytes of pack ``name`` at ``offset`` will be read soon (best
        effort, returns at once: see :meth:`ObjectStore.prefetch`)."""
        self.store.prefetch(pack_key(name), offset, length)

    def stat(self, name: str) -> PackFile:
        try:
            info = self.store.stat(pack_key(name))
        except ObjectMissing:
            raise ChunkMissing(f"pack {name} is missing") from None
        return PackFile(name, info.size, info.mtime)

    def size(self, name: str) -> int:
        """Bytes of pack ``name``; :class:`ChunkMissing` when it is missing."""
        return self.stat(name).size

    def mtime(self, name: str) -> float:
        return self.stat(name).mtime

    def files(self) -> Iterator[PackFile]:
        """Every stored pack, sorted by name (one listing, no request per pack)."""
        for info in self.store.list_prefix(PREFIX):
            name = info.key.rpartition("/")[2]
            if info.key == pack_key(name):  # anything else is no pack of ours
                yield PackFile(name, info.size, info.mtime)

    def names(self) -> Iterator[str]:
        return (f.name for f in self.files())

    def delete(self, name: str) -> bool:
        """Delete pack ``name`` (durably when this returns; no error when it is gone); False
        when an object lock defers it (see :meth:`ObjectStore.delete`)."""
        return self.store.delete(pack_key(name))

    def temporary(self) -> list[PackFile]:
        """Packs begun and never committed (garbage by construction), by name."""
        return [PackFile(s.name, s.size, s.mtime) for s in self.store.staged()]

    def temporary_names(self) -> list[str]:
        return [t.name for t in self.temporary()]

    def delete_temporary(self, name: str) -> None:
        self.store.discard_staged(name)
