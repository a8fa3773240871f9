"""``vmaccel jobs``: Job history: policy runs, VM jobs and disk tasks."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import emit, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import jobs
from vmaccel.service.jobs import FINAL, JobList

app = typer.Typer(help="Job history: policy runs, VM jobs and disk tasks.", no_args_is_help=True)

_IdArg = Annotated[int, typer.Argument(metavar="JOB", help="The job's id.")]


@app.command("list")
def list_(
    policy: Annotated[str | None, typer.Option("--policy", help="Only this policy's.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    before: Annotated[int | None, typer.Option("--before", help="Ids below this (paging).")] = None,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    found = jobs.list_jobs(context(repo), policy, state, limit, before)
    emit(JobList(tuple(found)), as_json)


@app.command("show")
def show(job: _IdArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """A job with its VM jobs (state, attempts, bytes) and their disks (mode and why)."""
    emit(jobs.show_job(context(repo), job), as_json)


@app.command("log")
def log(
    job: _IdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new lines.")] = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The job's log; --follow waits for new lines until the job ends."""
    ctx, last = context(repo), 0
    while True:
        lines = jobs.job_log(ctx, job, after_id=last)
        for line in lines:
            if as_json:
                print_json(line.to_dict())
            else:
                say(line.text())
        last = lines[-1].id if lines else last
        if not follow or (not lines and jobs.show_job(ctx, job).job.state in FINAL):
            return
        if not lines:
            time.sleep(1.0)


@app.command("cancel")
def cancel(job: _IdArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued job, or stop a running one (VMs in flight are aborted, snapshots
    removed)."""
    record = jobs.cancel_job(context(repo), job)
    if as_json:
        print_json(record.to_dict())
    else:
        say(f"{record.line()}" + (" (stop requested)" if record.state == "running" else ""))
