"""The pure file diff: two listings in path order -> what changed; a path's versions -> history."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from vmaccel.catalog.filediff import diff_listings, path_history
from vmaccel.catalog.index.records import FileRecord, PathVersion, path_order

T0, T1 = 1_700_000_000 * 10**9, 1_700_100_000 * 10**9


def f(
    path: str,
    size: int = 10,
    mtime: int | None = T0,
    inode: int | None = None,
    kind: str = "file",
    mode: int | None = 0o644,
) -> FileRecord:
    return FileRecord(path, kind, size, mtime, inode, mode)


def d(path: str, inode: int | None = None, mtime: int | None = T0) -> FileRecord:
    return FileRecord(path, "dir", 4096, mtime, inode, 0o755)


def ordered(records: Iterable[FileRecord]) -> list[FileRecord]:
    return sorted(records, key=lambda r: path_order(r.path))


def changes(old: Iterable[FileRecord], new: Iterable[FileRecord]) -> set[tuple[str, ...]]:
    out = set()
    for c in diff_listings(ordered(old), ordered(new)):
        out.add((c.change, c.path, c.old_path or "", ",".join(c.fields)))
    return out


BASE = [
    d("/etc", 2),
    f("/etc/hosts", 100, inode=10),
    f("/etc/passwd", 200, inode=11),
    d("/var", 3),
    f("/var/log", 5, inode=12),
]


def test_identical_listings_have_no_changes() -> None:
    assert changes(BASE, BASE) == set()


def test_added_removed_modified_and_type_change() -> None:
    new = [
        d("/etc", 2),
        f("/etc/hosts", 120, T1, inode=10),
        f("/etc/motd", 1, inode=20),
        d("/var", 3),
        FileRecord("/var/log", "symlink", 8, T0, 12, 0o777),
    ]
    assert changes(BASE, new) == {
        ("modified", "/etc/hosts", "", "size,mtime"),
        ("added", "/etc/motd", "", ""),
        ("removed", "/etc/passwd", "", ""),
        ("type_changed", "/var/log", "", ""),
    }


def test_mode_and_replaced_inode_are_modifications() -> None:
    new = [
        d("/etc", 2),
        f("/etc/hosts", 100, inode=99),
        f("/etc/passwd", 200, inode=11, mode=0o600),
        d("/var", 3),
        f("/var/log", 5, inode=12),
    ]
    assert changes(BASE, new) == {
        ("modified", "/etc/hosts", "", "inode"),
        ("modified", "/etc/passwd", "", "mode"),
    }


def test_rename_needs_the_same_inode_and_unchanged_data() -> None:
    new = [
        d("/etc", 2),
        f("/etc/hosts.old", 100, inode=10),
        d("/var", 3),
        f("/var/passwd", 300, T1, inode=11),
        f("/var/log", 5, inode=12),
    ]
    # hosts renamed in place; passwd moved and rewritten: its inode may as well be reused
    # by a new file, so it is a removal plus an addition
    assert changes(BASE, new) == {
        ("renamed", "/etc/hosts.old", "/etc/hosts", ""),
        ("removed", "/etc/passwd", "", ""),
        ("added", "/var/passwd", "", ""),
    }


def test_without_inodes_a_rename_is_removed_plus_added() -> None:  # FAT, old listings
    old = [f("/A.TXT", 5), f("/B.TXT", 6)]
    new = [f("/A.TXT", 5), f("/C.TXT", 6)]
    assert changes(old, new) == {("removed", "/B.TXT", "", ""), ("added", "/C.TXT", "", "")}


def test_moved_directory_renames_it_and_everything_below() -> None:
    old = [
        d("/srv", 2),
        d("/srv/app", 5),
        f("/srv/app/a", inode=6),
        d("/srv/app/lib", 7),
        f("/srv/app/lib/b", inode=8),
        d("/opt", 3),
    ]
    new = [
        d("/srv", 2, T1),
        d("/opt", 3, T1),
        d("/opt/app", 5),
        f("/opt/app/a", inode=6),
        d("/opt/app/lib", 7),
        f("/opt/app/lib/b", inode=8),
    ]
    assert changes(old, new) == {
        ("modified", "/srv", "", "mtime"),
        ("modified", "/opt", "", "mtime"),
        ("renamed", "/opt/app", "/srv/app", ""),
        ("renamed", "/opt/app/a", "/srv/app/a", ""),
        ("renamed", "/opt/app/lib", "/srv/app/lib", ""),
        ("renamed", "/opt/app/lib/b", "/srv/app/lib/b", ""),
    }


def test_hard_links_pair_one_to_one() -> None:
    old = [f("/a", inode=7), f("/b", inode=7)]
    new = [f("/c", inode=7), f("/d", inode=7)]
    assert changes(old, new) == {("renamed", "/c", "/a", ""), ("renamed", "/d", "/b", "")}


HOSTILE = ["/bad\udcff\udcfe", "/new\nline", "/tab\tand space", "/ünï", "/nul?"]


def test_hostile_names_as_the_catalog_stores_them() -> None:
    old = [f(p, inode=i) for i, p in enumerate(HOSTILE, 100)]
    new = [
        f("/bad\udcff\udcfe", 99, T1, inode=100),
        f("/new\nline.moved", inode=101),
        f("/tab\tand space", inode=102),
        f("/ünï", inode=103),
        f("/\udc80\n", inode=500),
    ]
    assert changes(old, new) == {
        ("modified", "/bad\udcff\udcfe", "", "size,mtime"),
        ("renamed", "/new\nline.moved", "/new\nline", ""),
        ("removed", "/nul?", "", ""),
        ("added", "/\udc80\n", "", ""),
    }
    # the report is in path order too: valid UTF-8 first, then undecodable names by bytes
    paths = [c.path for c in diff_listings(ordered(old), ordered(new))]
    assert paths == sorted(paths, key=path_order)
    assert paths[-2:] == ["/bad\udcff\udcfe", "/\udc80\n"]


def test_unordered_input_is_refused() -> None:
    with pytest.raises(ValueError, match="not in path order"):
        diff_listings([f("/b"), f("/a")], [f("/a")])


def test_streams_are_consumed_lazily_in_step() -> None:
    """Neither listing is read ahead of the other (memory bounded by the changes)."""
    seen: list[str] = []

    def stream(side: str, n: int) -> Iterator[FileRecord]:
        for i in range(n):
            seen.append(side)
            yield f(f"/f{i:06d}", inode=i)

    result = diff_listings(stream("a", 1000), stream("b", 1001))
    assert [(c.change, c.path) for c in result] == [("added", "/f001000")]
    run = max(len(s) for s in "".join(seen).replace("ab", "a b").replace("ba", "b a").split())
    assert run <= 2


def v(backup: int, entry: FileRecord | None, volume: str = "p1") -> PathVersion:
    return PathVersion(backup, "web", 1000.0 + backup, "disk0", volume, entry)


def test_history_names_each_change_newest_first() -> None:
    versions = [
        v(1, None),
        v(2, f("/etc/hosts", 10)),
        v(3, f("/etc/hosts", 10)),
        v(4, f("/etc/hosts", 12, T1)),
        v(5, None),
        v(6, FileRecord("/etc/hosts", "dir", 0, T1)),
        v(1, f("/etc/hosts", 10), "p2"),
        v(6, f("/etc/hosts", 10), "p2"),
    ]
    events = [(e.backup_id, e.volume, e.change, e.fields) for e in path_history(versions)]
    assert events == [
        (6, "p1", "appeared", ()),
        (5, "p1", "disappeared", ()),
        (4, "p1", "changed", ("size", "mtime")),
        (2, "p1", "appeared", ()),
        (1, "p2", "appeared", ()),
    ]
    doc = path_history(versions)[2].to_dict()
    assert doc["entry"] == {
        "kind": "file",
        "size": 12,
        "mtime_ns": T1,
        "inode": None,
        "mode": 0o644,
    }
