"""Which VMs a backup run takes, and which of their disks it leaves out. Pure: inventory and
tag answers in, decisions out."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from vmaccel.plugin.vcenter.models import DiskRef, VmRef
from vmaccel.vocabulary.disknames import match_disk
from vmaccel.vocabulary.errors import NotFound


@dataclass(frozen=True)
class Selection:
    """VMs matching ANY of ``names``/``folders``/``tagged`` (morefs), minus ``exclude``
    (fnmatch patterns on names). Folders match themselves and their subfolders."""

    names: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    tagged: frozenset[str] = frozenset()
    exclude: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.names or self.folders or self.tagged)

    def wants(self, moref: str, name: str, folder: str) -> bool:
        """Whether a VM is asked for (before --exclude-vm and the template check)."""
        return name in self.names or _in_folder(folder, self.folders) or moref in self.tagged


def _in_folder(folder: str, folders: Collection[str]) -> bool:
    return any(folder == f.rstrip("/") or folder.startswith(f.rstrip("/") + "/") for f in folders)


def select(vms: Sequence[VmRef], sel: Selection) -> tuple[list[VmRef], list[tuple[str, str]]]:
    """(VMs to back up, [(vm name, why skipped)]) — templates and excluded VMs are reported."""
    chosen, skipped = [], []
    for vm in vms:
        if not sel.wants(vm.moref, vm.name, vm.folder):
            continue
        if any(fnmatch.fnmatchcase(vm.name, p) for p in sel.exclude):
            skipped.append((vm.name, "excluded by --exclude-vm"))
        elif vm.template:
            skipped.append((vm.name, "template (cannot be snapshotted; back up its clone)"))
        else:
            chosen.append(vm)
    return chosen, skipped


def missing_names(vms: Sequence[VmRef], sel: Selection) -> list[str]:
    known = {vm.name for vm in vms}
    return [n for n in sel.names if n not in known]


def excluded_disks(
    specs: Iterable[str], vm: str, disks: Sequence[DiskRef]
) -> tuple[frozenset[str], tuple[str, ...]]:
    """(names of the disks of ``vm`` that ``specs`` leave out, warnings).

    A spec is ``VM:DISK`` with DISK in any form of :mod:`vmaccel.vocabulary.disknames`
    (name, key, label, unit; a unit holds a colon too, so the VM part is matched as a prefix).
    A spec for ``vm`` that names none of its disks is a warning listing the choices; one that
    names two disks raises :class:`UsageError`.
    """
    names: set[str] = set()
    warnings: list[str] = []
    identities = [d.identity for d in disks]
    for spec in sorted(specs):
        if not spec.startswith(f"{vm}:"):
            continue
        try:
            names.add(match_disk(spec[len(vm) + 1 :], identities, vm).name)
        except NotFound as exc:
            warnings.append(f"disk exclusion {spec!r} left nothing out: {exc}")
    return frozenset(names), tuple(warnings)
