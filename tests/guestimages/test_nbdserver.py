"""nbdkit serves the images read-only and its block status reports exactly the file's holes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from testbed.guestimages import builder
from testbed.guestimages.model import GuestImage
from testbed.guestimages.nbdserver import NBD_STATE_HOLE, file_holes, nbd_holes


@pytest.mark.parametrize("name", sorted(builder.SPECS))
def test_block_status_matches_file_holes(
    guest_images: Mapping[str, GuestImage], nbd_export: Callable[[Path], str], name: str
) -> None:
    path = guest_images[name].path
    holes = file_holes(path)
    assert holes, "a fresh image must be sparse"
    assert nbd_holes(nbd_export(path)) == holes


def test_nbdinfo_map_agrees(
    guest_images: Mapping[str, GuestImage], nbd_export: Callable[[Path], str]
) -> None:
    path = guest_images["gpt"].path
    out = subprocess.run(
        ["nbdinfo", "--map", "--json", nbd_export(path)], capture_output=True, text=True, check=True
    ).stdout
    mapped = [(e["offset"], e["length"]) for e in json.loads(out) if e["type"] & NBD_STATE_HOLE]
    merged: list[tuple[int, int]] = []
    for off, length in mapped:
        if merged and sum(merged[-1]) == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((off, length))
    assert merged == file_holes(path)


def test_export_is_read_only(
    guest_images: Mapping[str, GuestImage], nbd_export: Callable[[Path], str]
) -> None:
    import nbd

    h = nbd.NBD()
    h.connect_uri(nbd_export(guest_images["mbr"].path))
    try:
        assert h.is_read_only()
        assert h.get_size() == guest_images["mbr"].size
        with pytest.raises(nbd.Error):
            h.pwrite(b"x" * 512, 0)
    finally:
        h.shutdown()


def test_private_copy_keeps_holes(
    guest_images: Mapping[str, GuestImage], private_image: Callable[[str], GuestImage]
) -> None:
    copy = private_image("gpt")
    assert copy.path != guest_images["gpt"].path
    assert file_holes(copy.path) == file_holes(guest_images["gpt"].path)
