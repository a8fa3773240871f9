"""vmaccel's repository: a crash-safe, deduplicating block store of synthetic full images.

Glossary (these words name the modules, classes, tables and CLI verbs):

repository      one directory: the SQLite catalog (``index``), the packs, the manifests
chunk           one stored block, named by its content hash; all-zero blocks are never stored
pack            an append-only file of compressed (optionally encrypted) chunks
image           the block map of one disk at one point in time: block -> chunk or hole
backup          one run of one VM: its images, saved configuration, changeIds and stats
synthetic full  an image derived from the previous image plus the changed blocks, metadata only
extent          a byte range (offset, length) on a disk
changeId        vSphere's opaque CBT marker of a disk state, stored per image

Modules: ``config`` (settings), ``key`` and ``codec`` (naming, compression, encryption),
``objectstore`` (the seam everything persisted goes through) and ``localstore`` (its
directory implementation), ``pack`` and ``packstore`` (pack format, pack names), ``index`` (its
protocols, records and all SQL), ``chunkstore`` (write order), ``blockmap`` (the shared map tree),
``imagewriter``/``imagereader``, ``backup``,
``manifest``, ``repository``, ``lock``; maintenance verbs ``verify``, ``retention``/``prune``,
``gc``, ``stats``, ``rebuild``. ``catalog`` imports only ``vmaccel.vocabulary``.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmaccel.catalog.config import RepositoryConfig
    from vmaccel.catalog.repository import Repository

# Resolved lazily (PEP 562): importing a submodule must stay cheap for the CLI's start-up.
_EXPORTS = {
    "Repository": "vmaccel.catalog.repository",
    "RepositoryConfig": "vmaccel.catalog.config",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["Repository", "RepositoryConfig"]
