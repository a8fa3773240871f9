"""``/jobs``: policy runs and their VM jobs (the daemon's job history), logs, cancel, and
live progress as server-sent events."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from vmaccel.api.auth import AdminCaller, Ctx, ReadCaller
from vmaccel.api.jsonbody import DocRoute
from vmaccel.api.routes.restores import HEARTBEAT, sse_event, sse_response
from vmaccel.service import jobs
from vmaccel.service.context import Context

router = APIRouter(tags=["jobs"], route_class=DocRoute)

POLL = 1.0  # seconds between looks at a job for its event stream
FINAL = frozenset({"succeeded", "warning", "failed", "interrupted", "cancelled"})


@router.get("/jobs", summary="Jobs, newest first (page with before_id)")
def list_jobs(
    ctx: Ctx,
    _: ReadCaller,
    policy: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before_id: Annotated[
        int | None, Query(description="The smallest id of the previous page.")
    ] = None,
) -> list[dict[str, Any]]:
    return [j.to_dict() for j in jobs.list_jobs(ctx, policy, state, limit, before_id)]


@router.get("/jobs/{job_id}", summary="One job with its VM jobs and disk tasks")
def show_job(job_id: int, ctx: Ctx, _: ReadCaller) -> dict[str, Any]:
    return jobs.show_job(ctx, job_id).to_dict()


@router.get("/jobs/{job_id}/log", summary="A job's log lines after after_id, oldest first")
def job_log(
    job_id: int,
    ctx: Ctx,
    _: ReadCaller,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    return [line.to_dict() for line in jobs.job_log(ctx, job_id, after_id, limit)]


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued job or stop a running one")
def cancel_job(job_id: int, ctx: Ctx, _: AdminCaller) -> dict[str, Any]:
    return jobs.cancel_job(ctx, job_id).to_dict()


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(job_id: int, request: Request, ctx: Ctx, _: ReadCaller) -> StreamingResponse:
    """A ``job`` event (as ``GET /jobs/{id}``) at once and whenever it changes, a ``log``
    event per new log line, until the job has ended; ``: keep-alive`` comments between."""
    jobs.show_job(ctx, job_id)  # 404 before the stream starts
    return sse_response(_job_events(ctx, job_id, request.app.state.closing))


async def _job_events(ctx: Context, job_id: int, closing: threading.Event) -> AsyncIterator[str]:
    last_doc, last_log, quiet = "", 0, 0.0
    while not closing.is_set():
        detail, lines = await anyio.to_thread.run_sync(_look, ctx, job_id, last_log)
        for line in lines:
            last_log = line.id
            yield sse_event("log", line.to_dict())
        doc = detail.to_dict()
        text = json.dumps(doc, sort_keys=True, default=str)
        if text != last_doc:
            last_doc, quiet = text, 0.0
            yield sse_event("job", doc)
            if detail.job.state in FINAL:
                return
        elif quiet >= HEARTBEAT:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await anyio.sleep(POLL)
        quiet += POLL


def _look(ctx: Context, job_id: int, after: int) -> tuple[jobs.JobDetail, list[jobs.LogLine]]:
    return jobs.show_job(ctx, job_id), jobs.job_log(ctx, job_id, after)
