"""The console's VM restore, rollback and instant recovery pages, and the live task view.

Every action queues the same task the API route queues (:mod:`vmaccel.service.vmtasks`:
the same order, the same scope rule, on the server's one task runner), then shows the task
page, which htmx refreshes every second until the task ends:

===============================  ======================================
console                          API
===============================  ======================================
restore VM (restore point)       POST /restores/vm
roll back (after a confirmation) POST /restores/vm/in-place (confirm)
instant: start, migrate, stop    POST /instant, /instant/{name}/migrate, /stop
task page                        GET /restores/{id} (events: /events)
===============================  ======================================

A role acts with the scope of its sessions (:data:`vmaccel.service.users.SCOPE_OF_ROLE`):
``restore`` may restore new VMs, start instant sessions and stop its own; replacing a VM,
into-VM, rollback, migrate and stopping others' sessions need ``admin`` (admin, operator).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from vmaccel.console.web import (
    PREFIX,
    Checked,
    ConsoleUser,
    Ctx,
    Forbidden,
    User,
    render,
    secure,
    templates,
)
from vmaccel.service import backups, instant, tokens, users, vmtasks
from vmaccel.service.context import Context
from vmaccel.service.runs import parse_datastore_paths
from vmaccel.service.vmrestores import VmRestoreRequest
from vmaccel.vocabulary.errors import VmaccelError, http_status

router = APIRouter(include_in_schema=False)


class Runner(Protocol):
    """What the console needs of the API's task runner (``app.state.tasks``)."""

    def submit(self, kind: str, request: dict[str, Any], work: vmtasks.Work) -> Any: ...

    def get(self, task_id: str) -> Any: ...


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.tasks
    return runner


def _scope(user: ConsoleUser) -> str:
    return users.SCOPE_OF_ROLE[user.role]


def _who(user: ConsoleUser) -> str:
    return f"console user {user.name}"  # as the API's Caller.who names a session's user


def _queue(request: Request, order: vmtasks.TaskOrder) -> RedirectResponse:
    task = _runner(request).submit(order.kind, order.request, order.work).to_dict()
    response = RedirectResponse(f"{PREFIX}/tasks/{task['id']}", status_code=303)
    secure(response)
    return response


def _text(form: FormData, key: str) -> str | None:
    value = str(form.get(key) or "").strip()
    return value or None


def vm_request(ref: str, form: FormData, in_place: bool) -> VmRestoreRequest:
    """The request a restore (or rollback) form describes."""
    lines = str(form.get("datastore_paths") or "").splitlines()
    common: dict[str, Any] = {
        "backup": ref,
        "vcenter": str(form.get("vcenter") or "").strip(),
        "power_on": form.get("power_on") == "on",
        "transport": _text(form, "transport") or "auto",
        "datastore_paths": parse_datastore_paths(tuple(t.strip() for t in lines if t.strip())),
    }
    if in_place:
        return VmRestoreRequest(in_place=True, **common)
    return VmRestoreRequest(
        name=_text(form, "name"), folder=_text(form, "folder"), host=_text(form, "host"),
        cluster=_text(form, "cluster"), datastore=_text(form, "datastore"),
        networks=vmtasks.pairs(str(form.get("networks") or ""), "network"),
        overwrite=form.get("overwrite") == "on", **common,
    )  # fmt: skip


def _vm_page(
    request: Request,
    ctx: Context,
    user: ConsoleUser,
    ref: str,
    status: int = 200,
    error: str | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    detail = backups.show_backup(ctx, ref)
    return render(request, "restore_vm.html", user, status, doc=detail.to_dict(),
                  admin=tokens.allows(_scope(user), "admin"), error=error,
                  form=form or {})  # fmt: skip


@router.get("/backups/{ref}/vm", response_class=HTMLResponse)
def restore_vm_page(request: Request, ref: str, ctx: Ctx, user: User) -> HTMLResponse:
    """The restore VM form and, for admin scopes, the rollback."""
    return _vm_page(request, ctx, user, ref)


@router.post("/backups/{ref}/vm", response_class=HTMLResponse, response_model=None)
async def restore_vm(
    request: Request, ref: str, ctx: Ctx, user: Checked
) -> HTMLResponse | RedirectResponse:
    form = await request.form()
    try:
        req = vm_request(ref, form, in_place=False)
        if not tokens.allows(_scope(user), vmtasks.vm_restore_scope(req)):
            raise Forbidden("replacing a VM needs the admin or operator role")
        order = vmtasks.vm_restore_order(ctx, req)
    except VmaccelError as exc:
        return _vm_page(request, ctx, user, ref, http_status(exc), str(exc), dict(form))
    return _queue(request, order)


@router.post("/backups/{ref}/rollback", response_class=HTMLResponse, response_model=None)
async def roll_back(
    request: Request, ref: str, ctx: Ctx, user: Checked
) -> HTMLResponse | RedirectResponse:
    """First the confirmation page (what will happen), then, confirmed, the task."""
    if not tokens.allows(_scope(user), "admin"):
        raise Forbidden("a rollback needs the admin or operator role")
    form = await request.form()
    try:
        req = vm_request(ref, form, in_place=True)
        if form.get("confirm") != "yes":
            req.transport_config()
            detail = backups.show_backup(ctx, ref)
            return render(request, "rollback_confirm.html", user, doc=detail.to_dict(),
                          form=dict(form))  # fmt: skip
        order = vmtasks.vm_restore_order(ctx, req, confirmed=True)
    except VmaccelError as exc:
        return _vm_page(request, ctx, user, ref, http_status(exc), str(exc), dict(form))
    return _queue(request, order)


def _instant_page(
    request: Request,
    ctx: Context,
    user: ConsoleUser,
    status: int = 200,
    error: str | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    admin = tokens.allows(_scope(user), "admin")
    found = [
        (vmtasks.session_doc(v), vmtasks.may_end(v.session, _who(user), admin))
        for v in instant.list_sessions(ctx)
    ]
    return render(request, "instant.html", user, status, sessions=found, admin=admin,
                  error=error, form=form or {})  # fmt: skip


@router.get("/instant", response_class=HTMLResponse)
def instant_page(request: Request, ctx: Ctx, user: User, backup: str = "") -> HTMLResponse:
    """Sessions with their state; start (from ``backup``), migrate, stop."""
    return _instant_page(request, ctx, user, form={"backup": backup})


@router.post("/instant", response_class=HTMLResponse, response_model=None)
async def start_instant(
    request: Request, ctx: Ctx, user: Checked
) -> HTMLResponse | RedirectResponse:
    form = await request.form()
    try:
        req = instant.StartRequest(
            str(form.get("backup") or "").strip(), str(form.get("vcenter") or "").strip(),
            str(form.get("host") or "").strip(), name=_text(form, "name"),
            datastore=_text(form, "datastore"),
            networks=dict(vmtasks.pairs(str(form.get("networks") or ""), "network")),
            power_on=form.get("power_on") == "on", owner=_who(user),
        )  # fmt: skip
        order = vmtasks.instant_start_order(ctx, req)
    except VmaccelError as exc:
        return _instant_page(request, ctx, user, http_status(exc), str(exc), dict(form))
    return _queue(request, order)


@router.post("/instant/{name}/migrate", response_class=HTMLResponse, response_model=None)
async def migrate_instant(
    request: Request, name: str, ctx: Ctx, user: Checked
) -> HTMLResponse | RedirectResponse:
    if not tokens.allows(_scope(user), "admin"):
        raise Forbidden("moving an instant VM to production storage needs the admin role")
    form = await request.form()
    try:
        order = vmtasks.instant_migrate_order(ctx, name, str(form.get("datastore") or ""))
    except VmaccelError as exc:
        return _instant_page(request, ctx, user, http_status(exc), str(exc))
    return _queue(request, order)


@router.post("/instant/{name}/stop", response_model=None)
def stop_instant(request: Request, name: str, ctx: Ctx, user: Checked) -> RedirectResponse:
    found = vmtasks.session(ctx, name)
    if not vmtasks.may_end(found, _who(user), tokens.allows(_scope(user), "admin")):
        raise Forbidden(f"instant session {name} is someone else's: stopping it needs admin")
    return _queue(request, vmtasks.instant_stop_order(ctx, name))


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: str, user: User) -> HTMLResponse:
    task = _runner(request).get(task_id).to_dict()
    return render(request, "task.html", user, task=task)


@router.get("/tasks/{task_id}/live", response_class=HTMLResponse)
def task_live(request: Request, task_id: str, user: User) -> HTMLResponse:
    """The task's state, progress and result as an htmx fragment (polled while it runs)."""
    task = _runner(request).get(task_id).to_dict()
    response = templates.TemplateResponse(
        request, "_task_live.html", {"task": task, "user": user, "prefix": PREFIX}
    )
    secure(response)
    return response
