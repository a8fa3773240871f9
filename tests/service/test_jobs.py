"""vmaccel.service.jobs and .jobbook: job rows through their states, claims, retries as
queued attempts, cancel, the bounded log, and jobs of a dead owner marked interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import jobs as jobrows
from vmaccel.plugin.engine.report import DiskReport, VmReport
from vmaccel.service.context import Context
from vmaccel.service.jobbook import JobBook, queue_run
from vmaccel.service.jobs import cancel_job, catalog, job_log, list_jobs, owner_alive, show_job
from vmaccel.vocabulary.errors import NotFound, UsageError


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    Repository.init(tmp_path / "repo", RepositoryConfig())
    return Context(tmp_path / "repo", config_dir=tmp_path / "config")


def _ok(vm: str, warnings: tuple[str, ...] = ()) -> VmReport:
    disk = DiskReport("disk-2000", "full", "no earlier backup", 100, 60, 60, 30)
    return VmReport(vm, 7, (disk,), 1.0, warnings=warnings)


def _failed(vm: str) -> VmReport:
    return VmReport(vm, None, (), 1.0, error="snapshot failed", exit_code=11)


def test_a_run_with_a_retry_and_a_failure(ctx: Context) -> None:
    with catalog(ctx) as r:
        job, new = queue_run(r.index, "gold", "schedule", 100.0)
        assert new and not queue_run(r.index, "gold", "manual", None)[1]
        book = JobBook(r.index, "host:1")
        assert book.claim(job.id) and not JobBook(r.index, "host:2").claim(job.id)
        a, b = book.add_vms(job.id, ["a", "b"])
        first = book.claim_vm(a)
        assert first is not None and book.claim_vm(a) is None  # claimed once
        queued = book.record(first, _failed("a"), retry_at=5.0)
        assert (queued.state, queued.not_before, queued.error) == ("queued", 5.0, "snapshot failed")
        second = book.claim_vm(queued)
        assert second is not None and second.attempt == 2
        book.record(second, _ok("a"), None)
        gone = book.claim_vm(b)
        assert gone is not None
        book.record(gone, _failed("b"), None)
        ended = book.finish(job.id, ["note"])
    detail = show_job(ctx, job.id)
    assert ended.state == "failed" and detail.job.summary["failed"] == {"b": "snapshot failed"}
    va, vb = detail.vms
    assert (va.outcome, va.error, va.backup_id, vb.state) == (
        "succeeded after retry", None, 7, "failed")  # fmt: skip
    assert [(d.attempt, d.mode, d.bytes_stored) for d in va.disks] == [(2, "full", 30)]
    assert [j.id for j in list_jobs(ctx, state="failed")] == [job.id]
    with pytest.raises(UsageError, match="already ended"):
        cancel_job(ctx, job.id)


def test_cancel_the_log_and_a_dead_owner(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobrows, "LOG_LIMIT", 20)  # the bound, made small
    with catalog(ctx) as r:
        queued, _ = queue_run(r.index, "silver", "manual", None)
        running, _ = queue_run(r.index, "gold", "schedule", 1.0)
        book = JobBook(r.index, "nohost-here:1")
        book.claim(running.id)
        (row,) = book.add_vms(running.id, ["vm1"])
        book.claim_vm(row)
        for i in range(jobrows.LOG_LIMIT + 5):
            book.log(running.id, None, "info", f"line {i}")
    assert cancel_job(ctx, queued.id).state == "cancelled"
    assert cancel_job(ctx, running.id).cancel_requested  # stops at the runner's next check
    lines = job_log(ctx, running.id, limit=10_000)
    assert len(lines) == jobrows.LOG_LIMIT and lines[-1].message == f"line {jobrows.LOG_LIMIT - 1}"
    assert [x.id for x in job_log(ctx, running.id, after_id=lines[-2].id)] == [lines[-1].id]
    with catalog(ctx) as r:  # a daemon starting up: the owner is another host's: alive
        assert JobBook(r.index, "me:2").interrupt_orphans(owner_alive) == []
        found = JobBook(r.index, "me:2").interrupt_orphans(lambda owner: False)
    assert [(j.id, vms) for j, vms in found] == [(running.id, ["vm1"])]
    detail = show_job(ctx, running.id)
    assert detail.job.state == "interrupted" and detail.vms[0].state == "interrupted"
    with pytest.raises(NotFound):
        show_job(ctx, 999)
