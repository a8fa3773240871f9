"""Which VMs a run takes (plugin/engine/selection.py)."""

from __future__ import annotations

from vmaccel.plugin.engine.selection import Selection, missing_names, select
from vmaccel.plugin.vcenter.models import VmRef


def vm(
    name: str, folder: str = "/DC0/vm", moref: str | None = None, template: bool = False
) -> VmRef:
    return VmRef(
        moref=moref or f"vm-{name}",
        name=name,
        instance_uuid=f"uuid-{name}",
        folder=folder,
        power_state="poweredOn",
        template=template,
        cbt_enabled=False,
        snapshots=(),
        disks=(),
        datacenter="DC0",
    )


INVENTORY = [
    vm("web1", "/DC0/vm/prod"),
    vm("web2", "/DC0/vm/prod/frontend"),
    vm("db1", "/DC0/vm/prod-old"),
    vm("tmpl", "/DC0/vm/prod", template=True),
    vm("test1", "/DC0/vm/test"),
    vm("scratch", "/DC0/vm"),
]


def names(sel: Selection) -> tuple[list[str], list[tuple[str, str]]]:
    chosen, skipped = select(INVENTORY, sel)
    return [v.name for v in chosen], skipped


def test_names() -> None:
    assert names(Selection(names=("web1", "test1")))[0] == ["web1", "test1"]
    assert missing_names(INVENTORY, Selection(names=("web1", "nope"))) == ["nope"]


def test_folders_include_subfolders_but_not_name_prefixes() -> None:
    chosen, skipped = names(Selection(folders=("/DC0/vm/prod",)))
    assert chosen == ["web1", "web2"]  # not db1 in /DC0/vm/prod-old
    assert skipped == [("tmpl", "template (cannot be snapshotted; back up its clone)")]
    assert names(Selection(folders=("/DC0/vm/prod/",)))[0] == ["web1", "web2"]
    assert names(Selection(folders=("/DC0/vm/prod/frontend",)))[0] == ["web2"]


def test_tags_match_by_moref() -> None:
    assert names(Selection(tagged=frozenset({"vm-db1", "vm-scratch"})))[0] == ["db1", "scratch"]


def test_any_criterion_matches_and_each_vm_once() -> None:
    sel = Selection(names=("web1",), folders=("/DC0/vm/prod",), tagged=frozenset({"vm-web1"}))
    assert names(sel)[0] == ["web1", "web2"]


def test_excludes_are_patterns_and_reported() -> None:
    chosen, skipped = names(Selection(folders=("/DC0",), exclude=("web*", "scratch")))
    assert chosen == ["db1", "test1"]
    assert ("web1", "excluded by --exclude-vm") in skipped
    assert ("web2", "excluded by --exclude-vm") in skipped
    assert ("scratch", "excluded by --exclude-vm") in skipped
    assert any(n == "tmpl" and "template" in why for n, why in skipped)


def test_templates_are_skipped_even_by_name() -> None:
    chosen, skipped = names(Selection(names=("tmpl",)))
    assert chosen == []
    assert skipped[0][0] == "tmpl"


def test_empty_selection() -> None:
    assert Selection().empty
    assert not Selection(tagged=frozenset({"vm-1"})).empty
    assert names(Selection()) == ([], [])
