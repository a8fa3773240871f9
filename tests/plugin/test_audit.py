"""The CBT audit of a rescan (plugin/engine/audit.py) on a small real repository."""

from __future__ import annotations

from pathlib import Path

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.blockmap import MapRoot
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.audit import unannounced

BS = 4096
BLOCKS = 40  # with fanout 16 the map has several levels


def block(i: int, salt: bytes = b"") -> bytes:
    return (b"%d:%s;" % (i, salt) * BS)[:BS]


def test_blocks_changed_outside_the_announced_extents_are_found(tmp_path: Path) -> None:
    Repository.init(tmp_path, RepositoryConfig(block_size=BS, map_fanout=16, pack_size=65536))
    size = BLOCKS * BS
    with Repository.open(tmp_path, write=True) as repo:
        with repo.begin_backup("vm") as bw:
            w = bw.image_writer("disk", size)
            for i in range(BLOCKS):
                w.write(i * BS, block(i))
            bw.finish_image("disk", w)
            bw.commit()
        parent_row = repo.images(repo.backups("vm")[0])[0]
        with repo.begin_backup("vm") as bw:
            w = bw.image_writer("disk", size, parent_row)
            for i in (3, 4, 20, 21, 22, 33, 39):  # the new content
                w.write(i * BS, block(i, b"new"))
            w.punch(30 * BS, BS)  # freed by the guest: a hole by plan, not a CBT miss
            pending = bw.finish_image("disk", w, parent_row)
            parent = repo.map_root(parent_row)
            new = MapRoot(pending.root, pending.depth, parent.fanout, BLOCKS)
            announced = [
                Extent(3 * BS, 2 * BS),  # 3, 4 announced
                Extent(20 * BS + 100, 10),  # touches block 20 only partly: 20 is not "quiet"
            ]
            read = [Extent(0, 30 * BS), Extent(31 * BS, 9 * BS)]  # everything but block 30
            found = unannounced(bw.blockmap, parent, new, announced, read, BS)
            assert found == (Extent(21 * BS, 2 * BS), Extent(33 * BS, BS), Extent(39 * BS, BS))
            # A CBT that announced everything leaves nothing to report.
            everything = [Extent(0, size)]
            assert unannounced(bw.blockmap, parent, new, everything, read, BS) == ()
            # Blocks that were not read (freed ones) are never reported, announced or not.
            assert unannounced(bw.blockmap, parent, new, [], read, BS) == (
                Extent(3 * BS, 2 * BS),
                Extent(20 * BS, 3 * BS),
                Extent(33 * BS, BS),
                Extent(39 * BS, BS),
            )
            bw.abort()
