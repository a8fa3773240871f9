"""What a repository takes on disk against the unique data it holds (the history test's 1.1x).

Definitions (bytes):

``unique_raw``      plaintext bytes of the distinct data chunks the complete backups reference:
                    the sum of the sizes of the distinct non-zero blocks (64 KiB, the
                    repository's block size) over every remaining restore point;
``unique_stored``   the same chunks as stored (compressed, and sealed when encrypted): the
                    fair floor of what the repository must hold;
``node_stored``     the map nodes those backups reference, as stored (metadata);
``dead``            pack file bytes holding no referenced chunk: each pack's size less what a
                    pack of exactly its referenced chunks would take (what gc can reclaim);
``files``           the apparent size of every file under the repository directory: packs,
                    ``index.db`` (and a WAL if one is left), manifests, config, key, locks,
                    and the ``reserve`` (a fixed 4 MiB gc keeps for a full disk), given apart
                    as ``reserve`` too.

The overhead is ``(files - reserve) / unique_stored``: pack headers and indexes, dead space
gc left in packs, map nodes, the SQLite index and the manifests. ``with_reserve`` counts the
reserve as well, which only matters for repositories of a few hundred MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vmaccel.catalog import Repository
from vmaccel.catalog.gc import mark
from vmaccel.catalog.pack import KIND_DATA, KIND_NODE
from vmaccel.catalog.repack import packed_size


@dataclass(frozen=True)
class Footprint:
    """Byte counts of one repository; see the module docstring."""

    unique_raw: int
    unique_stored: int
    node_stored: int
    data_chunks: int
    dead: int
    files: int
    packs: int
    index: int
    manifests: int
    reserve: int

    @property
    def overhead(self) -> float:
        """Repository bytes (without the reserve) per stored unique byte."""
        return (self.files - self.reserve) / max(self.unique_stored, 1)

    @property
    def with_reserve(self) -> float:
        return self.files / max(self.unique_stored, 1)

    @property
    def compression(self) -> float:
        return self.unique_raw / max(self.unique_stored, 1)

    def to_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "overhead": round(self.overhead, 4),
            "with_reserve": round(self.with_reserve, 4),
            "compression": round(self.compression, 3),
        }

    def describe(self) -> str:
        mb = 1e6
        parts = (
            f"packs {self.packs / mb:.1f}, dead in them {self.dead / mb:.1f}",
            f"index {self.index / mb:.2f}",
            f"manifests {self.manifests / mb:.3f}",
            f"reserve {self.reserve / mb:.1f}",
        )
        return (
            f"repository {self.files / mb:.1f} MB ({', '.join(parts)}) for "
            f"{self.unique_stored / mb:.1f} MB of unique data as stored "
            f"({self.unique_raw / mb:.1f} MB raw, {self.data_chunks} chunks, compression "
            f"{self.compression:.2f}x): {self.overhead:.3f}x without the reserve, "
            f"{self.with_reserve:.3f}x with it"
        )


def measure(path: Path) -> Footprint:
    """Count `path`'s files and the chunks its complete backups reference (read-only)."""
    with Repository.open(path) as repo:
        live = mark(repo)
        chunks = repo.index.chunk_locations(live)
        dead = sum(
            pack.size
            - packed_size(tuple(c for c in repo.index.chunks_in_pack(pack.id) if c.id in live))
            for pack in repo.index.packs()
        )
    data = [c for c in chunks.values() if c.kind == KIND_DATA]
    sizes = {p: p.stat().st_size for p in path.rglob("*") if p.is_file()}
    return Footprint(
        unique_raw=sum(c.raw_len for c in data),
        unique_stored=sum(c.stored_len for c in data),
        node_stored=sum(c.stored_len for c in chunks.values() if c.kind == KIND_NODE),
        data_chunks=len(data),
        dead=dead,
        files=sum(sizes.values()),
        packs=sum(n for p, n in sizes.items() if p.is_relative_to(path / "packs")),
        index=sum(n for p, n in sizes.items() if p.name.startswith("index.db")),
        manifests=sum(n for p, n in sizes.items() if p.is_relative_to(path / "backups")),
        reserve=sizes.get(path / "reserve", 0),
    )
