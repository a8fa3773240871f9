"""The VM job queue of backup proxies: procrastinate on the repository's PostgreSQL catalog.

A policy run on a PostgreSQL catalog does not back its VMs up itself: it defers one queue job
per attempt of a VM job (:class:`VmTask`), and ``vmaccel worker`` processes on any number of
machines claim them (procrastinate's row lock with ``SKIP LOCKED``: one claimer per job, no
visibility timeout to re-deliver a long backup), run the backup and store the attempt's report
in the catalog (``attempt_report``), which the run reads back (:mod:`.remotepool`).

Queue jobs live in procrastinate's own tables beside the catalog's, created once
(:func:`ensure_schema`, under an advisory lock so that several starting workers do not race).
Queue names: ``ds/<datastore>`` of the VM's first disk, so a proxy started with
``--datastores`` takes only the VMs it is close to. Each job carries procrastinate's ``lock``
``vm/<vcenter>/<moref>``: two jobs of one VM never run at once, even across runs.

Takeover: workers heartbeat every :data:`HEARTBEAT` seconds (procrastinate). A job whose
worker missed its heartbeats for the stall timeout is *stalled*; any live worker
(:func:`stalled_tasks`, :func:`retry`) removes the VM's leftover snapshot, then puts the job
back to ``todo`` for the next claimer. The attempt stays the same: the run sees one attempt
that took longer.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # procrastinate and psycopg load only where the queue is used, not at
    import procrastinate  # every command's start (the CLI imports the constants below)

logger = logging.getLogger(__name__)

TASK_NAME = "vmaccel.backup_vm"
HEARTBEAT = 5.0  # seconds between a worker's heartbeats
STALLED_AFTER = 30.0  # seconds without a heartbeat before a worker's jobs are taken over

# procrastinate job states, as its job manager reports them
TODO, DOING, SUCCEEDED, FAILED, CANCELLED, ABORTED = (
    "todo", "doing", "succeeded", "failed", "cancelled", "aborted"
)  # fmt: skip
ENDED = (SUCCEEDED, FAILED, CANCELLED, ABORTED)


@dataclass(frozen=True)
class VmTask:
    """One attempt of one VM job of a policy run, as queued: the run's ``job`` and
    ``vm_job`` rows, the ``attempt`` number the run claimed, the ``policy``, the VM (name,
    moref, the datastore its queue is named by) and whether its disks are read in full."""

    job: int
    vm_job: int
    attempt: int
    policy: str
    vcenter: str
    vm: str
    moref: str
    datastore: str
    rescan: bool

    @property
    def queue(self) -> str:
        return queue_name(self.datastore)

    @property
    def lock(self) -> str:
        return f"vm/{self.vcenter}/{self.moref}"

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> VmTask:
        return cls(**{k: kwargs[k] for k in cls.__dataclass_fields__})


def queue_name(datastore: str) -> str:
    """The queue of the VMs whose first disk is on ``datastore``."""
    return f"ds/{datastore}"


def make_app(url: str) -> procrastinate.App:
    """A procrastinate app on the catalog database ``url`` (connections are opened lazily;
    use as ``with app.open():`` for synchronous calls)."""
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=4)
    return procrastinate.App(connector=connector)


def ensure_schema(url: str) -> bool:
    """Create procrastinate's tables in the catalog database unless they exist; True when it
    created them. Safe to call from many processes at once (an advisory lock serialises)."""
    from procrastinate.schema import SchemaManager

    from vmaccel.catalog.index.pgqueue import ensure_queue_tables

    created = ensure_queue_tables(url, "procrastinate_jobs", SchemaManager.get_schema())
    if created:
        logger.info("created the job queue's tables in the catalog database")
    return created


def defer(app: procrastinate.App, task: VmTask) -> int:
    """Queue ``task``; returns the queue job's id. The app must be open."""
    configured = app.configure_task(TASK_NAME, queue=task.queue, lock=task.lock)
    return int(configured.defer(**task.kwargs()))


def status(app: procrastinate.App, queue_job: int) -> str:
    """The state of a queue job (:data:`TODO`, :data:`DOING`, or one of :data:`ENDED`;
    :data:`SUCCEEDED` too once proxies deleted it, as they do with jobs that succeeded)."""
    found = app.job_manager.list_jobs(id=queue_job)
    return str(found[0].status) if found else SUCCEEDED


def abort(app: procrastinate.App, queue_job: int) -> None:
    """Cancel a queue job not started yet, or ask its worker to abort it (the backup stops
    at its next progress step and removes its snapshot). Idempotent."""
    from procrastinate import exceptions as queue_errors

    try:
        app.job_manager.cancel_job_by_id(queue_job, abort=True)
    except queue_errors.ProcrastinateException as exc:  # already ended
        logger.debug("queue job %d: %s", queue_job, exc)


def cancel_unstarted(app: procrastinate.App, queue_job: int) -> bool:
    """Cancel a queue job no proxy has claimed yet; False when one has (or it ended)."""
    from procrastinate import exceptions as queue_errors

    try:
        return bool(app.job_manager.cancel_job_by_id(queue_job, abort=False))
    except queue_errors.ProcrastinateException as exc:
        logger.debug("queue job %d: %s", queue_job, exc)
        return False


async def stalled_tasks(app: procrastinate.App, after: float) -> list[tuple[int, VmTask]]:
    """The running backup jobs whose worker sent no heartbeat for ``after`` seconds."""
    jobs = await app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=after, task_name=TASK_NAME
    )
    return [(int(j.id), VmTask.of(j.task_kwargs)) for j in jobs if j.id is not None]


async def retry(app: procrastinate.App, queue_job: int) -> bool:
    """Put a stalled job back to ``todo`` for the next claimer; False when it is no longer
    running (another worker took it over first)."""
    import psycopg
    from procrastinate import exceptions as queue_errors

    try:
        await app.job_manager.retry_job_by_id_async(queue_job, retry_at=datetime.now(UTC))
    except (queue_errors.ProcrastinateException, psycopg.Error) as exc:
        logger.debug("queue job %d was not retried: %s", queue_job, exc)
        return False
    return True
