"""An LVM logical volume seen by vmaccel equals the LV as LVM and the kernel see it.

This machine's kernel has no device-mapper (no /dev/mapper/control), so `vgchange -ay` cannot
activate the LV. The oracle therefore takes the LV's segments from LVM's own tool (`lvs
--segments` on a loop device of the PV, tests/guestimages/oracle.py), lays them out in a
scratch file, loop-mounts that with the kernel's ext4, and compares every name, type, size,
mode and byte with what `vmaccel restore file` extracts from a standalone backup of the disk
(vmaccel's own LVM and ext4 readers). Only the LVM reader of vmaccel is under test: neither
side shares its code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from testbed.guestimages.model import GuestImage
from testbed.guestimages.scan import diff_trees, scan_tree
from tests.guestimages.oracle import tool_manifest, tool_volumes
from tests.plugin.clirepo import backup
from tests.plugin.conftest import Cli


def test_logical_volume_files_equal_the_kernel_mount_of_the_lv(
    cli: Cli,
    new_repo: Callable[[str], Path],
    guest_images: Mapping[str, GuestImage],
    tmp_path: Path,
) -> None:
    image = guest_images["gpt"]
    (lv,) = [v for v in tool_volumes(image.path, image) if v.lvm is not None]
    assert len(lv.extents) >= 2  # the LV has several segments: its layout matters
    kernel = tool_manifest(image.path, lv)
    assert len(kernel) > 10

    repo = new_repo("repo")
    backup(cli, repo, image.path, "g")
    vg, name = lv.lvm or ("", "")
    volume = f"{vg}-{name}"  # vmaccel names an LV VG-LV, as device-mapper does
    out = tmp_path / "out"
    r = cli("restore", "file", "g@latest", f"{volume}/", "--repo", repo, "--to", out, "--json")
    assert r.rc == 0, r.err + r.out
    assert r.json["failed"] == [] and r.json["files"] > 0, r.json
    ours = scan_tree(out / volume, "ext4")
    # The restore's documented policy, applied to the kernel's view: symlinks leaving the
    # target are skipped (and reported), hard links become copies.
    skipped = {e["path"].removeprefix(f"{volume}/") for e in r.json["skipped"]}
    assert all("escapes" in e["reason"] or "absolute" in e["reason"] for e in r.json["skipped"])
    expected = {}
    for path, entry in kernel.items():
        if path in skipped:
            assert entry.kind == "symlink", (path, entry)
            continue
        expected[path] = (
            replace(entry, kind="file", target=None) if entry.kind == "hardlink" else entry
        )
    assert 0 < len(skipped) < 5 and r.json["hardlink_copies"] > 0
    problems = diff_trees(expected, ours)
    assert problems == [], problems
