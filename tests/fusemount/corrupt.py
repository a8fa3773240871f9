"""Damaging a repository on purpose: flip a byte in the stored chunk of one image block."""

from __future__ import annotations

from dataclasses import dataclass

from vmaccel.catalog.index import ImageRow
from vmaccel.catalog.packstore import pack_key
from vmaccel.catalog.repository import Repository


@dataclass(frozen=True)
class Damage:
    block: int  # image block index whose chunk was damaged
    chunk_hex: str
    pack: str


def data_blocks(repo: Repository, img: ImageRow) -> list[int]:
    ids = repo.blockmap.lookup(repo.map_root(img), 0, repo.map_root(img).blocks)
    return [i for i, cid in enumerate(ids) if cid is not None]


def corrupt_block(
    repo: Repository, img: ImageRow, block: int | None = None, first_data: bool = False
) -> Damage:
    """Flip one byte in the middle of the stored chunk of `block` (or the first data block)."""
    if block is None:
        assert first_data
        block = data_blocks(repo, img)[0]
    cid = repo.blockmap.lookup(repo.map_root(img), block, 1)[0]
    assert cid is not None, f"block {block} is a hole"
    loc = repo.index.chunk(cid)
    assert loc is not None
    path = repo.path / pack_key(loc.pack)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return Damage(block, cid.hex(), loc.pack)
