"""Histories of a guest for the anomaly signals: normal days, then a ransomware day.

`SMALL` is a one-volume ext4 disk with the standard tree (~50 files, no 50 MiB file): it
builds in well under a second, so a test can afford 30 days of it per history.
`ransomware_day` does what file-encrypting ransomware does, through the real filesystem:
rewrites a share of the plain (not sparse) files with random bytes in place, renames each to
`<name>.locked`, and leaves a ransom note at the volume root.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from testbed.guestimages import guestday
from testbed.guestimages.layout import ImageSpec, PartSpec
from testbed.guestimages.model import GuestImage, GuestVolume
from testbed.guestimages.mounts import mounted

SMALL = ImageSpec("small", "gpt", 40, (PartSpec(1, 1, 38, "ext4", "root", "root", big_file=False),))
RANSOM_NOTE = "HOW_TO_DECRYPT.txt"
NORMAL_FRACTION = 0.05  # share of files a normal day changes (guestday.plan_day)


@dataclass(frozen=True)
class Attack:
    """What `ransomware_day` did to one volume: the paths encrypted (before renaming)."""

    volume: str
    encrypted: tuple[str, ...]


def normal_day(image: GuestImage, seed: int, day: int) -> GuestImage:
    """Live one ordinary day on `image` in place (seeded by history and day)."""
    return guestday.apply_day(image, image.path, NORMAL_FRACTION, seed * 1000 + day).image


def ransomware_day(image: GuestImage, share: float, seed: int) -> tuple[Attack, ...]:
    """Encrypt round(share * n) of each volume's n plain files in place (see module doc)."""
    rng = random.Random(f"ransom/{seed}")
    return tuple(_encrypt_volume(image.path, vol, share, rng) for vol in image.volumes)


def _encrypt_volume(path: Path, vol: GuestVolume, share: float, rng: random.Random) -> Attack:
    with mounted(path, vol, read_only=False) as root:
        files = sorted(p for p in vol.files if _plain(root / p))
        chosen = sorted(rng.sample(files, round(share * len(files))))
        for p in chosen:
            full = root / p
            size = full.stat().st_size
            with open(full, "r+b") as f:
                f.write(rng.randbytes(size))
            os.rename(full, f"{full}.locked")
        (root / RANSOM_NOTE).write_text("Your files are encrypted. Pay to get them back.\n")
    return Attack(vol.name, tuple(chosen))


def _plain(path: Path) -> bool:
    """A regular file that is neither a link nor sparse (filling a sparse file could need
    more space than the volume has; ransomware skips such files too, or fails on them)."""
    if path.is_symlink() or not path.is_file():
        return False
    st = path.stat()
    return st.st_blocks * 512 >= st.st_size
