"""Which VMs of a vCenter no policy protects ("unprotected"): every VM that is no template and
that no enabled policy of that vCenter selects (by tag, folder or name, minus its
exclusions). Read live from vCenter; changes nothing."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from vmaccel.plugin.registry import Registry
from vmaccel.service.context import Context
from vmaccel.service.policyrun import policy_selection, resolve_tags
from vmaccel.service.policyspec import Policy


def unprotected_vms(ctx: Context, vcenter: str, policies: Sequence[Policy]) -> list[str]:
    """Names of the VMs of ``vcenter`` that none of ``policies`` (those of that vCenter that
    are enabled count) selects, sorted."""
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.inventory import list_vms

    endpoint = Registry(ctx.config_dir).endpoint(vcenter, ctx.env)
    mine = [p for p in policies if p.vcenter == vcenter and p.enabled]
    keeps = []
    for p in mine:
        tagged, _ = resolve_tags(endpoint, p.tags, p.tag_match)
        keeps.append((p, policy_selection(p, tagged)))
    with VCenter(endpoint) as vc:
        vms = [v for v in list_vms(vc) if not v.template]
    covered = {
        vm.name
        for vm in vms
        for p, keep in keeps
        if keep(vm.moref, vm.name, vm.folder)
        and not any(fnmatch.fnmatchcase(vm.name, x) for x in p.exclude_vms)
    }
    return sorted(v.name for v in vms if v.name not in covered)
