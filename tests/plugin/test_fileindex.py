"""The file catalog filled after backups of a real guest disk (GPT: FAT32, ext4, NTFS, LVM)."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.guestday import GuestDay
from testbed.guestimages.model import GuestImage
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.chunkstore import ChunkStore
from vmaccel.cli.app import main
from vmaccel.plugin.engine.fileindex import index_image


def _backup(repo: Path, image: Path) -> None:
    assert (
        main(["backup", "--repo", str(repo), "--source", f"file:{image}", "--name", "g", "--json"])
        == 0
    )


def test_every_volume_is_cataloged_and_unchanged_volumes_are_reused(
    tmp_path: Path, private_image: Callable[[str], GuestImage]
) -> None:
    image = private_image("gpt")
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig())
    _backup(repo, image.path)
    _backup(repo, image.path)
    with Repository.open(repo) as r:
        first, second = r.backups("g")
        img = r.image(second, "disk0")
        parent = r.image(first, "disk0")
        assert img.parent_id == parent.id
        with closing(sqlite3.connect(repo / "index.db")) as db:  # the test reads the rows
            sql = "SELECT volume FROM image_volume WHERE image_id = ?"
            volumes = {row[0] for row in db.execute(sql, (img.id,))}
        # every filesystem of the disk: FAT32, ext4, NTFS and the ext4 logical volume
        assert len(volumes) == 4
    with Repository.open(repo, write=True) as r:
        counts = index_image(r, img, parent)
        assert (counts.walked, counts.followed, counts.reused) == (0, 0, 4)
        for vol in image.volumes:
            for path, expect in vol.files.items():
                if expect.kind != "file":
                    continue
                hits = r.find_files("/" + path.lstrip("/"), vm="g")
                sizes = {(h.backup_id, h.size) for h in hits if h.path == "/" + path.lstrip("/")}
                assert (second.id, expect.size) in sizes, path


def test_find_shows_each_version_after_a_guest_day(
    tmp_path: Path,
    private_image: Callable[[str], GuestImage],
    guest_day: Callable[..., GuestDay],
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = private_image("gpt")
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig())
    _backup(repo, image.path)
    day = guest_day(image, fraction=0.2, seed=3)
    _backup(repo, day.image.path)
    capsys.readouterr()
    volume, change = next(
        (v, c) for v, cs in day.changes.items() for c in cs if c.action == "append"
    )
    before = image.volume(volume).files[change.path]
    after = day.image.volume(volume).files[change.path]
    assert after.size > before.size
    assert (
        main(["files", "find", "--repo", str(repo), "/" + change.path.lstrip("/"), "--json"]) == 0
    )
    hits = json.loads(capsys.readouterr().out)
    # The same tree exists on several volumes of the test disk; the appended one must show
    # both versions, each in its own restore point.
    assert {(h["backup_id"], h["size"]) for h in hits} >= {(1, before.size), (2, after.size)}
    assert not any(h["backup_id"] == 1 and h["size"] == after.size for h in hits)


def test_cataloguing_decodes_only_the_blocks_browsing_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk without a partition table or filesystem (random data in every block): the
    catalog probes its first blocks and finds nothing. The reader it uses must not read ahead
    sequentially (which decoded up to 16 MiB of such a disk per backup for nothing)."""
    image = tmp_path / "noise.img"
    image.write_bytes(random.Random(5).randbytes(16 << 20))
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig())
    _backup(repo, image)
    decoded: list[bytes] = []
    load_many, load_into = ChunkStore.load_many, ChunkStore.load_into

    def spy_many(self: ChunkStore, ids: Iterable[bytes]) -> Any:
        ids = list(ids)
        decoded.extend(ids)
        return load_many(self, ids)

    def spy_into(self: ChunkStore, targets: dict[bytes, Any]) -> Any:
        decoded.extend(targets)
        return load_into(self, targets)

    monkeypatch.setattr(ChunkStore, "load_many", spy_many)
    monkeypatch.setattr(ChunkStore, "load_into", spy_into)
    with Repository.open(repo, write=True) as r:
        (backup,) = r.backups("g")
        img = r.image(backup, "disk0")
        counts = index_image(r, img, None)
    assert (counts.walked, counts.followed, counts.reused) == (0, 0, 0)
    blocks = (16 << 20) // img.block_size
    assert 0 < len(decoded) <= 4, f"{len(decoded)} of {blocks} blocks decoded"
