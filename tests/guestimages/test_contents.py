"""Each filesystem is clean and holds exactly the recorded tree; the cache makes rebuilds free."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import pytest

from testbed.guestimages import builder, model
from testbed.guestimages.fscheck import check_clean
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import mounted
from testbed.guestimages.scan import diff_trees, scan_tree

VOLUMES = [(n, v) for n in sorted(builder.SPECS) for v in builder.volume_names(n)]


@pytest.mark.parametrize(("name", "volume"), VOLUMES)
def test_filesystem_is_clean(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    check_clean(guest_images[name].path, guest_images[name].volume(volume))


@pytest.mark.parametrize(("name", "volume"), VOLUMES)
def test_mounted_tree_matches_manifest(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    vol = guest_images[name].volume(volume)
    with mounted(guest_images[name].path, vol) as root:
        assert diff_trees(vol.files, scan_tree(root, vol.fstype)) == []


@pytest.mark.parametrize(
    ("name", "volume"), [("gpt", "linux"), ("gpt", "windows"), ("gpt", "lv-data"), ("mbr", "xfs")]
)
def test_sparse_file_keeps_its_holes(
    guest_images: Mapping[str, GuestImage], name: str, volume: str
) -> None:
    vol = guest_images[name].volume(volume)
    expect = vol.files["sparse.img"]
    assert expect.data is not None
    with mounted(guest_images[name].path, vol) as root:
        st = os.stat(root / "sparse.img")
    written = sum(length for _, length in expect.data)
    assert st.st_size == expect.size
    assert st.st_blocks * 512 < written + 1024 * 1024, "the hole was allocated"


def test_manifest_records_the_hard_cases(guest_images: Mapping[str, GuestImage]) -> None:
    files = guest_images["gpt"].volume("linux").files
    targets = {fe.target for fe in files.values() if fe.kind == "symlink"}
    assert {"/etc/passwd", "../../.."} <= targets
    assert sum(fe.kind == "hardlink" for fe in files.values()) == 2
    assert max(p.count("/") for p in files) >= 12
    assert any(not p.isascii() for p in files) and any(" " in p for p in files)
    assert files["big/random.bin"].size == 50 << 20
    assert files["empty.bin"].size == 0
    fat = guest_images["gpt"].volume("esp").files
    assert all(fe.kind in ("file", "dir") for fe in fat.values()), "FAT has no links"


@pytest.mark.parametrize("name", sorted(builder.SPECS))
def test_manifest_round_trips(guest_images: Mapping[str, GuestImage], name: str) -> None:
    image = guest_images[name]
    again = model.load_image(model.dump_image(image))
    assert model.dump_image(again) == model.dump_image(image)


def test_warm_cache_costs_nothing(guest_images: Mapping[str, GuestImage]) -> None:
    started = time.monotonic()
    again = {name: builder.load_or_build(name) for name in builder.SPECS}
    assert time.monotonic() - started < 1.0
    assert {n: model.dump_image(i) for n, i in again.items()} == {
        n: model.dump_image(i) for n, i in guest_images.items()
    }
