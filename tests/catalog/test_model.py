"""Property test: any chain of synthetic fulls reads back exactly what a bytearray model holds.

Each example builds a chain of backups of one disk, each from its parent via
``image_writer(parent=...)``, with random writes (random, zero and repeated content at
block-aligned offsets), punches, growth and shrinking, then reads back *every* backup of the
chain and compares it with the model. Blocks are 4 KiB and the map fanout 16, so disks of up
to 64 blocks have trees of depth 1 to 2 (and 3 after growth past 256 blocks is not needed).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import ImageRow

BS = 4096
MAX_BLOCKS = 64


def _content(kind: str, n: int, seed: int, model: bytearray) -> bytes:
    if kind == "zero":
        return bytes(n)
    if kind == "repeat":  # the same block many times: dedup inside one write
        return (bytes([seed % 256]) * BS * ((n + BS - 1) // BS))[:n]
    starts = range(0, len(model) - n + 1, BS)
    if kind == "copy" and starts:  # content already stored: dedup across backups
        start = starts[seed % len(starts)]
        return bytes(model[start : start + n])
    return random.Random(seed).randbytes(n)


@st.composite
def sizes(draw: st.DrawFn) -> int:
    blocks = draw(st.integers(1, MAX_BLOCKS))
    tail = draw(st.sampled_from([0, 0, 0, 1, 511, 2048, 4095]))
    return blocks * BS - (BS - tail if tail else 0)


def _apply_ops(data: st.DataObject, w: object, model: bytearray, size: int) -> None:
    blocks = (size + BS - 1) // BS
    for _ in range(data.draw(st.integers(0, 6), label="ops")):
        first = data.draw(st.integers(0, blocks - 1), label="first")
        count = data.draw(st.integers(1, min(blocks - first, 24)), label="count")
        off, end = first * BS, min((first + count) * BS, size)
        if data.draw(st.booleans(), label="punch"):
            w.punch(off, end - off)  # type: ignore[attr-defined]
            model[off:end] = bytes(end - off)
            continue
        kind = data.draw(st.sampled_from(["random", "zero", "repeat", "copy"]), label="kind")
        payload = _content(kind, end - off, data.draw(st.integers(0, 2**16)), model)
        w.write(off, payload)  # type: ignore[attr-defined]
        model[off:end] = payload


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), first_size=sizes(), chain=st.lists(sizes(), min_size=1, max_size=4))
def test_synthetic_fulls_match_the_model(
    data: st.DataObject, first_size: int, chain: list[int]
) -> None:
    with tempfile.TemporaryDirectory(prefix="vmaccel-model-") as tmp:
        path = Path(tmp) / "r"
        Repository.init(path, RepositoryConfig(block_size=BS, map_fanout=16))
        models: list[tuple[ImageRow, bytes]] = []
        model = bytearray()
        parent: ImageRow | None = None
        with Repository.open(path, write=True) as repo:
            for size in [first_size, *chain]:
                del model[size:]
                model.extend(bytes(size - len(model)))
                with repo.begin_backup("vm") as bw:
                    w = bw.image_writer("d", size, parent=parent)
                    _apply_ops(data, w, model, size)
                    bw.finish_image("d", w, parent)
                    row = bw.commit()
                parent = repo.image(row, "d")
                models.append((parent, bytes(model)))
        with Repository.open(path) as repo:
            for n, (img, expect) in enumerate(models):
                root = repo.map_root(img)
                assert root.blocks * BS >= img.size
                with repo.open_image(img) as r:
                    got = r.read()
                assert len(got) == len(expect), f"backup {n}: size"
                if got != expect:
                    bad = next(i for i in range(len(got)) if got[i] != expect[i])
                    raise AssertionError(
                        f"backup {n} differs first at byte {bad} (block {bad // BS})"
                    )
                holes = {b for b in range(root.blocks) if not any(expect[b * BS : (b + 1) * BS])}
                stored = {b for b, _ in repo.blockmap.iter_blocks(root)}
                assert not holes & stored, f"backup {n}: zero blocks were stored"
