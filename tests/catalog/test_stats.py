"""repository_stats: counts and ratios on repositories whose content is known exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.catalog.conftest import BLOCK, History, flip_byte, small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.stats import repository_stats
from vmaccel.catalog.verify import verify
from vmaccel.cli.app import main


def write_disks(path: Path, disks: dict[str, bytes], **config: object) -> None:
    Repository.init(path, small_config(**config))
    with Repository.open(path, write=True) as repo, repo.begin_backup("vm") as bw:
        for name, data in disks.items():
            w = bw.image_writer(name, len(data))
            w.write(0, data)
            bw.finish_image(name, w)
        bw.commit()


def test_two_identical_disks_dedup_ratio_two(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(64 * BLOCK) + bytes(16 * BLOCK)  # 16 zero blocks: holes
    write_disks(tmp_path / "r", {"a": data, "b": data}, compression="none")
    with Repository.open(tmp_path / "r") as repo:
        s = repository_stats(repo)
    assert (s.backups, s.vms, s.images) == (1, 1, 2)
    assert s.logical_bytes == 2 * len(data)
    assert s.mapped_bytes == 2 * 64 * BLOCK
    assert s.unique_bytes == s.stored_bytes == 64 * BLOCK
    assert s.data_chunks == 64
    assert s.dedup_ratio == 2.0
    assert s.compression_ratio == 1.0


def test_compressible_repeated_content(tmp_path: Path) -> None:
    block = (b"the same block " * BLOCK)[:BLOCK]
    write_disks(tmp_path / "r", {"a": block * 32})
    with Repository.open(tmp_path / "r") as repo:
        s = repository_stats(repo)
    assert s.data_chunks == 1 and s.unique_bytes == BLOCK
    assert s.dedup_ratio == 32.0
    assert s.compression_ratio > 10
    assert s.stored_bytes * s.compression_ratio == pytest.approx(BLOCK)


def test_history_stats_match_the_written_content(history: History) -> None:
    blocks = [
        data[i : i + BLOCK]
        for data in history.expected.values()
        for i in range(0, len(data), BLOCK)
    ]
    nonzero = [b for b in blocks if b != bytes(len(b))]
    unique = set(nonzero)
    with history.open() as repo:
        s = repository_stats(repo)
        nodes = verify(repo).nodes
    pack_files = list((history.path / "packs").glob("[0-9a-f][0-9a-f]/*"))
    assert (s.backups, s.vms, s.images) == (5, 2, 8)
    assert s.logical_bytes == sum(len(d) for d in history.expected.values())
    assert s.mapped_bytes == sum(len(b) for b in nonzero)  # the short last block counts 1000
    assert s.unique_bytes == sum(len(b) for b in unique)
    assert s.data_chunks == len(unique) and s.node_chunks == nodes
    assert (s.packs, s.pack_bytes) == (len(pack_files), sum(p.stat().st_size for p in pack_files))
    assert s.dedup_ratio == pytest.approx(s.mapped_bytes / s.unique_bytes)
    assert s.dedup_ratio > 2.5  # five backups share most blocks
    # the compressible blocks dedup to 7 chunks; the random ones (most unique bytes) do not shrink
    assert 1.0 < s.compression_ratio < 1.2
    assert s.compression_ratio == pytest.approx(s.unique_bytes / s.stored_bytes)
    assert s.unreadable_nodes == 0


def test_empty_repository(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", small_config())
    with Repository.open(tmp_path / "r") as repo:
        s = repository_stats(repo)
    assert (s.backups, s.logical_bytes, s.mapped_bytes, s.packs) == (0, 0, 0, 0)
    assert (s.dedup_ratio, s.compression_ratio) == (1.0, 1.0)


def test_damaged_map_node_is_counted_not_raised(history: History) -> None:
    img = history.image(1, "disk0")
    assert img.root is not None
    loc = history.location(img.root)
    flip_byte(history.pack_path(loc.pack), loc.offset + 1)
    with history.open() as repo:
        s = repository_stats(repo)
    assert s.unreadable_nodes == 1
    assert any("unreadable" in line for line in s.summary())


def test_cli_repo_stats(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repo", "stats", "--repo", str(history.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backups"] == 5 and doc["dedup_ratio"] > 1
    assert main(["repo", "stats", "--repo", str(history.path)]) == 0
    assert "dedup ratio" in capsys.readouterr().out
