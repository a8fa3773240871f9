"""What one filesystem parser reports about the space of its volume."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmaccel.guestfs.extent import Extent


class FsState(enum.StrEnum):
    """Whether the on-disk free-space metadata can be trusted as is.

    CLEAN: no journal/log replay is pending and no errors are recorded, so blocks marked free
    are free. DIRTY: a replay is pending or errors are recorded. UNKNOWN: we could not tell.
    Only CLEAN volumes ever give up space (DESIGN invariant 5); the others are taken whole.
    """

    CLEAN = "clean"
    DIRTY = "dirty"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FsUsage:
    """The used space of one filesystem, in byte offsets *within its volume*.

    `used` is normalized (see guestfs.extent). When `whole_reason` is set, `used` covers the
    whole volume and the reason says why nothing could be given up.
    """

    fstype: str
    state: FsState
    used: tuple[Extent, ...]
    whole_reason: str | None = None
    note: str | None = None  # why a volume with a warning sign still counts as CLEAN


def whole(fstype: str, state: FsState, size: int, reason: str) -> FsUsage:
    """Usage that takes all `size` bytes of the volume, for `reason`."""
    return FsUsage(fstype, state, (Extent(0, size),) if size else (), reason)
