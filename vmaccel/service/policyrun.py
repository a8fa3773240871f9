"""One policy run's connection to the world: its vCenter session, its live VM selection and
the backup of one VM at a time through the engine (the same path as ``vmaccel backup``).

:class:`PolicySession` is a context manager: it opens the repository as a backup writer
(a lease, beside other backups, gc and prune), logs in to the policy's vCenter and holds both
until the run ends; :meth:`PolicySession.back_up` may be called from several threads at once
(each VM has its own backup writer and holds its own snapshot slots).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING

from vmaccel.catalog.catalogdb import shared_slots
from vmaccel.catalog.repository import Repository
from vmaccel.plugin.engine.report import VmReport
from vmaccel.plugin.engine.selection import Selection, select
from vmaccel.plugin.registry import Registry
from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.limits import SNAPSHOTS_PER_DATASTORE, DatastoreSlots, Slots
from vmaccel.service.policyspec import Policy
from vmaccel.service.runs import Tracker, parse_datastore_paths
from vmaccel.vocabulary.errors import NotFound

if TYPE_CHECKING:
    from vmaccel.catalog.prune import PruneReport
    from vmaccel.catalog.verify import VerifyReport
    from vmaccel.plugin.engine.vmjob import VmBackupOptions
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.models import Endpoint, VmRef

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Global limits of one host, across every policy and CLI run (flock slots under the
    config directory, released by the kernel when a holder dies): open backup snapshots per
    datastore, VM backups at once per ESXi host and per vCenter."""

    per_datastore: int = SNAPSHOTS_PER_DATASTORE
    per_host: int = 4
    per_vcenter: int = 8


def _quiet(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def resolve_tags(endpoint: Endpoint, tags: Sequence[str], match: str) -> tuple[set[str], list[str]]:
    """(morefs of the VMs carrying any / all of ``tags``, notes). A tag or category that does
    not exist selects nothing and is noted (a policy waits for its tag to be created)."""
    if not tags:
        return set(), []
    from vmaccel.plugin.vcenter.tags import TagDirectory

    directory = TagDirectory(endpoint)
    sets: list[set[str]] = []
    notes: list[str] = []
    for tag in tags:
        try:
            ids = directory.tag_ids([tag])
        except NotFound as exc:
            notes.append(f"{exc}: it selects no VM")
            sets.append(set())
            continue
        sets.append(directory.tagged_vms(list(ids.values())))
    if match == "all":
        return set.intersection(*sets), notes
    return set.union(*sets), notes


def policy_selection(policy: Policy, tagged: set[str]) -> Callable[[str, str, str], bool]:
    """The inventory filter ``keep(moref, name, folder)`` of ``policy`` (before exclusions)."""
    folders = Selection(folders=policy.folders)

    def keep(moref: str, name: str, folder: str) -> bool:
        return (
            moref in tagged
            or folders.wants(moref, "", folder)
            or any(fnmatch.fnmatchcase(name, p) for p in policy.vm_patterns)
        )

    return keep


class PolicySession:
    """See the module docstring. ``cancel`` stops VMs in flight at their next check."""

    def __init__(
        self,
        ctx: Context,
        policy: Policy,
        cancel: Cancel,
        limits: Limits = Limits(),
        lease: bool = True,
    ) -> None:
        """``lease=False`` opens the repository for reading only (a dry run)."""
        self.ctx, self.policy, self.cancel, self.limits = ctx, policy, cancel, limits
        self._lease = lease
        self._stack = ExitStack()
        self.repo: Repository | None = None
        self.vc: VCenter | None = None
        self.endpoint: Endpoint | None = None

    def __enter__(self) -> PolicySession:
        from vmaccel.plugin.vcenter.connection import VCenter

        try:
            self.endpoint = Registry(self.ctx.config_dir).endpoint(
                self.policy.vcenter, self.ctx.env
            )
            opened = self.ctx.open(lease="backup") if self._lease else self.ctx.open()
            self.repo = self._stack.enter_context(opened)
            self.vc = self._stack.enter_context(VCenter(self.endpoint))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def select(self) -> tuple[list[VmRef], list[str]]:
        """(the VMs the policy takes now, with their disks; notes on what it leaves out)."""
        from vmaccel.plugin.vcenter.inventory import list_vms

        assert self.vc is not None and self.endpoint is not None  # noqa: S101 - inside with
        tagged, notes = resolve_tags(self.endpoint, self.policy.tags, self.policy.tag_match)
        inventory = list_vms(self.vc, policy_selection(self.policy, tagged))
        chosen, skipped = select(
            inventory, Selection(tagged=frozenset(v.moref for v in inventory),
                                 exclude=self.policy.exclude_vms)
        )  # fmt: skip
        notes += [f"skipping {name}: {why}" for name, why in skipped]
        return chosen, notes

    def find(self, moref: str) -> VmRef:
        """The VM ``moref`` of the policy's vCenter as it is now, with its disks
        (:class:`NotFound` once it has left the inventory)."""
        from vmaccel.plugin.vcenter.inventory import list_vms

        assert self.vc is not None  # noqa: S101 - inside with
        found = list_vms(self.vc, lambda ref, name, folder: ref == moref)
        if not found:
            raise NotFound(f"VM {moref} is no longer in the inventory of {self.policy.vcenter}")
        return found[0]

    def options(self, rescan: bool, slots: Slots) -> VmBackupOptions:
        """The engine's options for one VM of this policy (one VM per engine call)."""
        from vmaccel.plugin.engine.transports import TransportConfig
        from vmaccel.plugin.engine.vmjob import VmBackupOptions

        p = self.policy
        paths = dict(parse_datastore_paths(p.datastore_paths))
        return VmBackupOptions(
            transport=TransportConfig(p.transport, paths, None),
            quiesce=p.quiesce,
            rescan=rescan,
            exclude_disks=frozenset(p.exclude_disks),
            parallel=1,
            checkpoint=self.cancel.check,
            datastore_slots=slots.hold,
        )

    def back_up(self, vm: VmRef, rescan: bool, track: Tracker = _quiet) -> VmReport:
        """Back up one VM as ``vmaccel backup`` does (leftover snapshots removed first, its
        own snapshot always removed), holding the global slots of its vCenter, ESXi host and
        datastores for the whole backup. Failures are in the report."""
        from vmaccel.plugin.engine.vmjob import run_backups

        assert self.vc is not None and self.repo is not None  # noqa: S101 - inside with
        slots = self._slots()
        opts = self.options(rescan, slots[2])
        with slots[0].hold(["vcenter"]), slots[1].hold([vm.host or "unknown-host"]):
            return run_backups(self.vc, self.repo, [vm], opts, self.cancel.guard(track)).vms[0]

    def _slots(self) -> tuple[Slots, Slots, Slots]:
        """The slots of the vCenter, the ESXi host and the datastores: host-wide ``flock``
        slots, or on a PostgreSQL catalog slots every machine sharing it sees (so proxies on
        many machines obey one set of limits)."""
        assert self.repo is not None  # noqa: S101 - inside with
        base, name, check = self.ctx.config_dir / "slots", self.policy.vcenter, self.cancel.check
        lim = self.limits
        per = {"vcenters": lim.per_vcenter, "hosts": lim.per_host, "datastores": lim.per_datastore}
        shared = {k: shared_slots(self.repo.index, f"{k}/{name}", n, check) for k, n in per.items()}
        local = {"vcenters": base / "vcenters", "hosts": base / "hosts", "datastores": base}
        found = [shared[k] or DatastoreSlots(local[k], name, per[k], check) for k in per]
        return found[0], found[1], found[2]

    def remove_leftovers(self, names: Sequence[str]) -> list[str]:
        """Remove vmaccel's leftover snapshots from the VMs named (after a crash); returns
        what was removed, as ``VM: snapshot`` lines."""
        from vmaccel.plugin.vcenter import snapshots
        from vmaccel.plugin.vcenter.inventory import list_vms

        assert self.vc is not None  # noqa: S101 - inside with
        wanted = set(names)
        removed = []
        for vm in list_vms(self.vc, lambda moref, name, folder: name in wanted):
            removed += [f"{vm.name}: {s}" for s in snapshots.remove_leftovers(self.vc, vm)]
        return removed


def prune_policy_vms(
    ctx: Context, counts: Mapping[str, int], vms: Collection[str], lock_wait: float = 60.0
) -> PruneReport | None:
    """Apply a policy's retention (``counts`` by rule: last, hourly, ...) to the backups of
    ``vms`` only; None when every count is 0 (the policy keeps everything). Waits up to
    ``lock_wait`` seconds for another maintenance holder (gc, a CLI prune)."""
    from vmaccel.catalog.prune import prune
    from vmaccel.catalog.retention import RetentionPolicy

    if not any(counts.values()):
        return None
    policy = RetentionPolicy(
        last=counts.get("last", 0), hourly=counts.get("hourly", 0),
        daily=counts.get("daily", 0), weekly=counts.get("weekly", 0),
        monthly=counts.get("monthly", 0), yearly=counts.get("yearly", 0),
    )  # fmt: skip
    with replace(ctx, lock_wait=max(ctx.lock_wait, lock_wait)).open(write=True) as r:
        return prune(r, policy, only_vms=set(vms))


def verify_after_run(ctx: Context, level: str) -> VerifyReport | None:
    """A policy's verification after its run: ``none`` (None), ``sampled`` (the structure:
    every pack trailer against the index, every block map and manifest, chunks by their
    index entries) or ``full`` (also every chunk re-read and re-hashed)."""
    from vmaccel.catalog.verify import verify

    if level == "none":
        return None
    with ctx.open() as r:
        return verify(r, full=level == "full")
