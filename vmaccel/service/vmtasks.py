"""VM restores, rollbacks and instant recovery as units of work for the applications' task
runners (the REST API's and, through it, the console's), and who may order them.

Each ``*_order`` function checks what can be checked at once (no vCenter call) and returns a
:class:`TaskOrder`: the task's kind, its request as a JSON document, and the work the runner
calls with a :class:`~vmaccel.service.cancel.Cancel` and a progress tracker. The work is the
CLI's service call (:func:`~vmaccel.service.vmrestores.restore_vm`, :mod:`vmaccel.service.
instant`), so a restore through the API obeys the same rules as ``vmaccel restore vm``.

Scopes (:func:`vm_restore_scope`, :func:`may_end`): a new VM touches nothing that exists, so
it needs ``restore``; replacing a VM (``overwrite``), adding a disk to an existing VM
(``into_vm``) and an in-place rollback change or remove a VM that exists, so they need
``admin``. Instant sessions: starting one creates a new VM (``restore``); migrating makes it a
permanent VM on production storage (``admin``); stopping one's own session needs ``restore``,
anyone else's (or one started from the CLI, which records no owner) ``admin``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from vmaccel.service import instant
from vmaccel.service.cancel import Cancel, Tracker
from vmaccel.service.context import Context
from vmaccel.service.instantstate import InstantSession, check_name, load
from vmaccel.service.vmrestores import VmRestoreRequest, restore_vm
from vmaccel.vocabulary.errors import UsageError, VmaccelError


class Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


Work = Callable[[Cancel, Tracker], tuple[Report, VmaccelError | None]]


@dataclass(frozen=True)
class TaskOrder:
    """What to hand a task runner: ``kind`` (``restore-vm``, ``rollback``, ``instant-start``,
    ``instant-migrate``, ``instant-stop``), ``request`` (JSON-ready) and ``work``."""

    kind: str
    request: dict[str, Any]
    work: Work


@dataclass(frozen=True)
class InstantOutcome:
    """What an instant task did to a session: ``action`` ``start``, ``migrate`` or ``stop``;
    ``session`` the record as it stood when the action ended."""

    action: str
    session: InstantSession

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, **asdict(self.session)}


def request_doc(req: VmRestoreRequest) -> dict[str, Any]:
    """``req`` as JSON: paths as text, pairs as lists."""
    doc = asdict(req)
    doc["datastore_paths"] = [[ds, str(path)] for ds, path in req.datastore_paths]
    doc["networks"] = [list(pair) for pair in req.networks]
    doc["disks"] = list(req.disks)
    return doc


def vm_restore_scope(req: VmRestoreRequest) -> str:
    """The scope ``req`` needs (see the module docstring)."""
    return "admin" if req.in_place or req.overwrite or req.into_vm else "restore"


def vm_restore_order(ctx: Context, req: VmRestoreRequest, confirmed: bool = False) -> TaskOrder:
    """The restore (or, with ``in_place``, rollback) of ``req``. A rollback must be
    ``confirmed``: it powers the VM off (when it runs) and overwrites its disks."""
    if req.in_place and not confirmed:
        raise UsageError(
            "a rollback powers the VM off and writes over its disks: confirm it (confirm=true)"
        )
    req.transport_config()  # an unknown transport is refused before the task is queued

    def work(cancel: Cancel, track: Tracker) -> tuple[Report, VmaccelError | None]:
        cancel.check()
        return restore_vm(ctx, req, cancel.guard(track), lambda question: True), None

    kind = "rollback" if req.in_place else "restore-vm"
    return TaskOrder(kind, request_doc(req), work)


def instant_start_order(ctx: Context, req: instant.StartRequest) -> TaskOrder:
    if req.name is not None:
        check_name(req.name)
    doc = {**asdict(req), "networks": dict(req.networks)}

    def work(cancel: Cancel, track: Tracker) -> tuple[Report, VmaccelError | None]:
        cancel.check()
        return InstantOutcome("start", instant.start(ctx, req)), None

    return TaskOrder("instant-start", doc, work)


def session(ctx: Context, name: str) -> InstantSession:
    """The session ``name`` (:class:`~vmaccel.service.instantstate.SessionNotFound`)."""
    return load(instant.instant_root(ctx), name)


def may_end(found: InstantSession, who: str, scope_is_admin: bool) -> bool:
    """Whether ``who`` may stop ``found`` (see the module docstring)."""
    return scope_is_admin or (found.owner is not None and found.owner == who)


def instant_migrate_order(ctx: Context, name: str, datastore: str) -> TaskOrder:
    session(ctx, name)  # 404 before the task is queued
    if not datastore:
        raise UsageError("name the datastore to move the VM to")

    def work(cancel: Cancel, track: Tracker) -> tuple[Report, VmaccelError | None]:
        cancel.check()
        return InstantOutcome("migrate", instant.migrate(ctx, name, datastore)), None

    return TaskOrder("instant-migrate", {"name": name, "datastore": datastore}, work)


def instant_stop_order(ctx: Context, name: str, keep_overlay: bool = False) -> TaskOrder:
    def work(cancel: Cancel, track: Tracker) -> tuple[Report, VmaccelError | None]:
        cancel.check()
        return InstantOutcome("stop", instant.stop(ctx, name, keep_overlay)), None

    return TaskOrder("instant-stop", {"name": name, "keep_overlay": keep_overlay}, work)


def session_doc(view: instant.SessionView) -> dict[str, Any]:
    """A session as ``instant list --json`` shows it."""
    return {**asdict(view.session), "overlay_bytes": view.overlay_bytes,
            "mount_alive": view.mount_alive}  # fmt: skip


def pairs(lines: str, what: str) -> tuple[tuple[str, str], ...]:
    """``OLD=NEW`` texts, one per line or comma separated, as pairs (forms send text)."""
    out = []
    for spec in (t.strip() for t in lines.replace(",", "\n").splitlines()):
        if not spec:
            continue
        old, sep, new = spec.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UsageError(f"{what} {spec!r} is not OLD=NEW")
        out.append((old.strip(), new.strip()))
    return tuple(out)
