"""Replaying the bed's snapshot log (`BedControl.snapshot_events`, records in bedrecords.py):
how many snapshots were open at once on each datastore, and which records of an excerpt lack
their partner (a creation never removed, a removal whose creation came before the excerpt).

Pure functions of the records: the order is the records' `seq` (the order the bed applied
the changes), whatever order they are passed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from testbed.vsphere.bedrecords import SnapshotEvent


def most_open_per_datastore(events: Iterable[SnapshotEvent]) -> dict[str, int]:
    """Datastore name -> the largest number of snapshots open on it at once, replaying
    `events` by seq; every datastore a "created" record names is present (at least 1).

    A snapshot counts once on each datastore of its VM's disks (as its creation recorded).
    A removal whose creation is not among `events` is ignored: for an excerpt of the log the
    counts leave out snapshots opened before it (pass the excerpt from before they exist).
    """
    open_now: dict[str, tuple[str, ...]] = {}  # snapshot moref -> its datastores
    count: Counter[str] = Counter()
    most: dict[str, int] = {}
    for event in sorted(events, key=lambda e: e.seq):
        if event.event == "created":
            if event.snapshot_moref in open_now:
                continue  # a moref is never created twice; replaying a record twice is harmless
            open_now[event.snapshot_moref] = event.datastores
            for datastore in event.datastores:
                count[datastore] += 1
                most[datastore] = max(most.get(datastore, 0), count[datastore])
        else:
            for datastore in open_now.pop(event.snapshot_moref, ()):
                count[datastore] -= 1
    return most


def unpaired(events: Iterable[SnapshotEvent]) -> list[SnapshotEvent]:
    """The records of `events` without their partner, in seq order: creations not followed by
    their snapshot's removal, removals not preceded by their snapshot's creation. Empty when
    every snapshot the excerpt shows was both created and removed within it."""
    created: dict[str, SnapshotEvent] = {}
    lone: list[SnapshotEvent] = []
    for event in sorted(events, key=lambda e: e.seq):
        if event.event == "created":
            created[event.snapshot_moref] = event
        elif created.pop(event.snapshot_moref, None) is None:
            lone.append(event)
    return sorted([*lone, *created.values()], key=lambda e: e.seq)
