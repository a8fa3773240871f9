"""Which snapshots are vmaccel's (plugin/vcenter/snapshots.py): name prefix and JSON marker."""

from __future__ import annotations

import pytest

from vmaccel.plugin.vcenter.models import SnapshotRef
from vmaccel.plugin.vcenter.snapshots import is_ours


@pytest.mark.parametrize(
    ("name", "description", "ours"),
    [
        ("vmaccel-0123456789ab", '{"vmaccel": 1, "run": "0123456789ab"}', True),
        ("vmaccel-like", "my own snapshot", False),
        ("vmaccel-like", "", False),
        ("vmaccel-x", '{"vmaccel": 2}', False),
        ("vmaccel-x", '["vmaccel", 1]', False),
        ("before-upgrade", '{"vmaccel": 1}', False),
        ("Vmaccel-x", '{"vmaccel": 1}', False),
    ],
)
def test_only_prefix_plus_marker_is_ours(name: str, description: str, ours: bool) -> None:
    assert is_ours(SnapshotRef("snapshot-1", name, description)) is ours
