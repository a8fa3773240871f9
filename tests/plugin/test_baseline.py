"""The per-disk full/incremental decision (plugin/engine/baseline.py), one test per branch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmaccel.catalog.index import ImageMeta
from vmaccel.plugin.engine.baseline import Baseline, decide, split_change_id
from vmaccel.plugin.engine.plan import FULL, INCREMENTAL

CID = "52 ab cd ef 01 23 45 67-89 ab cd ef 01 23 45 67"
PARENT = Baseline("inst-1", 2000, "6000c29a-disk", 1 << 30, f"{CID}/4")
NOW = replace(PARENT, change_id=f"{CID}/5")


def test_matching_baseline_with_a_later_sequence_is_incremental() -> None:
    mode, reason = decide(NOW, PARENT)
    assert mode == INCREMENTAL
    assert f"{CID}/4" in reason


@pytest.mark.parametrize(
    ("current", "parent", "why"),
    [
        (NOW, None, "no earlier backup"),
        (replace(NOW, change_id=None), PARENT, "CBT is not active"),
        (NOW, replace(PARENT, change_id=None), "earlier backup has no changeId"),
        (replace(NOW, instance_uuid="inst-2"), PARENT, "not the one of the earlier backup"),
        (replace(NOW, disk_key=2001), PARENT, "not the one of the earlier backup"),
        (replace(NOW, backing_uuid="6000c29a-other"), PARENT, "backing changed"),
        (replace(NOW, capacity=2 << 30), PARENT, f"resized from {1 << 30} to {2 << 30}"),
        (replace(NOW, change_id="garbage"), PARENT, "unrecognised changeId"),
        (NOW, replace(PARENT, change_id="52 ab/x"), "unrecognised changeId"),
        (replace(NOW, change_id="52 00 00-11/9"), PARENT, "CBT was reset"),
        (replace(NOW, change_id=f"{CID}/4"), PARENT, "sequence did not increase"),
        (replace(NOW, change_id=f"{CID}/3"), PARENT, "sequence did not increase"),
    ],
)
def test_every_mismatch_is_a_full_read_with_its_reason(
    current: Baseline, parent: Baseline | None, why: str
) -> None:
    mode, reason = decide(current, parent)
    assert mode == FULL
    assert why in reason


def test_split_change_id() -> None:
    assert split_change_id(f"{CID}/17") == (CID, 17)
    assert split_change_id("no-slash") is None
    assert split_change_id("/5") is None
    assert split_change_id(f"{CID}/") is None


def test_meta_round_trip_and_damaged_meta() -> None:
    def parsed(doc: dict[str, object]) -> Baseline | None:
        return ImageMeta.from_json(doc).baseline

    assert parsed({"baseline": PARENT.to_json()}) == PARENT
    assert parsed({}) is None
    assert parsed({"baseline": "x"}) is None
    assert parsed({"baseline": {"instance_uuid": "i"}}) is None
    assert parsed({"baseline": {**PARENT.to_json(), "capacity": "big"}}) is None
    damaged = {"baseline": {"instance_uuid": "i"}}
    assert ImageMeta.from_json(damaged).to_json() == damaged  # kept verbatim, not lost
