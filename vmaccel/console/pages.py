"""The console's pages (GET): dashboard, VMs and their restore points, a restore point with
its disks and file browser, file search, policies, jobs (with a live fragment for htmx).

Each page reads through the service calls the REST API's routes make; downloads link to the
API itself (``/api/v1/backups/{ref}/download``), which accepts the session cookie.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from vmaccel.console.dashboard import PROTECTED_HOURS, dashboard
from vmaccel.console.tagpicker import tag_picker
from vmaccel.console.web import PREFIX, Ctx, Editor, User, render, secure, templates
from vmaccel.service import backups, browse, guestfiles, jobs, policies, restorepoints
from vmaccel.service.restorepoints import BackupQuery

router = APIRouter(include_in_schema=False)

GuestPath = Annotated[str, Query(max_length=4096)]


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "") -> HTMLResponse:
    return render(request, "login.html", None, next=next, error=None)


@router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    board = dashboard(ctx)
    return render(request, "dashboard.html", user, board=board, hours=PROTECTED_HOURS)


@router.get("/vms", response_class=HTMLResponse)
def vms_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    return render(request, "vms.html", user, vms=restorepoints.list_vms(ctx))


@router.get("/vms/{vm}", response_class=HTMLResponse)
def vm_page(
    request: Request, vm: str, ctx: Ctx, user: User, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    """The VM's restore points, newest first, 50 to a page."""
    page = restorepoints.page_backups(ctx, BackupQuery(vm=vm, offset=offset, limit=50))
    return render(request, "vm.html", user, vm=vm, page=page)


@router.get("/backups/{ref}", response_class=HTMLResponse)
def backup_page(
    request: Request, ref: str, ctx: Ctx, user: User, path: GuestPath = ""
) -> HTMLResponse:
    """One restore point: disks, mode and why, bytes, verdict, boot test; the guest files
    under ``path`` (``""``: the volumes)."""
    detail = backups.show_backup(ctx, ref)
    found = guestfiles.list_guest_dir(ctx, str(detail.backup.id), path)
    return render(
        request, "backup.html", user, b=detail, doc=detail.to_dict(), dir=found, path=path,
        crumbs=crumbs(path), done=None, error=None,
    )  # fmt: skip


def crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of every folder from the volumes down to ``path``."""
    parts = [p for p in path.split("/") if p]
    return [(name, "/".join(parts[: i + 1])) for i, name in enumerate(parts)]


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request, ctx: Ctx, user: User, pattern: Annotated[str, Query(max_length=512)] = ""
) -> HTMLResponse:
    """Files by glob across every restore point's file catalog."""
    hits = browse.find_files(ctx, pattern, None, 500) if pattern else []
    return render(request, "search.html", user, pattern=pattern, hits=hits)


@router.get("/policies", response_class=HTMLResponse)
def policies_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    return render(request, "policies.html", user, found=policies.list_policies(ctx))


@router.get("/policies/new", response_class=HTMLResponse)
def new_policy_page(
    request: Request, ctx: Ctx, user: Editor, vcenter: Annotated[str, Query(max_length=200)] = ""
) -> HTMLResponse:
    """The form, with the tag picker of ``vcenter`` (default: the only one registered)."""
    picker = tag_picker(ctx, vcenter or None, ())
    form = {"vcenter": picker.vcenter} if picker.vcenter else {}
    return render(request, "policy_form.html", user, record=None, error=None, form=form,
                  picker=picker)  # fmt: skip


@router.get("/policies/{name}", response_class=HTMLResponse)
def policy_page(request: Request, name: str, ctx: Ctx, user: User) -> HTMLResponse:
    record = policies.get_policy(ctx, name)
    history = policies.policy_history(ctx, name)
    return render(
        request, "policy.html", user, record=record, history=history, plan=None, error=None
    )


@router.get("/policies/{name}/edit", response_class=HTMLResponse)
def edit_policy_page(request: Request, name: str, ctx: Ctx, user: Editor) -> HTMLResponse:
    record = policies.get_policy(ctx, name)
    picker = tag_picker(ctx, record.policy.vcenter, record.policy.tags)
    return render(request, "policy_form.html", user, record=record, error=None, form={},
                  picker=picker)  # fmt: skip


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, ctx: Ctx, user: User) -> HTMLResponse:
    return render(request, "jobs.html", user, found=jobs.list_jobs(ctx, limit=100))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: int, ctx: Ctx, user: User) -> HTMLResponse:
    detail = jobs.show_job(ctx, job_id)
    log = jobs.job_log(ctx, job_id, 0, 1000)
    return render(request, "job.html", user, detail=detail, log=log)


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(request: Request, job_id: int, ctx: Ctx, user: User) -> HTMLResponse:
    """The job's state, VMs and log as an htmx fragment (polled while the job runs)."""
    detail = jobs.show_job(ctx, job_id)
    log = jobs.job_log(ctx, job_id, 0, 1000)
    response = templates.TemplateResponse(
        request, "_job_live.html", {"detail": detail, "log": log, "user": user, "prefix": PREFIX}
    )
    secure(response)
    return response
