"""vmaccel.fusemount.tree: the virtual tree from plain data, without FUSE or a repository."""

from __future__ import annotations

import errno
import json
import stat

import pytest

from vmaccel.fusemount.errors import to_errno
from vmaccel.fusemount.source import BackupInfo, DiskInfo, ImageStream
from vmaccel.fusemount.tree import (
    Kind,
    PathNotFound,
    VirtualTree,
    safe_name,
)
from vmaccel.vocabulary.backupref import dir_names, dir_time

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


class FakeView:
    """An in-memory CatalogView that counts how often the backup list is read."""

    def __init__(self) -> None:
        self.rows: list[BackupInfo] = []
        self.images: dict[int, list[DiskInfo]] = {}
        self.backup_queries = 0

    def add(self, vm: str, started: float, disks: dict[str, int], **meta: object) -> BackupInfo:
        b = BackupInfo(len(self.rows) + 1, f"uuid-{len(self.rows) + 1}", vm, started, started + 5,
                       dict(meta))
        self.rows.append(b)
        self.images[b.id] = [
            DiskInfo(b.id * 100 + i, d, size) for i, (d, size) in enumerate(disks.items())
        ]
        return b

    def backups(self) -> list[BackupInfo]:
        self.backup_queries += 1
        return list(self.rows)

    def disks(self, backup_id: int) -> list[DiskInfo]:
        return self.images[backup_id]

    def open_image(self, image_id: int) -> ImageStream:
        raise AssertionError("the tree never reads images")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def view() -> FakeView:
    v = FakeView()
    v.add("web", T0, {"disk0": 10 << 30, "disk1": 1 << 20}, config={"numCPU": 2})
    v.add("web", T0 + 3600, {"disk0": 10 << 30, "disk1": 1 << 20})
    v.add("db/prod", T0 + 60, {"scsi0:0": 4096})
    return v


def tree_of(view: FakeView, clock: Clock | None = None, ttl: float = 1.0,
            vm: str | None = None, backup_id: int | None = None) -> VirtualTree:
    return VirtualTree(view, clock=clock or Clock(), now=lambda: T0, uid=7, gid=8, ttl=ttl,
                       vm=vm, backup_id=backup_id)


def test_layout(view: FakeView) -> None:
    tree = tree_of(view)
    assert tree.listdir("/") == ["db%2Fprod", "web"]
    assert tree.listdir("/web") == ["2026-05-28T20:26:40Z", "2026-05-28T21:26:40Z", "latest"]
    assert tree.listdir("/web/2026-05-28T20:26:40Z") == [
        "disk0-flat.vmdk", "disk0.raw", "disk0.vmdk",
        "disk1-flat.vmdk", "disk1.raw", "disk1.vmdk", "vm.json",
    ]
    assert tree.listdir("/db%2Fprod/2026-05-28T20:27:40Z") == [
        "scsi0:0-flat.vmdk", "scsi0:0.raw", "scsi0:0.vmdk", "vm.json",
    ]


def test_latest_is_a_relative_symlink_to_the_newest(view: FakeView) -> None:
    tree = tree_of(view)
    node = tree.lookup("/web/latest")
    assert node.kind is Kind.LINK and node.target == "2026-05-28T21:26:40Z"
    assert stat.S_ISLNK(tree.attr(node).mode)


def test_files_and_attributes(view: FakeView) -> None:
    tree = tree_of(view)
    d = "/web/2026-05-28T20:26:40Z"
    flat, raw = tree.lookup(f"{d}/disk0-flat.vmdk"), tree.lookup(f"{d}/disk0.raw")
    assert flat.image_id == raw.image_id == 100 and flat.size == raw.size == 10 << 30
    desc = tree.lookup(f"{d}/disk0.vmdk")
    assert desc.content is not None and desc.size == len(desc.content)
    assert b'RW 20971520 VMFS "disk0-flat.vmdk"' in desc.content
    a = tree.attr(flat)
    assert stat.S_ISREG(a.mode) and a.mode & 0o777 == 0o444 and (a.uid, a.gid) == (7, 8)
    assert a.mtime == T0 and a.size == 10 << 30
    assert stat.S_ISDIR(tree.attr(tree.lookup(d)).mode)
    assert tree.attr(tree.lookup("/")).mtime == T0
    assert tree.lookup("/web").mtime == T0 + 3600  # the newest backup


def test_vm_json_is_readable_json(view: FakeView) -> None:
    node = tree_of(view).lookup("/web/2026-05-28T20:26:40Z/vm.json")
    assert node.content is not None
    doc = json.loads(node.content)
    assert doc["vm"] == "web" and doc["backup"]["id"] == 1
    assert doc["backup"]["started"] == "2026-05-28T20:26:40Z"  # vocabulary.units.format_time
    assert doc["meta"] == {"config": {"numCPU": 2}}
    assert [d["disk"] for d in doc["disks"]] == ["disk0", "disk1"]


@pytest.mark.parametrize(
    "path",
    ["/nope", "/web/nope", "/web/2026-05-28T20:26:40Z/nope", "/web/latest/disk0.raw/x",
     "/web/2026-05-28T20:26:40Z/disk0.raw/deeper"],
)
def test_missing_paths(view: FakeView, path: str) -> None:
    with pytest.raises(PathNotFound) as e:
        tree_of(view).lookup(path)
    assert to_errno(e.value) == errno.ENOENT


def test_new_backups_appear_after_ttl_and_pruned_ones_vanish(view: FakeView) -> None:
    clock = Clock()
    tree = tree_of(view, clock, ttl=2.0)
    assert len(tree.listdir("/web")) == 3
    new = view.add("web", T0 + 7200, {"disk0": 10 << 30})
    assert "2026-05-28T22:26:40Z" not in tree.listdir("/web")  # within the TTL: cached
    clock.t = 2.5
    assert "2026-05-28T22:26:40Z" in tree.listdir("/web")
    assert tree.lookup("/web/latest").target == "2026-05-28T22:26:40Z"
    view.rows.remove(new)
    clock.t = 5.0
    assert "2026-05-28T22:26:40Z" not in tree.listdir("/web")


def test_unknown_names_refresh_at_most_once_per_ttl(view: FakeView) -> None:
    clock = Clock()
    tree = tree_of(view, clock, ttl=1.0)
    tree.listdir("/")
    before = view.backup_queries
    for _ in range(50):
        with pytest.raises(PathNotFound):
            tree.lookup("/web/2030-01-01T00:00:00Z")
    assert view.backup_queries == before  # within the TTL nothing is re-read
    view.add("web", T0 + 9000, {"disk0": 1})
    clock.t = 1.5
    assert tree.lookup("/web/2026-05-28T22:56:40Z").kind is Kind.DIR  # found by the refresh


def test_filters(view: FakeView) -> None:
    assert tree_of(view, vm="web").listdir("/") == ["web"]
    only = tree_of(view, backup_id=2)
    assert only.listdir("/") == ["web"]
    assert only.listdir("/web") == ["2026-05-28T21:26:40Z", "latest"]


def test_same_second_backups_get_distinct_stable_names() -> None:
    rows = [BackupInfo(i, str(i), "v", T0 + 0.1 * i, None) for i in (1, 2, 3)]
    assert list(dir_names(rows)) == [
        "2026-05-28T20:26:40Z", "2026-05-28T20:26:40Z_2", "2026-05-28T20:26:40Z_3",
    ]
    assert list(dir_names(rows[:2])) == list(dir_names(rows))[:2]


@pytest.mark.parametrize(
    ("name", "escaped"),
    [("a/b", "a%2Fb"), ("100%", "100%25"), (".", "%2E"), ("..", "%2E%2E"), ("", "%00"),
     ("x\0y", "x%00y"), ("plain", "plain")],
)
def test_safe_name(name: str, escaped: str) -> None:
    assert safe_name(name) == escaped


@pytest.mark.parametrize("order", [("x", "x-flat"), ("x-flat", "x")])
def test_colliding_disk_file_names_keep_every_disk(order: tuple[str, str]) -> None:
    v = FakeView()
    v.add("vm", T0, {order[0]: 512, order[1]: 1024})
    tree = tree_of(v)
    d = f"/vm/{dir_time(T0)}"
    names = tree.listdir(d)
    assert len(names) == 7  # vm.json + 3 per disk, none lost
    nodes = {n: tree.lookup(f"{d}/{n}") for n in names}
    assert {n.size for n in nodes.values() if n.image_id is not None} == {512, 1024}
    descriptors = [n.content for k, n in nodes.items() if n.content and k != "vm.json"]
    assert len(descriptors) == 2
    for text in descriptors:  # each descriptor names an existing flat file of its size
        extent = text.decode().split('VMFS "')[1].split('"')[0]
        sectors = int(text.decode().split("RW ")[1].split()[0])
        assert nodes[extent].image_id is not None and sectors == 1 + (nodes[extent].size - 1) // 512


def test_root_listing_refreshes(view: FakeView) -> None:
    clock = Clock()
    tree = tree_of(view, clock, ttl=1.0)
    assert tree.listdir("/") == ["db%2Fprod", "web"]
    view.add("new-vm", T0, {"disk0": 512})
    clock.t = 1.0
    assert "new-vm" in tree.listdir("/")
