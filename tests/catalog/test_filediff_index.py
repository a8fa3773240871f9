"""The file catalog's rows for the diff: identities stored, hostile names round-tripped,
listings streamed in path order (optionally below a prefix), a path's versions per backup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.catalog.conftest import small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.filecatalog import attach_listing, listing_digest, store_listing
from vmaccel.catalog.filediff import diff_listings
from vmaccel.catalog.index.records import FileRecord, path_order

T0 = 1_700_000_000 * 10**9
TREE = [
    FileRecord("/etc", "dir", 4096, T0, 2, 0o755),
    FileRecord("/etc/hosts", "file", 10, T0, 10, 0o644),
    FileRecord("/etc/new\nline", "file", 1, T0, 11, 0o644),
    FileRecord("/etc/bad\udcff", "file", 2, T0, 12, 0o644),
    FileRecord("/etc0", "file", 3, T0, 13, 0o644),
    FileRecord("/etc/lone\ud800", "file", 4, T0, 14, None),  # an NTFS name's lone surrogate
    FileRecord("/var/x", "file", 5, None, None, None),  # FAT-like, or stored before inodes
]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    Repository.init(tmp_path / "r", small_config())
    return Repository.open(tmp_path / "r", write=True)


def _backup(repo: Repository, vm: str) -> int:
    with repo.begin_backup(vm) as bw:
        w = bw.image_writer("disk0", 4096)
        w.write(0, b"x" * 4096)
        bw.finish_image("disk0", w)
        return bw.commit().id


def test_entries_round_trip_in_path_order_with_prefix(repo: Repository) -> None:
    with repo:
        with repo.files.writing():
            listing = store_listing(repo.files, TREE)
        everything = list(repo.files.listing_entries(listing))
        etc = list(repo.files.listing_entries(listing, "/etc"))
    assert everything == sorted(TREE, key=lambda r: path_order(r.path))
    assert {r.path for r in etc} == {r.path for r in TREE} - {"/etc0", "/var/x"}
    assert [r.path for r in etc] == sorted((r.path for r in etc), key=path_order)


def test_identity_is_part_of_the_digest_but_not_for_records_without_one() -> None:
    plain = [FileRecord("/a", "file", 1, T0)]
    assert listing_digest(plain) == listing_digest([FileRecord("/a", "file", 1, T0, None, None)])
    assert listing_digest(plain) != listing_digest([FileRecord("/a", "file", 1, T0, 5, None)])
    ino5, ino6 = (
        FileRecord("/a", "file", 1, T0, 5, 0o644),
        FileRecord("/a", "file", 1, T0, 6, 0o644),
    )
    assert listing_digest([ino5]) != listing_digest([ino6])


def test_streamed_listings_diff_and_path_versions(repo: Repository) -> None:
    with repo:
        first, second = _backup(repo, "web"), _backup(repo, "web")
        changed = [r for r in TREE if r.path != "/etc/hosts"]
        changed.append(FileRecord("/etc/hosts.bak", "file", 10, T0, 10, 0o644))
        with repo.files.writing():
            a, b = store_listing(repo.files, TREE), store_listing(repo.files, changed)
            for backup, listing in ((first, a), (second, b)):
                image = repo.image(repo.backup(backup), "disk0")
                attach_listing(repo.files, image.id, "p1", "ext4", listing)
        result = diff_listings(
            repo.files.listing_entries(a, "/etc"), repo.files.listing_entries(b, "/etc")
        )
        versions = repo.files.path_versions("/etc/hosts", "web")
        hostile = repo.files.path_versions("/etc/bad\udcff", None)
    assert [(c.change, c.path, c.old_path) for c in result] == [
        ("renamed", "/etc/hosts.bak", "/etc/hosts")
    ]
    assert [(v.backup_id, v.entry is not None) for v in versions] == [
        (first, True),
        (second, False),
    ]
    assert [v.entry.size if v.entry else None for v in hostile] == [2, 2]
