"""A backup proxy (``vmaccel worker``): claims VM jobs from the queue on the repository's
PostgreSQL catalog and backs the VMs up, as many at once as ``max_jobs``.

Stateless: everything it knows comes from the repository (policies, job rows, the catalog)
and the host's vCenter registry, so any number run on any number of machines, close to the
ESXi hosts (``datastores``: only the queues of those datastores). The global limits (open
snapshots per datastore, VM backups per ESXi host and per vCenter) are slots on the catalog
database that every proxy and the daemon share.

Liveness: the proxy heartbeats every ``heartbeat`` seconds (procrastinate's worker table, and
its own row in the catalog's ``proxy`` table, :mod:`vmaccel.service.proxies`: registered at
start, refused while a live proxy has the same name, marked stopped when it stops).
Every live proxy also looks, as often, for jobs whose proxy missed its heartbeats for
``stalled_after`` seconds (killed, or its machine gone): one proxy at a time (an advisory
lock) removes such a VM's leftover snapshot and hands the attempt to the next claimer.

Stopping: SIGTERM or SIGINT stops claiming; VMs in flight get ``stop_timeout`` seconds to
finish, then stop at their next progress step (snapshots removed) and report interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import psycopg
from procrastinate import JobContext

from vmaccel.catalog.catalogdb import catalog_url
from vmaccel.catalog.index.pgqueue import try_named_lock
from vmaccel.catalog.index.proxies import NewProxy
from vmaccel.service import vmqueue
from vmaccel.service.context import Context
from vmaccel.service.policyrun import Limits
from vmaccel.service.proxies import ProxyRecord
from vmaccel.service.proxyjob import clear_stalled, run_task
from vmaccel.vocabulary.errors import UsageError, VmaccelError

logger = logging.getLogger(__name__)
_REAPER_LOCK = "queue-reaper"


@dataclass(frozen=True)
class ProxyOptions:
    """How one proxy runs: its ``name`` (in job logs), the ``datastores`` whose queues it
    takes (empty: every queue), ``max_jobs`` VMs at once, the global ``limits``, and its
    liveness times in seconds (see the module docstring)."""

    name: str = ""
    datastores: tuple[str, ...] = ()
    max_jobs: int = 2
    limits: Limits = field(default_factory=Limits)
    heartbeat: float = vmqueue.HEARTBEAT
    stalled_after: float = vmqueue.STALLED_AFTER
    stop_timeout: float = 60.0

    @property
    def worker_name(self) -> str:
        return self.name or f"{socket.gethostname()}:{os.getpid()}"


def queue_url(ctx: Context, catalog: str | None = None) -> str:
    """The catalog database whose queue a proxy of the repository takes jobs from
    (:class:`UsageError` when the repository's catalog is not on PostgreSQL, or is not
    ``catalog`` when one is given)."""
    url = catalog_url(ctx.require_repo())
    if url is None:
        raise UsageError(
            "backup proxies need a repository whose catalog is on PostgreSQL"
            " (vmaccel repo init --catalog postgresql://...)"
        )
    if catalog is not None and catalog != url:
        raise UsageError(f"--catalog {catalog} is not this repository's catalog ({url})")
    return url


def run_proxy(ctx: Context, opts: ProxyOptions, catalog: str | None = None) -> None:
    """Run the proxy until it is stopped (see the module docstring)."""
    url = queue_url(ctx, catalog)
    vmqueue.ensure_schema(url)
    app = vmqueue.make_app(url)
    name = opts.worker_name

    @app.task(name=vmqueue.TASK_NAME, pass_context=True)
    def backup_vm(context: JobContext, /, **kwargs: Any) -> None:
        task = vmqueue.VmTask.of(kwargs)
        report = run_task(ctx, task, name, opts.limits, context.should_abort)
        logger.info("%s: attempt %d %s", task.vm, task.attempt,
                    "done" if report.ok else f"failed: {report.error}")  # fmt: skip

    queues = [vmqueue.queue_name(d) for d in opts.datastores] or None
    new = NewProxy(name, socket.gethostname(), os.getpid(), opts.datastores, opts.max_jobs,
                   opts.stalled_after)  # fmt: skip
    with ProxyRecord(ctx, new) as record:  # refused while a live proxy has this name
        logger.info("proxy %s takes VM jobs from %s, %d at once", name,
                    ", ".join(queues) if queues else "every queue", opts.max_jobs)  # fmt: skip
        asyncio.run(_main(app, ctx, opts, url, queues, record))


async def _main(
    app: Any,
    ctx: Context,
    opts: ProxyOptions,
    url: str,
    queues: list[str] | None,
    record: ProxyRecord,
) -> None:
    from procrastinate.worker import Worker  # what app.run_worker_async runs; we need its id

    async with app.open_async():
        app.perform_import_paths()
        worker: Any = Worker(
            app=app, queues=queues, name=opts.worker_name, concurrency=opts.max_jobs,
            update_heartbeat_interval=opts.heartbeat, stalled_worker_timeout=opts.stalled_after,
            shutdown_graceful_timeout=opts.stop_timeout, install_signal_handlers=True,
            delete_jobs="successful",  # the catalog keeps the outcome (attempt_report)
        )  # fmt: skip
        reaper = asyncio.create_task(_reap(app, ctx, opts, url))
        beat = asyncio.create_task(_beat(record, worker, opts))
        try:
            await worker.run()
        finally:
            reaper.cancel()
            beat.cancel()


async def _beat(record: ProxyRecord, worker: Any, opts: ProxyOptions) -> None:
    """Refresh the proxy's catalog row (``last_seen``, its worker id), every heartbeat."""
    while True:
        await asyncio.sleep(opts.heartbeat)
        try:
            await asyncio.to_thread(record.touch, worker.worker_id)
        except VmaccelError as exc:
            logger.warning("refreshing this proxy's catalog row failed: %s", exc)


async def _reap(app: Any, ctx: Context, opts: ProxyOptions, url: str) -> None:
    """Take over stalled jobs, every heartbeat, while the proxy runs."""
    while True:
        await asyncio.sleep(opts.heartbeat)
        try:
            await _reap_once(app, ctx, opts, url)
        except (VmaccelError, psycopg.Error) as exc:
            logger.warning("looking for stalled VM jobs failed: %s", exc)


async def _reap_once(app: Any, ctx: Context, opts: ProxyOptions, url: str) -> None:
    async with try_named_lock(url, _REAPER_LOCK) as held:
        if not held:
            return  # another proxy is taking over stalled jobs right now
        for queue_job, task in await vmqueue.stalled_tasks(app, opts.stalled_after):
            cleared = await asyncio.to_thread(clear_stalled, ctx, task, opts.worker_name)
            if cleared is not None and await vmqueue.retry(app, queue_job):
                logger.warning("%s: took over attempt %d of a proxy that stopped answering",
                               task.vm, task.attempt)  # fmt: skip
