"""Restores started through the API, run as tasks in the server process with progress.

A task is queued when its request is accepted (``202``), runs on a small pool of worker
threads (the service call is the CLI's, so it obeys the same confinement rules), and ends
``succeeded``, ``warning`` (a file restore that left entries behind: see its report),
``failed`` or ``cancelled``. ``done``/``total`` count bytes where the service reports
progress (a disk restore); a file restore reports only its states. Cancelling a queued task
drops it; a running disk restore stops at its next progress step and removes its partial
file; a running file restore cannot be stopped half-way and runs to its end.

Tasks live in memory: the newest :data:`KEEP` finished ones are kept for listing, a restart
forgets them. Every change bumps ``version``, which the event stream watches.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmaccel.service.cancel import Cancel
from vmaccel.vocabulary.errors import Interrupted, NotFound, VmaccelError, http_status

logger = logging.getLogger(__name__)

KEEP = 200
FINISHED = frozenset({"succeeded", "warning", "failed", "cancelled"})
Tracker = Callable[[str, int], Callable[[int], None]]


class Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


Work = Callable[[Cancel, Tracker], tuple[Report, VmaccelError | None]]
"""What a task runs: returns its report and, for a partial success, the error it ends with."""


@dataclass(frozen=True)
class TaskView:
    """A task as it stands. Times are UNIX seconds; ``done``/``total`` bytes (0 when the
    work reports no progress); ``result`` the service's report, ``error`` as the API's
    error bodies hold it (``status``, ``type``, ``message``)."""

    id: str
    kind: str
    request: dict[str, Any]
    state: str
    created: float
    started: float | None
    finished: float | None
    done: int
    total: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "request": self.request,
            "state": self.state,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "done": self.done,
            "total": self.total,
            "result": self.result,
            "error": self.error,
        }


@dataclass
class _Task:
    id: str
    kind: str
    request: dict[str, Any]
    cancel: Cancel = field(default_factory=Cancel)
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    version: int = 0

    def view(self) -> TaskView:
        return TaskView(
            self.id, self.kind, dict(self.request), self.state, self.created, self.started,
            self.finished, self.done, self.total, self.result, self.error, self.version,
        )  # fmt: skip


class TaskRunner:
    """Runs tasks on ``workers`` threads. Thread safe."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api-task")
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._order = itertools.count()

    def submit(self, kind: str, request: dict[str, Any], work: Work) -> TaskView:
        """Queue ``work``; returns the task at once."""
        task = _Task(uuid.uuid4().hex[:16], kind, request)
        with self._lock:
            self._tasks[task.id] = task
            self._forget_old()
            view = task.view()
        self._pool.submit(self._run, task, work)
        return view

    def get(self, task_id: str) -> TaskView:
        with self._lock:
            return self._task(task_id).view()

    def list(self) -> list[TaskView]:
        """Every task kept, newest first."""
        with self._lock:
            return [t.view() for t in reversed(self._tasks.values())]

    def cancel(self, task_id: str) -> TaskView:
        """Ask a task to stop (see the module docstring); a finished task stays as it is."""
        with self._lock:
            task = self._task(task_id)
            if task.state not in FINISHED:
                task.cancel.request("cancelled through the API")
                if task.state == "queued":
                    self._finish(task, "cancelled")
            return task.view()

    def close(self) -> None:
        """Cancel what is queued or running and wait for the workers to end."""
        with self._lock:
            for t in self._tasks.values():
                t.cancel.request("the server is shutting down")
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _task(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(f"no restore task {task_id!r} (tasks are kept until a restart)")
        return task

    def _forget_old(self) -> None:
        done = [t for t in self._tasks.values() if t.state in FINISHED]
        for t in done[: max(len(done) - KEEP, 0)]:
            del self._tasks[t.id]

    def _finish(self, task: _Task, state: str) -> None:
        task.state, task.finished = state, time.time()
        task.version += 1

    def _run(self, task: _Task, work: Work) -> None:
        with self._lock:
            if task.state != "queued":
                return
            task.state, task.started = "running", time.time()
            task.version += 1
        try:
            report, partial = work(task.cancel, self._tracker(task))
        except Interrupted as exc:
            self._end(task, "cancelled", None, exc)
        except VmaccelError as exc:
            self._end(task, "failed", None, exc)
        except OSError as exc:
            self._end(task, "failed", None, exc)
        except Exception as exc:
            # The top of a worker thread: a bug must still end its task (as failed, 500),
            # or the task would show "running" forever.
            logger.exception("task %s (%s) failed unexpectedly", task.id, task.kind)
            self._end(task, "failed", None, exc)
        else:
            self._end(task, "warning" if partial else "succeeded", report.to_dict(), partial)

    def _end(
        self, task: _Task, state: str, result: dict[str, Any] | None, exc: Exception | None
    ) -> None:
        with self._lock:
            task.result = result
            if exc is not None:
                status = http_status(exc) if isinstance(exc, VmaccelError) else 500
                task.error = {"status": status, "type": type(exc).__name__, "message": str(exc)}
            self._finish(task, state)
        logger.info("task %s (%s) ended %s", task.id, task.kind, state)

    def _tracker(self, task: _Task) -> Tracker:
        def track(label: str, total: int) -> Callable[[int], None]:
            with self._lock:
                task.total += total
                task.version += 1

            def advance(n: int) -> None:
                with self._lock:
                    task.done += n
                    task.version += 1

            return advance

        return track
