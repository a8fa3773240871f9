"""A guest day changes exactly what it reports, through the filesystems, and leaves them clean."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from testbed.guestimages import builder
from testbed.guestimages.fscheck import check_clean
from testbed.guestimages.guestday import GuestDay, plan_day
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import mounted
from testbed.guestimages.scan import diff_trees, scan_tree


def test_plan_is_deterministic_and_sized(guest_images: Mapping[str, GuestImage]) -> None:
    files = guest_images["gpt"].volume("linux").files
    plan = plan_day(files, 0.1, seed=3, salt="linux")
    assert plan == plan_day(files, 0.1, seed=3, salt="linux")
    assert plan != plan_day(files, 0.1, seed=4, salt="linux")
    existing = [c for c in plan if c.action != "create"]
    plain = [p for p, fe in files.items() if fe.kind == "file"]
    assert abs(len(existing) - 0.1 * len(plain)) <= 1
    assert {c.action for c in plan} == {"rewrite", "append", "delete", "create"}
    assert all(c.path not in files for c in plan if c.action == "create")


@pytest.mark.parametrize("name", sorted(builder.SPECS))
def test_guest_day_changes_what_it_reports(
    guest_images: Mapping[str, GuestImage], guest_day: Callable[..., GuestDay], name: str
) -> None:
    before = guest_images[name]
    day = guest_day(before, fraction=0.1, seed=11)
    assert day.image.path != before.path
    for old, new in zip(before.volumes, day.image.volumes, strict=True):
        changed = {c.path for c in day.changes[old.name]}
        assert changed, old.name
        for change in day.changes[old.name]:
            if change.action == "delete":
                assert change.path in old.files and change.path not in new.files
            else:
                assert new.files[change.path].sha256 != (
                    old.files[change.path].sha256 if change.path in old.files else None
                )
        untouched = {p for p in old.files if p not in changed and old.files[p].kind != "dir"}
        assert {p: new.files[p] for p in untouched} == {p: old.files[p] for p in untouched}
        check_clean(day.image.path, new)
        with mounted(day.image.path, new) as root:
            assert diff_trees(new.files, scan_tree(root, new.fstype)) == []


def test_guest_day_is_reproducible(
    guest_images: Mapping[str, GuestImage], guest_day: Callable[..., GuestDay]
) -> None:
    first = guest_day(guest_images["mbr"], fraction=0.05, seed=5)
    second = guest_day(guest_images["mbr"], fraction=0.05, seed=5)
    assert first.changes == second.changes
    assert [v.files for v in first.image.volumes] == [v.files for v in second.image.volumes]
