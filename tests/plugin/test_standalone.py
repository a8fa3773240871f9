"""`vmaccel backup --source file:IMG|nbd:URI`: backups of one disk with no vCenter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.guestimages.guestday import GuestDay
from testbed.guestimages.model import GuestImage
from tests.plugin.conftest import Cli
from tests.plugin.imagecheck import (
    assert_image_equals,
    complete_backups,
    file_data,
    images_of,
    used_extents,
)
from vmaccel.guestfs.extent import intersect, total
from vmaccel.plugin.engine.plan import round_out

BLOCK = 64 * 1024  # the repository's default block size


def backup(cli: Cli, repo: Path, source: str, name: str, *extra: str) -> dict[str, Any]:
    result = cli("backup", "--repo", repo, "--source", source, "--name", name, "--json", *extra)
    assert result.rc == 0, result.err + result.out
    (vm,) = result.json["vms"]
    assert vm["ok"] and vm["vm"] == name
    (disk,) = vm["disks"]
    return disk


def test_file_source_full_then_incremental_after_a_guest_day(
    cli: Cli,
    new_repo: Callable[[str], Path],
    private_image: Callable[[str], GuestImage],
    guest_day: Callable[..., GuestDay],
) -> None:
    repo = new_repo("repo")
    first_image = private_image("gpt")
    day = guest_day(first_image, 0.05, 11)
    second_image = day.image
    versions = [first_image.path, second_image.path]

    first = backup(cli, repo, f"file:{versions[0]}", "kvm1")
    second = backup(cli, repo, f"file:{versions[1]}", "kvm1")
    assert first["mode"] == "full"
    assert second["mode"] == "incremental"
    # Without CBT each run reads what the filesystems use, and no more: the day's growth is
    # all the second run may read beyond the first.
    for disk, path in ((first, versions[0]), (second, versions[1])):
        needed = round_out(intersect(used_extents(path), file_data(path)), BLOCK, disk["size"])
        assert 0 < disk["bytes_read"] <= total(needed)
    grown = total(used_extents(versions[1])) - total(used_extents(versions[0]))
    assert second["bytes_read"] <= first["bytes_read"] + max(grown, 0) + BLOCK * 64
    # ... and stores only what is new.
    assert second["new_bytes"] < first["new_bytes"] / 5
    backups = images_of(repo, "kvm1")
    assert len(backups) == 2
    for images, path in zip(backups, versions, strict=True):
        assert_image_equals(repo, images["disk0"], path, used_extents(path))
    # The second image derives from the first.
    assert backups[1]["disk0"].parent_id == backups[0]["disk0"].id

    # With free-block skipping off, every byte is kept.
    for path in versions:
        disk = backup(cli, repo, f"file:{path}", "kvm1-all", "--no-skip-free")
        assert disk["hole_bytes"] == 0 or disk["mode"] == "incremental"
    all_images = images_of(repo, "kvm1-all")
    assert [i["disk0"].meta.mode for i in all_images] == ["full", "incremental"]
    for images, path in zip(all_images, versions, strict=True):
        assert_image_equals(repo, images["disk0"], path)


def test_nbd_source(
    cli: Cli,
    new_repo: Callable[[str], Path],
    guest_images: dict[str, GuestImage],
    nbd_export: Callable[[Path], str],
) -> None:
    repo = new_repo("repo")
    path = guest_images["mbr"].path
    uri = nbd_export(path)
    disk = backup(cli, repo, f"nbd:{uri}", "mbr", "--no-skip-free")
    assert disk["mode"] == "full"
    # Block status kept the reads to the file's data.
    assert disk["bytes_read"] < path.stat().st_size * 0.5
    (images,) = images_of(repo, "mbr")
    assert images["disk0"].meta.transport == "nbd"
    assert_image_equals(repo, images["disk0"], path)
    again = backup(cli, repo, f"nbd:{uri}", "mbr")
    assert again["mode"] == "incremental" and again["new_bytes"] == 0
    assert_image_equals(repo, images_of(repo, "mbr")[1]["disk0"], path, used_extents(path))


def test_bad_sources_are_one_clear_line(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = new_repo("repo")
    for source, words in (
        ("disk.img", "is not file:PATH or nbd:URI"),
        ("iscsi:foo", "unknown source kind 'iscsi'"),
        (f"file:{tmp_path}/missing.img", "cannot open"),
    ):
        result = cli("backup", "--repo", repo, "--source", source)
        assert result.rc != 0
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.err
    assert complete_backups(repo) == 0
