"""Whether a disk may be backed up incrementally (DESIGN invariant 3). Pure; decided per disk.

An incremental is allowed only when the stored baseline of the parent image (VM instance uuid,
disk key, backing uuid, capacity, changeId uuid part and an increasing sequence) matches the
disk as the new snapshot shows it. Anything else is a full read, with the reason.
"""

from __future__ import annotations

from vmaccel.catalog.index import Baseline
from vmaccel.plugin.engine.plan import FULL, INCREMENTAL

__all__ = ["Baseline", "decide", "split_change_id"]  # Baseline: the record images store


def split_change_id(change_id: str) -> tuple[str, int] | None:
    """``"52 ab .. ef/17"`` -> ("52 ab .. ef", 17); None when it is not of that form."""
    uuid_part, sep, seq = change_id.rpartition("/")
    if not sep or not uuid_part or not seq.isdigit():
        return None
    return uuid_part, int(seq)


def decide(current: Baseline, parent: Baseline | None) -> tuple[str, str]:
    """(mode, reason) for one disk."""
    if parent is None:
        return FULL, "no earlier backup of this disk"
    if current.change_id is None:
        return FULL, "CBT is not active on this disk yet"
    if parent.change_id is None:
        return FULL, "the earlier backup has no changeId"
    if (current.instance_uuid, current.disk_key) != (parent.instance_uuid, parent.disk_key):
        return FULL, "the disk is not the one of the earlier backup"
    if current.backing_uuid != parent.backing_uuid:
        return FULL, "the disk's backing changed (replaced or restored)"
    if current.capacity != parent.capacity:
        return FULL, f"the disk was resized from {parent.capacity} to {current.capacity} bytes"
    now, then = split_change_id(current.change_id), split_change_id(parent.change_id)
    if now is None or then is None:
        return FULL, "unrecognised changeId format"
    if now[0] != then[0]:
        return FULL, "CBT was reset since the earlier backup"
    if now[1] <= then[1]:
        return FULL, "the changeId sequence did not increase (snapshot reverted?)"
    return INCREMENTAL, f"CBT changes since {parent.change_id}"
