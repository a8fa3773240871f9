"""The disks of a stored backup under every name a user may give them.

Adapts :class:`~vmaccel.catalog.index.ImageRow` to :mod:`vmaccel.vocabulary.disknames`: an
image's identity is its stored disk name plus the label, device key and controller unit its
metadata holds (``label``, ``key``, ``unit``; the key of older images comes from their
invariant-3 baseline or from a ``disk-KEY`` name). Pure: no index access.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vmaccel.catalog.index import ImageRow
from vmaccel.vocabulary.disknames import DiskIdentity, match_disk, stored_identity
from vmaccel.vocabulary.errors import ImageNotFound


def disk_identity(image: ImageRow) -> DiskIdentity:
    """Every name ``image``'s disk answers to."""
    meta = image.meta
    key = meta.key
    if key is None and meta.baseline is not None:
        key = meta.baseline.disk_key
    return stored_identity(image.disk, key, meta.label, meta.unit)


def disk_identities(images: Iterable[ImageRow]) -> list[DiskIdentity]:
    """The identities of ``images`` (one backup's), in their order."""
    return [disk_identity(i) for i in images]


def find_image(images: Sequence[ImageRow], text: str, where: str = "") -> ImageRow:
    """The image of ``images`` (one backup's) whose disk ``text`` names in any form: stored
    name, key, ``disk-KEY``, label or unit. ``where`` ("backup 3 of web") opens the messages.

    Raises :class:`ImageNotFound` listing the choices, :class:`UsageError` when ``text``
    names two disks."""
    chosen = match_disk(text, disk_identities(images), where, missing=ImageNotFound)
    return next(i for i in images if i.disk == chosen.name)
