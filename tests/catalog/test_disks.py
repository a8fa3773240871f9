"""vmaccel.catalog.disks: a backup's images picked by every disk name form, old images too."""

from __future__ import annotations

from typing import Any

import pytest

from vmaccel.catalog.disks import disk_identities, find_image
from vmaccel.catalog.index import ImageMeta, ImageRow
from vmaccel.vocabulary.disknames import DiskIdentity
from vmaccel.vocabulary.errors import ImageNotFound, UsageError

BASELINE = {
    "instance_uuid": "5003-aa",
    "disk_key": 2001,
    "backing_uuid": None,
    "capacity": 1 << 20,
    "change_id": "52 aa/3",
}


def _image(image_id: int, disk: str, meta: dict[str, Any]) -> ImageRow:
    return ImageRow(
        image_id, 1, disk, 1 << 20, 4096, 16, 1, None, None, None, ImageMeta.from_json(meta)
    )


NEW = _image(1, "disk-2000", {"label": "Hard disk 1", "key": 2000, "unit": "scsi0:0"})
# Written before key/unit were stored: the label and the baseline's disk key are there.
OLDER = _image(2, "disk-2001", {"label": "Hard disk 2", "baseline": BASELINE})
SOURCE = _image(3, "disk0", {"transport": "file"})  # a --source backup
IMAGES = [NEW, OLDER]


def test_identities_from_stored_metadata() -> None:
    assert disk_identities([*IMAGES, SOURCE]) == [
        DiskIdentity("disk-2000", 2000, "Hard disk 1", "scsi0:0"),
        DiskIdentity("disk-2001", 2001, "Hard disk 2", None),
        DiskIdentity("disk0"),
    ]


@pytest.mark.parametrize(
    ("text", "image_id"),
    [
        ("disk-2000", 1),
        ("2000", 1),
        ("hard disk 1", 1),
        ("scsi0:0", 1),
        ("disk-2001", 2),
        ("2001", 2),
        ("Hard disk 2", 2),
    ],
)
def test_find_image_by_every_form(text: str, image_id: int) -> None:
    assert find_image(IMAGES, text, "backup 1 of web").id == image_id


def test_find_image_errors() -> None:
    with pytest.raises(ImageNotFound, match=r"^backup 1 of web has no disk 'scsi0:1'; choose "):
        find_image(IMAGES, "scsi0:1", "backup 1 of web")
    clash = _image(4, "disk-9", {"label": "disk-2000"})
    with pytest.raises(UsageError, match="names 2 disks"):
        find_image([NEW, clash], "disk-2000")
