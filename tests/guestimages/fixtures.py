"""pytest fixtures for guest disk images and nbdkit (registered as a plugin in tests/conftest.py).

- `guest_images` (session): {"gpt": GuestImage, "mbr": GuestImage}, built once and cached on
  disk (builder.py). The images are shared: never write to them, take `private_image` first.
- `private_image(name)` (function): a sparse private copy in tmp_path, same manifest.
- `guest_day(image, fraction=0.03, seed=1)` (function): a mutated private copy (guestday.py).
- `nbd_export(path)` (function): serve a file read-only with nbdkit; returns the NBD URI, torn
  down at the end of the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from testbed.guestimages import builder, guestday, nbdserver
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import clone_image

__all__ = ["guest_day", "guest_images", "nbd_export", "private_image"]


@pytest.fixture(scope="session")
def guest_images() -> Mapping[str, GuestImage]:
    return {name: builder.load_or_build(name) for name in builder.SPECS}


@pytest.fixture
def private_image(
    guest_images: Mapping[str, GuestImage], tmp_path: Path
) -> Callable[[str], GuestImage]:
    def copy(name: str) -> GuestImage:
        image = guest_images[name]
        dest = tmp_path / f"{name}-{len(list(tmp_path.glob(f'{name}-*.img')))}.img"
        clone_image(image.path, dest)
        return replace(image, path=dest)

    return copy


@pytest.fixture
def guest_day(tmp_path: Path) -> Callable[..., guestday.GuestDay]:
    counter = iter(range(1 << 30))

    def live(image: GuestImage, fraction: float = 0.03, seed: int = 1) -> guestday.GuestDay:
        dest = tmp_path / f"{image.name}-day{seed}-{next(counter)}.img"
        return guestday.apply_day(image, dest, fraction, seed)

    return live


@pytest.fixture
def nbd_export() -> Iterator[Callable[[Path], str]]:
    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(nbdserver.nbd_export(Path(path)))
