"""stats: what a repository holds, logically and on disk, and what deduplication and
compression save.

Terms (all in bytes):

``logical_bytes``   sum of the sizes of every image of every complete backup;
``mapped_bytes``    of those, the bytes mapped to stored data (holes and zero blocks excluded);
``unique_bytes``    plaintext bytes of the unique data chunks stored (each chunk once);
``stored_bytes``    payload bytes of those data chunks as stored (compressed, encrypted);
``node_bytes``      payload bytes of the map nodes; ``pack_bytes`` the pack files' sizes.

``dedup_ratio`` is ``mapped_bytes / unique_bytes`` (two identical disks give 2.0);
``compression_ratio`` is ``unique_bytes / stored_bytes``. Both are 1.0 for an empty repository.
Counts come from index queries; ``mapped_bytes`` walks the maps, each unique node once (a
subtree's count is memoized by node id), so the cost grows with the unique metadata, not with
the disk sizes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.index import ImageRow
from vmaccel.catalog.pack import KIND_DATA, KIND_NODE
from vmaccel.vocabulary.errors import DamageError
from vmaccel.vocabulary.units import format_bytes

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositoryStats:
    """See the module docstring for the meaning of each byte count."""

    backups: int
    vms: int
    images: int
    logical_bytes: int
    mapped_bytes: int
    unique_bytes: int
    stored_bytes: int
    node_bytes: int
    pack_bytes: int
    data_chunks: int
    node_chunks: int
    packs: int
    dedup_ratio: float
    compression_ratio: float
    unreadable_nodes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        lines = [
            f"backups: {self.backups} of {self.vms} VMs, {self.images} images",
            f"logical: {format_bytes(self.logical_bytes)} "
            f"({format_bytes(self.mapped_bytes)} mapped to data)",
            f"unique data: {format_bytes(self.unique_bytes)} in {self.data_chunks} chunks; "
            f"stored {format_bytes(self.stored_bytes)} (+{format_bytes(self.node_bytes)} in "
            f"{self.node_chunks} map nodes)",
            f"packs: {self.packs}, {format_bytes(self.pack_bytes)} on disk",
            f"dedup ratio {self.dedup_ratio:.2f}, compression ratio {self.compression_ratio:.2f}",
        ]
        if self.unreadable_nodes:
            lines.append(
                f"{self.unreadable_nodes} map nodes are unreadable: mapped bytes are a lower "
                "bound (run `vmaccel verify`)"
            )
        return lines


def repository_stats(repo: Repository) -> RepositoryStats:
    """Statistics of ``repo`` over its complete backups (read-only; a reader lock suffices)."""
    backups, vms, images, logical = repo.index.backup_totals()
    totals = repo.index.chunk_totals_by_kind()
    data_chunks, stored, unique = totals.get(KIND_DATA, (0, 0, 0))
    node_chunks, node_bytes, _ = totals.get(KIND_NODE, (0, 0, 0))
    packs, pack_bytes = repo.index.pack_totals()
    counter = _MappedCounter(repo)
    mapped = sum(
        counter.image_bytes(img) for b in repo.backups() for img in repo.images(b)
    )
    return RepositoryStats(
        backups=backups,
        vms=vms,
        images=images,
        logical_bytes=logical,
        mapped_bytes=mapped,
        unique_bytes=unique,
        stored_bytes=stored,
        node_bytes=node_bytes,
        pack_bytes=pack_bytes,
        data_chunks=data_chunks,
        node_chunks=node_chunks,
        packs=packs,
        dedup_ratio=mapped / unique if unique else 1.0,
        compression_ratio=unique / stored if stored else 1.0,
        unreadable_nodes=len(counter.unreadable),
    )


class _MappedCounter:
    """Counts non-hole blocks under map nodes; each node id is counted once and memoized."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.memo: dict[bytes, int] = {}
        self.unreadable: set[bytes] = set()

    def image_bytes(self, img: ImageRow) -> int:
        """Bytes of ``img`` mapped to data; a short last block counts its real length."""
        if img.root is None:
            return 0
        mapped = self._blocks(img.root, img.depth - 1, img.fanout) * img.block_size
        tail = img.size % img.block_size
        if tail and img.root not in self.unreadable:
            root = self.repo.map_root(img)
            try:
                last = self.repo.blockmap.lookup(root, root.blocks - 1, 1)[0]
            except DamageError:
                last = None
            if last is not None:
                mapped -= img.block_size - tail
        return mapped

    def _blocks(self, node_id: bytes, level: int, fanout: int) -> int:
        hit = self.memo.get(node_id)
        if hit is not None:
            return hit
        try:
            _, entries = self.repo.blockmap.node(node_id, fanout)
        except DamageError:
            logger.warning("map node %s is unreadable; not counted", node_id.hex())
            self.unreadable.add(node_id)
            return 0
        children = [e for e in entries if e != HOLE]
        if level == 0:
            count = len(children)
        else:
            count = sum(self._blocks(c, level - 1, fanout) for c in children)
        self.memo[node_id] = count
        return count
