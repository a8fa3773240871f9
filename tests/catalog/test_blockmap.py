"""vmaccel.catalog.blockmap: the shared map tree (update, holes, resize, lookup, walks, sharing)."""

from __future__ import annotations

import random

import blake3
import pytest

from vmaccel.catalog.blockmap import (
    HOLE,
    BlockMap,
    HoleRange,
    MapRoot,
    decode_node,
    depth_for,
    empty_map,
    encode_node,
)
from vmaccel.vocabulary.errors import ChunkCorrupt

FANOUT = 16


class MemNodes:
    """An in-memory NodeStore that counts node writes (new nodes only)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        self.writes = 0

    def load_node(self, node_id: bytes) -> bytes:
        return self.nodes[node_id]

    def store_node(self, data: bytes) -> bytes:
        nid = blake3.blake3(data).digest()
        if nid not in self.nodes:
            self.writes += 1
            self.nodes[nid] = data
        return nid


def cid(n: int) -> bytes:
    return blake3.blake3(n.to_bytes(8, "little", signed=True)).digest()


def full_map(bm: BlockMap, blocks: int, seed: int = 0) -> tuple[MapRoot, list[bytes | None]]:
    model: list[bytes | None] = [cid(seed * 1_000_000 + b) for b in range(blocks)]
    m = bm.update(empty_map(blocks, FANOUT), list(enumerate(model)))
    return m, model


def test_depth_for() -> None:
    assert depth_for(0, 16) == 1
    assert depth_for(16, 16) == 1
    assert depth_for(17, 16) == 2
    assert depth_for(256, 16) == 2
    assert depth_for(257, 16) == 3


def test_node_codec_trims_trailing_holes() -> None:
    entries = [cid(1), HOLE, cid(2)] + [HOLE] * 13
    data = encode_node(0, entries)
    assert len(data) == 4 + 3 * 32
    assert decode_node(data, 16) == (0, entries)
    with pytest.raises(ChunkCorrupt):
        decode_node(data[:-1], 16)
    with pytest.raises(ChunkCorrupt):
        decode_node(data, 2)


def test_update_and_lookup() -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 300)
    assert m.depth == 3
    assert bm.lookup(m, 0, 300) == model
    assert bm.lookup(m, 17, 5) == model[17:22]
    assert list(bm.iter_blocks(m)) == [(b, c) for b, c in enumerate(model) if c]
    with pytest.raises(ValueError):
        bm.lookup(m, 299, 2)
    with pytest.raises(ValueError):
        bm.update(m, [(300, cid(1))])


def test_empty_map_is_all_holes() -> None:
    bm = BlockMap(MemNodes())
    m = empty_map(100, FANOUT)
    assert m.root is None
    assert bm.lookup(m, 0, 100) == [None] * 100
    assert list(bm.iter_blocks(m)) == []
    assert list(bm.iter_nodes(m)) == []


def test_points_of_none_make_holes_and_empty_map_collapses() -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 40)
    m2 = bm.update(m, [(5, None), (39, None)])
    model[5] = model[39] = None
    assert bm.lookup(m2, 0, 40) == model
    assert bm.update(m, [(b, None) for b in range(40)]).root is None


@pytest.mark.parametrize(
    "holes",
    [
        [HoleRange(0, 300)],
        [HoleRange(3, 1)],
        [HoleRange(10, 250)],
        [HoleRange(0, 16), HoleRange(16, 16), HoleRange(290, 10)],
        [HoleRange(15, 2), HoleRange(255, 3)],
    ],
)
def test_holes(holes: list[HoleRange]) -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 300)
    m2 = bm.update(m, [], holes)
    for h in holes:
        model[h.first : h.first + h.count] = [None] * h.count
    assert bm.lookup(m2, 0, 300) == model
    assert (m2.root is None) == all(c is None for c in model)


def test_points_override_holes_in_one_update() -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 300)
    m2 = bm.update(m, [(20, cid(7)), (100, cid(8))], [HoleRange(0, 256)])
    model[:256] = [None] * 256
    model[20], model[100] = cid(7), cid(8)
    assert bm.lookup(m2, 0, 300) == model


def test_parent_is_unchanged_and_subtrees_are_shared() -> None:
    store = MemNodes()
    bm = BlockMap(store)
    m, model = full_map(bm, 4096)  # depth 3
    before = dict(store.nodes)
    m2 = bm.update(m, [(1000, cid(-1))])
    assert bm.lookup(m, 0, 4096) == model  # the parent still reads the same
    model2 = list(model)
    model2[1000] = cid(-1)
    assert bm.lookup(m2, 0, 4096) == model2
    nodes1 = {n for n, _ in bm.iter_nodes(m)}
    nodes2 = {n for n, _ in bm.iter_nodes(m2)}
    assert len(nodes2 - nodes1) == m.depth  # one new node per level
    assert len(nodes1 & nodes2) == len(nodes1) - m.depth
    assert set(store.nodes) - set(before) == nodes2 - nodes1


def test_node_writes_are_proportional_to_the_change() -> None:
    store = MemNodes()
    bm = BlockMap(store)
    m, _ = full_map(bm, 16**4)  # 65536 blocks, depth 4
    assert m.depth == 4
    rng = random.Random(1)
    for changes in (1, 10, 100):
        store.writes = 0
        blocks = sorted(rng.sample(range(16**4), changes))
        bm.update(m, [(b, cid(-b - 1)) for b in blocks])
        assert store.writes <= changes * m.depth
        assert store.writes >= changes  # every changed leaf is new
    store.writes = 0
    bm.update(m, [], [HoleRange(1000, 5)])
    assert store.writes <= m.depth
    store.writes = 0
    assert bm.update(m, [], []) == m and store.writes == 0


def test_identical_subtrees_are_stored_once() -> None:
    store = MemNodes()
    bm = BlockMap(store)
    same = cid(42)
    m = bm.update(empty_map(256, FANOUT), [(b, same) for b in range(256)])
    assert len(store.nodes) == 2  # one leaf shared by 16 entries, one root
    seen: set[bytes] = set()
    assert len(list(bm.iter_nodes(m, seen))) == 2
    assert list(bm.iter_nodes(m, seen)) == []  # already seen: skipped


def test_iter_nodes_with_shared_seen_walks_shared_subtrees_once() -> None:
    store = MemNodes()
    bm = BlockMap(store)
    m1, _ = full_map(bm, 300)
    m2 = bm.update(m1, [(7, cid(-7))])
    seen: set[bytes] = set()
    n1 = list(bm.iter_nodes(m1, seen))
    n2 = list(bm.iter_nodes(m2, seen))
    assert len(n2) == m1.depth  # only the changed path is new
    assert {lvl for _, lvl in n1} == {0, 1, 2}
    assert len(n1) + len(n2) == len(store.nodes)


def test_resize_grow_keeps_blocks_and_adds_holes() -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 10)
    assert m.depth == 1
    g = bm.resize(m, 5000)
    assert g.depth == 4 and g.blocks == 5000
    assert bm.lookup(g, 0, 5000) == model + [None] * 4990
    g2 = bm.update(g, [(4999, cid(-1))])
    assert bm.lookup(g2, 4990, 10) == [None] * 9 + [cid(-1)]
    assert bm.resize(empty_map(0, FANOUT), 100).root is None


@pytest.mark.parametrize("new", [0, 1, 15, 16, 17, 200, 299])
def test_resize_shrink_truncates(new: int) -> None:
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 300)
    s = bm.resize(m, new)
    assert s.blocks == new and s.depth == depth_for(new, FANOUT)
    assert bm.lookup(s, 0, new) == model[:new]
    # growing again shows holes, not the truncated blocks
    g = bm.resize(s, 300)
    assert bm.lookup(g, 0, 300) == model[:new] + [None] * (300 - new)


def test_shrink_then_grow_equals_fresh_map() -> None:
    """Content addressing: the same content gives the same root however it was built."""
    bm = BlockMap(MemNodes())
    m, model = full_map(bm, 300)
    s = bm.resize(m, 20)
    fresh = bm.update(empty_map(20, FANOUT), list(enumerate(model[:20])))
    assert s.root == fresh.root


def test_level_mismatch_is_corruption() -> None:
    store = MemNodes()
    bm = BlockMap(store)
    m, _ = full_map(bm, 300)
    bad = MapRoot(m.root, m.depth + 1, m.fanout, m.blocks)
    with pytest.raises(ChunkCorrupt, match="level"):
        bm.lookup(bad, 0, 1)


def test_node_cache_is_bounded() -> None:
    bm = BlockMap(MemNodes(), cache_nodes=4)
    m, model = full_map(bm, 1000)
    assert bm.lookup(m, 0, 1000) == model
    assert len(bm._cache) <= 4
