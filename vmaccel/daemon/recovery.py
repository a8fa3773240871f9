"""Recovery from killed runs: the jobs whose owner process died (a worker killed with -9, a
daemon that crashed) become ``interrupted`` and the backup snapshots their running VMs left
are removed. It connects to vCenter, so the daemon runs it in a worker process
(:mod:`vmaccel.daemon.worker`), never in its own.
"""

from __future__ import annotations

from vmaccel.service.cancel import Cancel
from vmaccel.service.context import Context
from vmaccel.service.jobbook import JobBook
from vmaccel.service.jobs import catalog, owner_alive
from vmaccel.service.policies import get_policy
from vmaccel.service.policyrun import PolicySession
from vmaccel.vocabulary.errors import VmaccelError


def recover(ctx: Context, owner: str) -> list[str]:
    """Mark the jobs of dead owners interrupted and remove the snapshots their running VMs
    left (best effort: a VM's next backup removes leftovers too). Returns what was done."""
    with catalog(ctx) as r:
        book = JobBook(r.index, owner)
        orphans = book.interrupt_orphans(owner_alive)
        lines = []
        for job, vms in orphans:
            lines.append(f"job {job.id} ({job.policy}) was interrupted (its process died)")
            if not vms or job.policy is None:
                continue
            try:
                policy = get_policy(ctx, job.policy).policy
                with PolicySession(ctx, policy, Cancel(), lease=False) as session:
                    removed = session.remove_leftovers(vms)
            except VmaccelError as exc:
                book.log(job.id, None, "warning", f"leftover snapshots not removed: {exc}")
                continue
            for line in removed:
                book.log(job.id, None, "info", f"removed leftover snapshot {line}")
            lines += [f"removed leftover snapshot {x}" for x in removed]
    return lines
