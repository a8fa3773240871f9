"""The block map of an image: a tree of content-addressed map nodes shared between images.

An image of ``blocks`` blocks is a tree of depth ``D`` (the smallest with ``fanout ** D >=
blocks``, at least 1). A node holds up to ``fanout`` 32-byte entries: in a leaf (level 0) each
entry is the chunk id of one block; in an interior node (level L > 0) each entry is the id of a
child node covering ``fanout ** L`` blocks. An all-zero entry is a hole: a block that reads as
zeros, or a whole subtree of them. Node bytes::

    level u8 | reserved u8 | count u16 | count x 32-byte entry   (trailing holes trimmed)

Nodes are stored as chunks (kind 2) and named by the same content hash as data, so identical
subtrees are stored once. Updating a map rewrites only the nodes on the paths to changed blocks,
``O(changes x depth)`` nodes, and leaves every other node shared with the parent image: a
synthetic full costs metadata in proportion to the change, never to the disk size.

Thread safety: a :class:`BlockMap` may be read from several threads; its node cache is locked.
Updates are done by one thread (the image writer).
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from vmaccel.vocabulary.errors import ChunkCorrupt

ENTRY = 32
HOLE = bytes(ENTRY)
_HEAD = struct.Struct("<BBH")


class NodeStore(Protocol):
    """Persists map nodes. ``load_node`` returns verified bytes or raises a DamageError."""

    def load_node(self, node_id: bytes) -> bytes: ...

    def store_node(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class MapRoot:
    """The root of one image's map. ``root`` None means every block is a hole."""

    root: bytes | None
    depth: int
    fanout: int
    blocks: int


@dataclass(frozen=True)
class HoleRange:
    """``count`` blocks from block ``first`` on become holes."""

    first: int
    count: int


def depth_for(blocks: int, fanout: int) -> int:
    depth, capacity = 1, fanout
    while capacity < blocks:
        depth, capacity = depth + 1, capacity * fanout
    return depth


def empty_map(blocks: int, fanout: int) -> MapRoot:
    return MapRoot(None, depth_for(blocks, fanout), fanout, blocks)


def encode_node(level: int, entries: Sequence[bytes]) -> bytes:
    count = len(entries)
    while count and entries[count - 1] == HOLE:
        count -= 1
    return _HEAD.pack(level, 0, count) + b"".join(entries[:count])


def decode_node(data: bytes, fanout: int) -> tuple[int, list[bytes]]:
    """Return (level, ``fanout`` entries). Raises :class:`ChunkCorrupt` on malformed nodes."""
    if len(data) < _HEAD.size:
        raise ChunkCorrupt("map node is truncated")
    level, _, count = _HEAD.unpack_from(data)
    if count > fanout or len(data) != _HEAD.size + count * ENTRY:
        raise ChunkCorrupt(f"map node has {count} entries, fanout is {fanout}")
    entries = [data[_HEAD.size + i * ENTRY : _HEAD.size + (i + 1) * ENTRY] for i in range(count)]
    return level, entries + [HOLE] * (fanout - count)


class BlockMap:
    """Reads and derives block maps through a :class:`NodeStore`, with an LRU node cache."""

    def __init__(self, store: NodeStore, cache_nodes: int = 2048) -> None:
        self._store = store
        self._cache: OrderedDict[bytes, tuple[int, list[bytes]]] = OrderedDict()
        self._cache_nodes = cache_nodes
        self._lock = threading.Lock()

    def node(self, node_id: bytes, fanout: int) -> tuple[int, list[bytes]]:
        with self._lock:
            hit = self._cache.get(node_id)
            if hit is not None:
                self._cache.move_to_end(node_id)
                return hit
        decoded = decode_node(self._store.load_node(node_id), fanout)
        with self._lock:
            self._cache[node_id] = decoded
            if len(self._cache) > self._cache_nodes:
                self._cache.popitem(last=False)
        return decoded

    # -- reading ----------------------------------------------------------------------------

    def lookup(self, m: MapRoot, first: int, count: int) -> list[bytes | None]:
        """Chunk ids of blocks ``first .. first+count-1`` (None for holes)."""
        if first < 0 or first + count > m.blocks:
            raise ValueError(f"blocks {first}+{count} outside a map of {m.blocks} blocks")
        out: list[bytes | None] = [None] * count
        if m.root is not None:
            self._collect(m.root, m.depth - 1, 0, first, first + count, m.fanout, out, first)
        return out

    def _collect(
        self,
        node_id: bytes,
        level: int,
        base: int,
        lo: int,
        hi: int,
        fanout: int,
        out: list[bytes | None],
        origin: int,
    ) -> None:
        lvl, entries = self.node(node_id, fanout)
        if lvl != level:
            raise ChunkCorrupt(f"map node {node_id.hex()[:16]} is at level {lvl}, not {level}")
        span = fanout**level
        for i in range((lo - base) // span, min(fanout, (hi - base + span - 1) // span)):
            entry = entries[i]
            if entry == HOLE:
                continue
            child_base = base + i * span
            if level == 0:
                out[child_base - origin] = entry
            else:
                self._collect(
                    entry,
                    level - 1,
                    child_base,
                    max(lo, child_base),
                    min(hi, child_base + span),
                    fanout,
                    out,
                    origin,
                )

    def iter_blocks(self, m: MapRoot) -> Iterator[tuple[int, bytes]]:
        """Every (block, chunk id) that is not a hole, in block order."""
        if m.root is not None:
            yield from self._walk(m.root, m.depth - 1, 0, m.fanout)

    def _walk(
        self, node_id: bytes, level: int, base: int, fanout: int
    ) -> Iterator[tuple[int, bytes]]:
        _, entries = self.node(node_id, fanout)
        span = fanout**level
        for i, entry in enumerate(entries):
            if entry == HOLE:
                continue
            if level == 0:
                yield base + i, entry
            else:
                yield from self._walk(entry, level - 1, base + i * span, fanout)

    def iter_nodes(self, m: MapRoot, seen: set[bytes] | None = None) -> Iterator[tuple[bytes, int]]:
        """Every (node id, level) of the map, each once; subtrees already in ``seen`` are
        skipped (pass one set across images to walk shared subtrees only once)."""
        seen = set() if seen is None else seen
        if m.root is not None:
            yield from self._nodes(m.root, m.depth - 1, m.fanout, seen)

    def _nodes(
        self, node_id: bytes, level: int, fanout: int, seen: set[bytes]
    ) -> Iterator[tuple[bytes, int]]:
        if node_id in seen:
            return
        seen.add(node_id)
        yield node_id, level
        if level > 0:
            for entry in self.node(node_id, fanout)[1]:
                if entry != HOLE:
                    yield from self._nodes(entry, level - 1, fanout, seen)

    def same_range(self, a: MapRoot, b: MapRoot, first: int, count: int) -> bool:
        """True if blocks ``first .. first+count-1`` map to the same chunks in ``a`` and ``b``.

        Subtrees with equal node ids are identical and are not descended into, so comparing
        an image with its parent costs node reads only along the paths that changed; the
        first differing block ends the comparison.
        """
        return next(self.differing(a, b, first, count), None) is None

    def differing(self, a: MapRoot, b: MapRoot, first: int, count: int) -> Iterator[int]:
        """The blocks of ``first .. first+count-1`` that map to different chunks in ``a`` and
        ``b``, ascending; like :meth:`same_range`, equal subtrees are never descended into.
        Maps of another shape (depth, fanout) differ everywhere."""
        if (a.depth, a.fanout) != (b.depth, b.fanout):
            yield from range(first, first + count)
            return
        hi = first + count
        shared = min(hi, a.blocks, b.blocks)
        if first < shared:
            yield from self._differing(a.root, b.root, a.depth - 1, 0, first, shared, a.fanout)
        yield from range(max(first, shared), hi)  # blocks only one of the maps has

    def _differing(
        self, x: bytes | None, y: bytes | None, level: int, base: int, lo: int, hi: int, fanout: int
    ) -> Iterator[int]:
        if x == y:
            return
        xs = self.node(x, fanout)[1] if x else [HOLE] * fanout
        ys = self.node(y, fanout)[1] if y else [HOLE] * fanout
        span = fanout**level
        for i in range((lo - base) // span, min(fanout, (hi - base + span - 1) // span)):
            if xs[i] == ys[i]:
                continue
            child_lo = base + i * span
            if level == 0:
                yield child_lo
                continue
            cx, cy = (None if e == HOLE else e for e in (xs[i], ys[i]))
            yield from self._differing(
                cx, cy, level - 1, child_lo, max(lo, child_lo), min(hi, child_lo + span), fanout
            )

    # -- deriving ---------------------------------------------------------------------------

    def resize(self, m: MapRoot, blocks: int) -> MapRoot:
        """The same map for a disk of ``blocks`` blocks: grown with holes, or truncated."""
        if blocks < m.blocks:
            m = self.update(m, [], [HoleRange(blocks, m.blocks - blocks)])
        depth = depth_for(blocks, m.fanout)
        root = m.root
        for level in range(m.depth, depth):  # grow: the old tree becomes child 0
            if root is not None:
                root = self._store.store_node(encode_node(level, [root]))
        if depth < m.depth and root is not None:  # shrink: descend child 0
            for _ in range(m.depth - depth):
                root = self.node(root, m.fanout)[1][0]
                root = None if root == HOLE else root
                if root is None:
                    break
        return MapRoot(root, depth, m.fanout, blocks)

    def update(
        self,
        m: MapRoot,
        points: Sequence[tuple[int, bytes | None]],
        holes: Sequence[HoleRange] = (),
    ) -> MapRoot:
        """Return ``m`` with ``holes`` applied, then ``points`` (block, chunk id or None).

        ``points`` must be sorted by block and unique; ``holes`` sorted and disjoint. Only
        nodes on paths to changed blocks are written.
        """
        for b, _ in (*points[:1], *points[-1:]):
            if not 0 <= b < m.blocks:
                raise ValueError(f"block {b} outside a map of {m.blocks} blocks")
        if not points and not holes:
            return m
        root = self._apply(
            m.root,
            m.depth - 1,
            0,
            m.fanout,
            list(points),
            [(h.first, h.first + h.count) for h in holes],
        )
        return MapRoot(root, m.depth, m.fanout, m.blocks)

    def _apply(
        self,
        node_id: bytes | None,
        level: int,
        base: int,
        fanout: int,
        points: list[tuple[int, bytes | None]],
        holes: list[tuple[int, int]],
    ) -> bytes | None:
        span = fanout**level
        entries = self.node(node_id, fanout)[1].copy() if node_id else [HOLE] * fanout
        keys = [p[0] for p in points]
        starts, ends = [h[0] for h in holes], [h[1] for h in holes]
        touched = {(b - base) // span for b in keys}
        for a, b in holes:
            touched.update(range((a - base) // span, (b - 1 - base) // span + 1))
        for i in sorted(touched):
            lo, hi = base + i * span, base + (i + 1) * span
            sub_holes = [
                (max(a, lo), min(b, hi))
                for a, b in holes[bisect.bisect_right(ends, lo) : bisect.bisect_left(starts, hi)]
            ]
            sub_points = points[bisect.bisect_left(keys, lo) : bisect.bisect_left(keys, hi)]
            if sub_holes and sub_holes[0] == (lo, hi):
                entries[i], sub_holes = HOLE, []
            if level == 0:
                if sub_points:
                    entries[i] = sub_points[-1][1] or HOLE
                continue
            if sub_points or sub_holes:
                child = None if entries[i] == HOLE else entries[i]
                entries[i] = (
                    self._apply(child, level - 1, lo, fanout, sub_points, sub_holes) or HOLE
                )
        if all(e == HOLE for e in entries):
            return None
        if node_id is not None and entries == self.node(node_id, fanout)[1]:
            return node_id  # nothing changed below: share the node, write nothing
        return self._store.store_node(encode_node(level, entries))
