"""The file catalog: listings stored once per content, found by glob, dropped with backups."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.catalog.conftest import small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.filecatalog import (
    FileRecord,
    attach_listing,
    find_files,
    glob_to_like,
    listing_of,
    store_listing,
)
from vmaccel.catalog.prune import prune
from vmaccel.catalog.retention import RetentionPolicy


def _backup(repo: Repository, vm: str, data: bytes) -> int:
    with repo.begin_backup(vm) as bw:
        w = bw.image_writer("disk0", len(data))
        w.write(0, data)
        bw.finish_image("disk0", w)
        return bw.commit().id


def _image_id(repo: Repository, backup_id: int) -> int:
    return repo.image(repo.backup(backup_id), "disk0").id


NGINX_V1 = FileRecord("/etc/nginx/nginx.conf", "file", 100, 1_700_000_000 * 10**9)
NGINX_V2 = FileRecord("/etc/nginx/nginx.conf", "file", 120, 1_700_100_000 * 10**9)
BASE = [
    FileRecord("/etc", "dir", 0, None),
    FileRecord("/etc/nginx", "dir", 0, None),
    FileRecord("/var/log/syslog", "file", 5000, None),
    FileRecord("/var/log/under_score%.log", "file", 1, None),
]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    Repository.init(tmp_path / "r", small_config())
    return Repository.open(tmp_path / "r", write=True)


def test_listing_is_stored_once_per_content(repo: Repository) -> None:
    with repo, repo.index.writing():
        a = store_listing(repo.index, [*BASE, NGINX_V1])
        b = store_listing(repo.index, list(reversed([*BASE, NGINX_V1])))
        c = store_listing(repo.index, [*BASE, NGINX_V2])
        assert a == b != c
        assert repo.index.listing_ids() == {a, c}
        assert repo.index.listing_size(a) == repo.index.listing_size(c) == len(BASE) + 1


def test_find_names_every_restore_point_with_the_file(repo: Repository) -> None:
    with repo:
        first = _backup(repo, "web", b"\1" * 4096)
        second = _backup(repo, "web", b"\2" * 4096)
        other = _backup(repo, "db", b"\3" * 4096)
        with repo.index.writing():
            v1 = store_listing(repo.index, [*BASE, NGINX_V1])
            v2 = store_listing(repo.index, [*BASE, NGINX_V2])
            attach_listing(repo.index, _image_id(repo, first), "p1", "ext4", v1)
            attach_listing(repo.index, _image_id(repo, second), "p1", "ext4", v2)
            attach_listing(repo.index, _image_id(repo, other), "p1", "ext4", v1)
        hits = find_files(repo.index, "nginx.conf")
        assert [(h.backup_id, h.vm, h.size) for h in hits] == [
            (first, "web", 100), (second, "web", 120), (other, "db", 100)
        ]
        assert [h.backup_id for h in find_files(repo.index, "nginx.conf", vm="web")] == [
            first, second
        ]
        assert {h.path for h in find_files(repo.index, "/etc/*")} == {
            "/etc/nginx", "/etc/nginx/nginx.conf"
        }
        # LIKE wildcards in names are literal characters, not patterns.
        assert [h.path for h in find_files(repo.index, "under_score%.log", vm="db")] == [
            "/var/log/under_score%.log"
        ]
        assert find_files(repo.index, "underXscoreY.log") == []
        assert listing_of(repo.index, _image_id(repo, second), "p1") == v2


def test_glob_translation() -> None:
    assert glob_to_like("nginx.conf") == "%/nginx.conf"
    assert glob_to_like("/etc/*.conf") == "/etc/%.conf"
    assert glob_to_like("*.lo?") == "%.lo_"
    assert glob_to_like("a_b%c") == "%/a\\_b\\%c"


def test_prune_drops_listings_nobody_uses(repo: Repository) -> None:
    with repo:
        old = _backup(repo, "web", b"\1" * 4096)
        new = _backup(repo, "web", b"\2" * 4096)
        with repo.index.writing():
            v1 = store_listing(repo.index, [*BASE, NGINX_V1])
            v2 = store_listing(repo.index, [*BASE, NGINX_V2])
            attach_listing(repo.index, _image_id(repo, old), "p1", "ext4", v1)
            attach_listing(repo.index, _image_id(repo, new), "p1", "ext4", v2)
        prune(repo, RetentionPolicy(last=1))
        assert [h.backup_id for h in find_files(repo.index, "nginx.conf")] == [new]
        assert repo.index.listing_ids() == {v2}
        assert repo.index.listing_size(v1) == 0
