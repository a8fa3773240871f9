"""The backup proxies of a repository (``vmaccel worker``): their catalog rows while they run
(:class:`ProxyRecord`) and what an administrator sees of them (:func:`list_proxies`).

procrastinate keeps only a worker id and a heartbeat per worker; the catalog's ``proxy`` table
(:mod:`vmaccel.catalog.index.proxies`) adds who and where each proxy is, what it serves and
whether it is alive. A proxy's row is added when it starts (refused while a live proxy holds
its name), refreshed with every heartbeat, and stopped when it stops; rows of proxies stopped
or silent for more than :data:`FORGET_AFTER` seconds are dropped whenever a proxy starts.

States (judged by the catalog database's clock): ``running`` (seen within its
``stalled_after``), ``stalled`` (silent longer: killed, hung or its machine gone; its VM jobs
are taken over by the other proxies), ``stopped`` (stopped by a signal or an error).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from vmaccel.catalog.catalogdb import catalog_url, open_index
from vmaccel.catalog.index.protocols import CatalogIndex
from vmaccel.catalog.index.proxies import NewProxy, ProxyRow
from vmaccel.service import vmqueue
from vmaccel.service.context import Context
from vmaccel.service.jobs import catalog
from vmaccel.vocabulary.errors import RepositoryError, UsageError, VmaccelError
from vmaccel.vocabulary.units import format_duration, format_time

logger = logging.getLogger(__name__)

FORGET_AFTER = 7 * 86400.0  # seconds a stopped or silent proxy stays listed
RUNNING, STALLED, STOPPED = "running", "stalled", "stopped"


@dataclass(frozen=True)
class RunningVm:
    """A VM a proxy backs up now: the queued attempt it claimed (:class:`vmqueue.VmTask`)."""

    vm: str
    policy: str
    job: int
    vm_job: int
    attempt: int
    datastore: str

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "policy": self.policy, "job": self.job, "vm_job": self.vm_job,
                "attempt": self.attempt, "datastore": self.datastore}  # fmt: skip


@dataclass(frozen=True)
class ProxyInfo:
    """One proxy as an administrator sees it. Times are UNIX seconds of the catalog
    database's clock; ``silent`` is the seconds since ``last_seen``; ``datastores`` empty:
    it takes VMs of every datastore; ``vms``: what it backs up now (empty when stopped)."""

    name: str
    state: str
    host: str
    pid: int
    datastores: tuple[str, ...]
    max_jobs: int
    worker_id: int | None
    started: float
    last_seen: float
    stopped: float | None
    stalled_after: float
    silent: float
    vms: tuple[RunningVm, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "host": self.host, "pid": self.pid,
            "datastores": list(self.datastores), "max_jobs": self.max_jobs,
            "worker_id": self.worker_id, "started": self.started, "last_seen": self.last_seen,
            "stopped": self.stopped, "stalled_after": self.stalled_after, "silent": self.silent,
            "vms": [v.to_dict() for v in self.vms],
        }  # fmt: skip

    def lines(self) -> list[str]:
        serves = ", ".join(self.datastores) if self.datastores else "every datastore"
        head = f"{self.name}  {self.state}  {self.host} (pid {self.pid})  {serves}," \
               f" {self.max_jobs} at once"  # fmt: skip
        if self.state == RUNNING:
            head += f", up {format_duration(self.last_seen - self.started)}"
        elif self.state == STALLED:
            head += f", silent for {format_duration(self.silent)}" \
                    f" (since {format_time(self.last_seen)})"  # fmt: skip
        elif self.stopped is not None:
            head += f", stopped {format_time(self.stopped)}"
        return [head] + [
            f"  {v.vm}: policy {v.policy}, job {v.job}, attempt {v.attempt} ({v.datastore})"
            for v in self.vms
        ]


@dataclass(frozen=True)
class ProxyList:
    """The proxies of a repository, by name. ``catalog`` is ``postgresql`` or ``sqlite``
    (a repository with its catalog in SQLite has no proxies: its VMs are backed up by
    ``vmaccel serve`` itself); ``now``: the catalog database's time (UNIX seconds)."""

    catalog: str
    now: float
    proxies: tuple[ProxyInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"catalog": self.catalog, "now": self.now,
                "proxies": [p.to_dict() for p in self.proxies]}  # fmt: skip

    def summary(self) -> list[str]:
        if self.catalog != "postgresql":
            return ["no proxies: this repository's catalog is not on PostgreSQL, so its VMs"
                    " are backed up by vmaccel serve itself (backup proxies need a repository"
                    " made with repo init --catalog postgresql://...)"]  # fmt: skip
        if not self.proxies:
            return ["no proxies have run in the last 7 days (start one with vmaccel worker)"]
        return [line for p in self.proxies for line in p.lines()]


def state_of(row: ProxyRow, now: float) -> str:
    """``running``, ``stalled`` or ``stopped`` (see the module docstring)."""
    if row.stopped is not None:
        return STOPPED
    return RUNNING if row.live(now) else STALLED


def list_proxies(ctx: Context) -> ProxyList:
    """The proxies of ``ctx``'s repository that ran within :data:`FORGET_AFTER`, with the
    VMs each backs up now (read from the queue). A repository whose catalog is not on
    PostgreSQL has none (``catalog`` says so)."""
    url = catalog_url(ctx.require_repo())
    if url is None:
        return ProxyList("sqlite", 0.0, ())
    with catalog(ctx) as r:
        rows, now = r.index.proxies(), r.index.clock()
    doing = _running_vms(url) if any(row.stopped is None for row in rows) else {}
    infos = []
    for row in rows:
        state = state_of(row, now)
        vms = doing.get(row.worker_id, ()) if state != STOPPED and row.worker_id else ()
        infos.append(ProxyInfo(
            row.name, state, row.host, row.pid, row.datastores, row.max_jobs, row.worker_id,
            row.started, row.last_seen, row.stopped, row.stalled_after,
            max(now - row.last_seen, 0.0) if state != STOPPED else 0.0, tuple(vms),
        ))  # fmt: skip
    return ProxyList("postgresql", now, tuple(infos))


def _running_vms(url: str) -> dict[int, list[RunningVm]]:
    """The VM backups the queue has claimed and not finished, by worker id."""
    from procrastinate import exceptions as queue_errors

    app = vmqueue.make_app(url)
    try:
        with app.open():
            jobs = app.job_manager.list_jobs(task=vmqueue.TASK_NAME, status=vmqueue.DOING)
    except queue_errors.ProcrastinateException as exc:
        raise RepositoryError(f"the job queue in the catalog database cannot be read: {exc}") \
            from exc  # fmt: skip
    found: dict[int, list[RunningVm]] = {}
    for job in sorted(jobs, key=lambda j: j.id or 0):
        if job.worker_id is None:
            continue
        task = vmqueue.VmTask.of(job.task_kwargs)
        found.setdefault(job.worker_id, []).append(RunningVm(
            task.vm, task.policy, task.job, task.vm_job, task.attempt, task.datastore))  # fmt: skip
    return found


class ProxyRecord:
    """The catalog row of one running proxy, for the proxy's lifetime (a context manager).

    Entering applies pending catalog migrations (as every command that reads jobs does),
    drops rows older than :data:`FORGET_AFTER` and claims ``new.name``: a
    :class:`UsageError` when a live proxy holds it. :meth:`touch` (every heartbeat, from
    any thread) refreshes ``last_seen``; leaving marks the row stopped, whatever ended the
    proxy (a clean stop or an error: it runs no more). Only a killed proxy leaves its row
    unstopped, and the listing then shows it ``stalled``."""

    def __init__(self, ctx: Context, new: NewProxy) -> None:
        self.ctx, self.new = ctx, new
        self.proxy_id = 0
        self._index: CatalogIndex | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> ProxyRecord:
        with catalog(self.ctx):
            pass  # migrates the catalog when it predates the proxy table
        repo = self.ctx.require_repo()
        self._index = open_index(repo, repo / "index.db", create=False)
        try:
            self._claim(drop_old=True)
        except BaseException:
            self._index.close()
            raise
        return self

    def _claim(self, drop_old: bool) -> None:
        index = self._require()
        with index.writing():
            now = index.clock()
            if drop_old and (dropped := index.drop_proxies(now - FORGET_AFTER)):
                logger.info("forgot %d proxies stopped or silent for more than 7 days", dropped)
            row, added = index.claim_proxy_name(self.new, now)
        if not added:
            raise UsageError(
                f"a proxy named {row.name!r} already runs on {row.host} (pid {row.pid}, last"
                f" seen {format_duration(max(now - row.last_seen, 0.0))} ago): stop it, or"
                " give this one another --name"
            )
        self.proxy_id = row.id

    def _require(self) -> CatalogIndex:
        if self._index is None:
            raise RuntimeError("the proxy record is not open")  # a programming error
        return self._index

    def touch(self, worker_id: int | None) -> None:
        """The proxy is alive (its procrastinate worker is ``worker_id`` once known). A row
        that vanished (``repo rebuild-index`` replaced the catalog) is added again."""
        with self._lock:
            index = self._require()
            with index.writing():
                touched = index.touch_proxy(self.proxy_id, index.clock(), worker_id)
            if not touched:
                logger.warning("this proxy's catalog row is gone or stopped; adding it again")
                self._claim(drop_old=False)
                with index.writing():
                    index.touch_proxy(self.proxy_id, index.clock(), worker_id)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        index = self._require()
        try:
            with self._lock, index.writing():
                index.stop_proxy(self.proxy_id, index.clock())
        except VmaccelError as error:  # the database is gone: the row will read stalled
            logger.warning("could not mark this proxy stopped in the catalog: %s", error)
        finally:
            index.close()
            self._index = None
