"""``/restores``: a disk to a file, guest files or folders to a directory on the vmaccel
host, as tasks with progress (see :mod:`vmaccel.api.tasks`) and a live event stream.

Targets are paths on the host that runs ``vmaccel serve``, written with its permissions; the
service does the writing exactly as ``vmaccel restore`` does (never outside the target
directory; an existing file is replaced only with ``overwrite``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from vmaccel.api.auth import Ctx, ReadCaller, RestoreCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.api.tasks import FINISHED, TaskRunner, Tracker
from vmaccel.service import restores
from vmaccel.service.cancel import Cancel
from vmaccel.vocabulary.errors import UsageError, VmaccelError

router = APIRouter(tags=["restores"], route_class=DocRoute)

POLL = 0.25  # seconds between looks at a task for its event stream
HEARTBEAT = 15.0  # seconds between keep-alive comments on a quiet stream


class DiskRestoreRequest(BaseModel):
    backup: str = Field(description="Any backup reference: id, UUID, VM@latest, ...")
    disk: str = Field(description="Disk name (disk0, disk-2000), key, label or unit.")
    to: str = Field(description="Absolute path of the target file (or block device).")
    overwrite: bool = False


class FileRestoreRequest(BaseModel):
    backup: str
    paths: list[str] = Field(min_length=1, description="<volume>/<path> entries to restore.")
    to: str = Field(description="Absolute path of the directory to restore into.")
    overwrite: bool = False


def _runner(request: Request) -> TaskRunner:
    runner: TaskRunner = request.app.state.tasks
    return runner


def _target(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise UsageError(f"the restore target {text!r} must be an absolute path on the server")
    return path


@router.post("/restores/disk", status_code=202, summary="Restore a disk to a file")
def restore_disk(
    body: DiskRestoreRequest, request: Request, ctx: Ctx, _: RestoreCaller
) -> dict[str, Any]:
    to = _target(body.to)

    def work(cancel: Cancel, track: Tracker) -> tuple[Any, VmaccelError | None]:
        guarded = cancel.guard(track)
        return restores.restore_disk(ctx, body.backup, body.disk, to, body.overwrite, guarded), None

    return _runner(request).submit("restore-disk", body.model_dump(), work).to_dict()


@router.post("/restores/files", status_code=202, summary="Restore guest files or folders")
def restore_files(
    body: FileRestoreRequest, request: Request, ctx: Ctx, _: RestoreCaller
) -> dict[str, Any]:
    to = _target(body.to)

    def work(cancel: Cancel, track: Tracker) -> tuple[Any, VmaccelError | None]:
        cancel.check()
        report = restores.restore_files(ctx, body.backup, body.paths, to, body.overwrite)
        return report, restores.incomplete(report)

    return _runner(request).submit("restore-files", body.model_dump(), work).to_dict()


@router.get("/restores", summary="Restore tasks, newest first")
def list_restores(request: Request, _: ReadCaller) -> list[dict[str, Any]]:
    return [t.to_dict() for t in _runner(request).list()]


@router.get("/restores/{task_id}", summary="One restore task")
def show_restore(task_id: str, request: Request, _: ReadCaller) -> dict[str, Any]:
    return _runner(request).get(task_id).to_dict()


@router.post("/restores/{task_id}/cancel", summary="Cancel a restore task")
def cancel_restore(task_id: str, request: Request, _: RestoreCaller) -> dict[str, Any]:
    return _runner(request).cancel(task_id).to_dict()


@router.get(
    "/restores/{task_id}/events",
    summary="Live progress (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def restore_events(task_id: str, request: Request, _: ReadCaller) -> StreamingResponse:
    """One ``task`` event (the task as ``GET /restores/{id}`` shows it) at once and on
    every change, until it has finished; ``: keep-alive`` comments while it is quiet."""
    runner = _runner(request)
    runner.get(task_id)  # 404 before the stream starts
    return sse_response(_task_events(runner, task_id, request))


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def sse_event(kind: str, data: dict[str, Any]) -> str:
    """One event in the text/event-stream format."""
    return f"event: {kind}\ndata: {json.dumps(data, sort_keys=True, default=str)}\n\n"


async def _task_events(runner: TaskRunner, task_id: str, request: Request) -> AsyncIterator[str]:
    seen, quiet = -1, 0.0
    closing: threading.Event = request.app.state.closing
    while not closing.is_set():
        view = runner.get(task_id)
        if view.version != seen:
            seen, quiet = view.version, 0.0
            yield sse_event("task", view.to_dict())
            if view.state in FINISHED:
                return
        elif quiet >= HEARTBEAT:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL)
        quiet += POLL
