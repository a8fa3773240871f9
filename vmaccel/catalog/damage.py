"""Damage attribution: which images, and which byte ranges of them, depend on damaged chunks.

A damaged data chunk makes every block mapped to it unreadable; a damaged map node every block
it covers (``fanout ** (level + 1)`` blocks: each of its entries covers ``fanout ** level``).
:func:`attribute` walks the maps of the given images once per unique node (a node's damaged
runs are memoized by id, so subtrees shared between images and backups cost nothing more) and
returns merged byte ranges per image and per damaged chunk. Ranges are clipped to image sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmaccel.catalog.blockmap import HOLE
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.vocabulary.errors import DamageError

if TYPE_CHECKING:
    from vmaccel.catalog.repository import Repository


@dataclass(frozen=True)
class ByteRange:
    """``length`` bytes from byte ``offset`` of a disk."""

    offset: int
    length: int


@dataclass(frozen=True)
class Dependent:
    """One image that needs a damaged chunk, and the byte ranges of it that do."""

    backup_id: int
    backup_uuid: str
    vm: str
    disk: str
    ranges: tuple[ByteRange, ...]


@dataclass(frozen=True)
class AffectedImage:
    """An image with unreadable byte ranges (merged over all its damaged chunks)."""

    backup_id: int
    backup_uuid: str
    vm: str
    disk: str
    ranges: tuple[ByteRange, ...]
    chunks: tuple[str, ...]


_Run = tuple[int, int, bytes]  # first block (relative to the node), block count, damaged id


def attribute(
    repo: Repository, images: list[tuple[BackupRow, ImageRow]], damaged: set[bytes]
) -> tuple[dict[bytes, tuple[Dependent, ...]], tuple[AffectedImage, ...]]:
    """Which images and byte ranges depend on ``damaged`` chunks (maps walked once per node)."""
    if not damaged:
        return {}, ()
    memo: dict[bytes, tuple[_Run, ...]] = {}
    used_by: dict[bytes, list[Dependent]] = {}
    affected: list[AffectedImage] = []
    for b, img in images:
        if img.root is None:
            continue
        runs = _runs(repo, img.root, img.depth - 1, img.fanout, damaged, memo)
        if not runs:
            continue
        by_cause: dict[bytes, list[ByteRange]] = {}
        for first, count, cause in runs:
            r = _clip(first, count, img)
            if r is not None:
                by_cause.setdefault(cause, []).append(r)
        for cause, ranges in by_cause.items():
            used_by.setdefault(cause, []).append(
                Dependent(b.id, b.uuid, b.vm, img.disk, merge(ranges))
            )
        everything = merge([r for rs in by_cause.values() for r in rs])
        causes = tuple(sorted(c.hex() for c in by_cause))
        affected.append(AffectedImage(b.id, b.uuid, b.vm, img.disk, everything, causes))
    return {k: tuple(v) for k, v in used_by.items()}, tuple(affected)


def _runs(
    repo: Repository,
    node_id: bytes,
    level: int,
    fanout: int,
    damaged: set[bytes],
    memo: dict[bytes, tuple[_Run, ...]],
) -> tuple[_Run, ...]:
    """Damaged block runs under one node, relative to its first block; memoized per node id."""
    span = fanout ** (level + 1)  # blocks under this node: each entry covers fanout**level
    if node_id in damaged:
        return ((0, span, node_id),)
    hit = memo.get(node_id)
    if hit is not None:
        return hit
    try:
        _, entries = repo.blockmap.node(node_id, fanout)
    except DamageError:  # damaged since the check pass: conservative, whole range
        return ((0, span, node_id),)
    out: list[_Run] = []
    for i, entry in enumerate(entries):
        if entry == HOLE:
            continue
        if level == 0:
            sub: Iterable[_Run] = ((0, 1, entry),) if entry in damaged else ()
        else:
            sub = _runs(repo, entry, level - 1, fanout, damaged, memo)
        for first, count, cause in sub:
            first += i * fanout**level
            if out and out[-1][2] == cause and out[-1][0] + out[-1][1] == first:
                out[-1] = (out[-1][0], out[-1][1] + count, cause)
            else:
                out.append((first, count, cause))
    memo[node_id] = result = tuple(out)
    return result


def _clip(first: int, count: int, img: ImageRow) -> ByteRange | None:
    start = first * img.block_size
    end = min((first + count) * img.block_size, img.size)
    return ByteRange(start, end - start) if end > start else None


def merge(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    out: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.offset):
        if out and out[-1].offset + out[-1].length >= r.offset:
            last = out[-1]
            out[-1] = ByteRange(last.offset, max(last.length, r.offset + r.length - last.offset))
        else:
            out.append(r)
    return tuple(out)
