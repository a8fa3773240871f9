"""``vmaccel worker``: a backup proxy taking VM jobs from the queue on the PostgreSQL catalog
(:mod:`vmaccel.daemon.proxy`). Run as many as wanted, on as many machines; each needs the
repository directory (its ``store.json`` and ``catalog.json``) and the vCenter registry.
``vmaccel proxies`` lists them (:mod:`vmaccel.service.proxies`)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import emit
from vmaccel.cli.serve import _LogJsonOpt, _PerDsOpt, _PerHostOpt, _PerVcOpt
from vmaccel.cli.settings import context
from vmaccel.daemon.logs import configured
from vmaccel.service.limits import SNAPSHOTS_PER_DATASTORE
from vmaccel.service.policyrun import Limits
from vmaccel.service.vmqueue import HEARTBEAT, STALLED_AFTER

_CatalogOpt = Annotated[
    str | None,
    typer.Option("--catalog", metavar="URL",
                 help="postgresql://... the repository's catalog (checked against it)."),
]  # fmt: skip
_NameOpt = Annotated[str, typer.Option("--name", help="Name in job logs (default HOST:PID).")]
_DsOpt = Annotated[
    str, typer.Option("--datastores", metavar="DS,...", help="Take only VMs on these datastores.")
]
_MaxJobsOpt = Annotated[int, typer.Option("--max-jobs", min=1, help="VMs backed up at once.")]
_HeartbeatOpt = Annotated[
    float, typer.Option("--heartbeat", min=0.5, metavar="SECONDS", help="Heartbeat interval.")
]
_StalledOpt = Annotated[
    float,
    typer.Option("--stalled-after", min=2.0, metavar="SECONDS",
                 help="Take over the VM jobs of a proxy silent this long."),
]  # fmt: skip
_StopOpt = Annotated[
    float,
    typer.Option("--stop-timeout", min=0.0, metavar="SECONDS",
                 help="On stop, how long VMs in flight may finish."),
]  # fmt: skip


def worker(
    repo: RepoOpt = None,
    catalog: _CatalogOpt = None,
    name: _NameOpt = "",
    datastores: _DsOpt = "",
    max_jobs: _MaxJobsOpt = 2,
    max_per_datastore: _PerDsOpt = SNAPSHOTS_PER_DATASTORE,
    max_per_host: _PerHostOpt = 4,
    max_per_vcenter: _PerVcOpt = 8,
    heartbeat: _HeartbeatOpt = HEARTBEAT,
    stalled_after: _StalledOpt = STALLED_AFTER,
    stop_timeout: _StopOpt = 300.0,
    log_json: _LogJsonOpt = False,
) -> None:
    """Run a backup proxy: claim queued VM jobs and back the VMs up until stopped."""
    from vmaccel.daemon.proxy import ProxyOptions, run_proxy  # psycopg, procrastinate

    if stalled_after < 2 * heartbeat:
        raise typer.BadParameter("must be at least twice --heartbeat", param_hint="--stalled-after")
    debug = logging.getLogger().level == logging.DEBUG
    limits = Limits(max_per_datastore, max_per_host, max_per_vcenter)
    stores = tuple(d.strip() for d in datastores.split(",") if d.strip())
    opts = ProxyOptions(name, stores, max_jobs, limits, heartbeat, stalled_after, stop_timeout)
    with configured(log_json, logging.DEBUG if debug else logging.INFO):
        run_proxy(context(repo), opts, catalog)


def proxies(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """The backup proxies: running, stalled (silent too long) or stopped, what they serve
    and the VMs they back up now."""
    from vmaccel.service.proxies import list_proxies  # procrastinate, psycopg

    emit(list_proxies(context(repo)), as_json)


def register(app: typer.Typer) -> None:
    """Adds ``worker`` and ``proxies`` to the root command. ``proxies`` is a command of its
    own rather than ``worker list``: ``worker`` takes only options, and a sub-command beside
    them would make ``vmaccel worker --repo R ...`` ambiguous."""
    app.command("worker")(worker)
    app.command("proxies")(proxies)
