"""The console's actions (POST), each the same service call as an API route:

========================  ======================================
console                   API
========================  ======================================
policies (add, edit)      POST /policies, PATCH /policies/{name}
policy test / run         POST /policies/{name}/test, /run
job cancel                POST /jobs/{id}/cancel
restore files / disk      POST /restores/files, /restores/disk
========================  ======================================

Log in and out are the console's own. Every action but log in needs the session's CSRF
token (:func:`vmaccel.console.web.checked`); policy and job actions need an editing role.
Service errors come back on the page as a message, with the status the API would answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from vmaccel.console.pages import crumbs
from vmaccel.console.tagpicker import PICKED, merged_tags, tag_picker
from vmaccel.console.web import (
    PREFIX,
    SESSION_COOKIE,
    Checked,
    ConsoleUser,
    Ctx,
    Forbidden,
    render,
    secure,
)
from vmaccel.service import backups, guestfiles, jobs, policies, restores, users
from vmaccel.service.policyspec import Policy
from vmaccel.vocabulary.errors import UsageError, VmaccelError, http_status

router = APIRouter(include_in_schema=False)

LIST_FIELDS = ("tags", "vm_patterns", "folders", "exclude_vms")
INT_FIELDS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "parallel")
TEXT_FIELDS = ("vcenter", "schedule", "timezone", "tag_match")


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _who(user: ConsoleUser) -> str:
    return f"console user {user.name}"


def _editor(user: ConsoleUser) -> ConsoleUser:
    if not user.can_edit:
        raise Forbidden(f"the role {user.role!r} may browse and restore only")
    return user


@router.post("/login", response_class=HTMLResponse, response_model=None)
def login(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2048)] = "",
) -> HTMLResponse | RedirectResponse:
    """Open a session: a Secure, HttpOnly, SameSite=Strict cookie, then the page asked for."""
    lockout: users.Lockout = request.app.state.console_lockout
    try:
        opened = users.login(ctx, username, password, _client(request), lockout)
    except users.LoginRefused as exc:
        status = 429 if exc.retry_after > 0 else 401
        return render(request, "login.html", None, status, next=next, error=str(exc))
    target = next if next.startswith(PREFIX + "/") and "//" not in next else PREFIX + "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, opened.secret, max_age=int(users.SESSION_SECONDS), path="/",
        secure=True, httponly=True, samesite="strict",
    )  # fmt: skip
    secure(response)
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx, _: Checked) -> RedirectResponse:
    users.logout(ctx, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse(PREFIX + "/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                           samesite="strict")  # fmt: skip
    secure(response)
    return response


def policy_fields(form: FormData) -> dict[str, Any]:
    """The policy fields a form filled in, typed as the API's JSON body holds them
    (lists split on commas and new lines; empty fields left out)."""
    out: dict[str, Any] = {}
    for key in LIST_FIELDS:
        text = str(form.get(key) or "")
        items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
        if key == "tags":
            items = merged_tags(items, [str(v) for v in form.getlist(PICKED)])
        if items or key in form:
            out[key] = items
    for key in TEXT_FIELDS:
        if form.get(key):
            out[key] = str(form[key]).strip()
    for key in INT_FIELDS:
        if form.get(key):
            try:
                out[key] = int(str(form[key]))
            except ValueError:
                raise UsageError(f"{key} must be a whole number") from None
    out["quiesce"] = form.get("quiesce") == "on"
    out["enabled"] = form.get("enabled") == "on"
    return out


@router.post("/policies", response_class=HTMLResponse, response_model=None)
async def add_policy(request: Request, ctx: Ctx, user: Checked) -> HTMLResponse | RedirectResponse:
    _editor(user)
    form = await request.form()
    try:
        fields = policy_fields(form)
        fields["name"] = str(form.get("name") or "").strip()
        spec = Policy.from_dict(fields)
        record = await _run(policies.add_policy, ctx, spec, _who(user))
    except VmaccelError as exc:
        return await _form_error(request, ctx, user, None, exc, form)
    return _see(f"/policies/{record.policy.name}")


@router.post("/policies/{name}", response_class=HTMLResponse, response_model=None)
async def edit_policy(
    request: Request, name: str, ctx: Ctx, user: Checked
) -> HTMLResponse | RedirectResponse:
    _editor(user)
    form = await request.form()
    try:
        await _run(policies.edit_policy, ctx, name, policy_fields(form), _who(user))
    except VmaccelError as exc:
        record = await _run(policies.get_policy, ctx, name)
        return await _form_error(request, ctx, user, record, exc, form)
    return _see(f"/policies/{name}")


async def _form_error(
    request: Request, ctx: Ctx, user: ConsoleUser, record: Any, exc: VmaccelError, form: FormData
) -> HTMLResponse:
    """The form again with ``exc``'s message, what was typed and ticked kept."""
    picked = [str(v) for v in form.getlist(PICKED)]
    typed = [t.strip() for t in str(form.get("tags") or "").replace("\n", ",").split(",")]
    vcenter = str(form.get("vcenter") or "").strip() or None
    picker = await _run(tag_picker, ctx, vcenter, typed + picked)
    return render(request, "policy_form.html", user, http_status(exc), record=record,
                  error=str(exc), form=dict(form), picker=picker)  # fmt: skip


@router.post("/policies/{name}/test", response_class=HTMLResponse)
def test_policy(request: Request, name: str, ctx: Ctx, user: Checked) -> HTMLResponse:
    """Resolve the selection live and show what a run would do."""
    _editor(user)
    record = policies.get_policy(ctx, name)
    history = policies.policy_history(ctx, name)
    try:
        plan, error = policies.test_policy(ctx, name), None
    except VmaccelError as exc:
        plan, error = None, str(exc)
    return render(request, "policy.html", user, record=record, history=history, plan=plan,
                  error=error)  # fmt: skip


@router.post("/policies/{name}/run")
def run_policy(name: str, ctx: Ctx, user: Checked) -> RedirectResponse:
    _editor(user)
    job = policies.run_policy_now(ctx, name, who=_who(user))
    return _see(f"/jobs/{job.id}")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, ctx: Ctx, user: Checked) -> RedirectResponse:
    _editor(user)
    jobs.cancel_job(ctx, job_id)
    return _see(f"/jobs/{job_id}")


@router.post("/backups/{ref}/restore", response_class=HTMLResponse)
def restore(
    request: Request,
    ref: str,
    ctx: Ctx,
    user: Checked,
    to: Annotated[str, Form(max_length=4096)],
    paths: Annotated[list[str] | None, Form()] = None,
    disk: Annotated[str, Form(max_length=200)] = "",
    overwrite: Annotated[bool, Form()] = False,
    path: Annotated[str, Form(max_length=4096)] = "",
) -> HTMLResponse:
    """Restore guest files or folders (``paths``) or a disk (``disk``) to ``to`` on this
    host, as ``POST /restores/files`` or ``/restores/disk`` does; the page says what it did."""
    detail = backups.show_backup(ctx, ref)
    found = guestfiles.list_guest_dir(ctx, str(detail.backup.id), path)
    status, done, error = 200, None, None
    try:
        target = Path(to)
        if not target.is_absolute():
            raise UsageError(f"the restore target {to!r} must be an absolute path on the server")
        if disk:
            done = restores.restore_disk(ctx, ref, disk, target, overwrite).to_dict()
        elif paths:
            report = restores.restore_files(ctx, ref, list(paths), target, overwrite)
            failed = restores.incomplete(report)
            done, error = report.to_dict(), str(failed) if failed else None
        else:
            raise UsageError("choose files or folders to restore (tick them in the list)")
    except VmaccelError as exc:
        status, error = http_status(exc), str(exc)
    return render(
        request, "backup.html", user, status, b=detail, doc=detail.to_dict(), dir=found,
        path=path, crumbs=crumbs(path), done=done, error=error,
    )  # fmt: skip


def _see(path: str) -> RedirectResponse:
    response = RedirectResponse(PREFIX + path, status_code=303)
    secure(response)
    return response


async def _run(fn: Any, *args: Any) -> Any:
    """A blocking service call off the event loop (the async routes read their form)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
