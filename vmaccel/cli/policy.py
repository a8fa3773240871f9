"""``vmaccel policy``: Tag-driven backup policies."""

from __future__ import annotations

import threading
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from vmaccel.cli import signals
from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import emit, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import policies
from vmaccel.service.jobs import JobRecord, show_job
from vmaccel.service.policyspec import Policy
from vmaccel.vocabulary.errors import Interrupted, UsageError
from vmaccel.vocabulary.units import format_time

app = typer.Typer(help="Tag-driven backup policies.", no_args_is_help=True)

_NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The policy's name.")]
_Many = list[str] | None
_SetOpt = Annotated[
    _Many,
    typer.Option(
        "--set", metavar="FIELD=VALUE",
        help="Set a field (repeatable); VALUE is a TOML value or plain text, e.g. retries=3, "
        "tags=[\"backup:gold\"], window=22:00-06:00.",
    ),
]  # fmt: skip
_VCenterOpt = Annotated[str | None, typer.Option("--vcenter", help="A vCenter from `vcenter add`.")]
_TagOpt = Annotated[_Many, typer.Option("--tag", help="CATEGORY:TAG (repeatable).")]
_FolderOpt = Annotated[_Many, typer.Option("--folder", help="Folder path (repeatable).")]
_PatternOpt = Annotated[_Many, typer.Option("--vm-pattern", help="VM name pattern (repeatable).")]
_ScheduleOpt = Annotated[
    str | None, typer.Option("--schedule", help="Cron expression, e.g. '0 22 * * *'.")
]
_TzOpt = Annotated[str | None, typer.Option("--timezone", help="IANA time zone (default UTC).")]
_WindowOpt = Annotated[
    str | None, typer.Option("--window", help="HH:MM-HH:MM: when VMs may start.")
]


def _value(text: str) -> Any:
    """A ``--set`` value: TOML (numbers, booleans, arrays, quoted strings), else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _sets(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not FIELD=VALUE")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def _options(**given: Any) -> dict[str, Any]:
    """The fields given as options (None and empty lists: not given)."""
    return {k: v for k, v in given.items() if v not in (None, [])}


@app.command("add")
def add(
    name: _NameArg,
    vcenter: _VCenterOpt = None,
    tag: _TagOpt = None,
    folder: _FolderOpt = None,
    vm_pattern: _PatternOpt = None,
    schedule: _ScheduleOpt = None,
    timezone: _TzOpt = None,
    window: _WindowOpt = None,
    set_: _SetOpt = None,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a policy (every field: `--set FIELD=VALUE`; see docs/policies.md)."""
    fields = {"name": name, **_options(vcenter=vcenter, tags=tag, folders=folder,
              vm_patterns=vm_pattern, schedule=schedule, timezone=timezone, window=window),
              **_sets(set_)}  # fmt: skip
    record = policies.add_policy(context(repo), Policy.from_dict(fields))
    emit(record, as_json)


@app.command("edit")
def edit(
    name: _NameArg,
    set_: _SetOpt = None,
    schedule: _ScheduleOpt = None,
    window: _WindowOpt = None,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change fields of a policy (the change is kept in its history)."""
    changes = {**_options(schedule=schedule, window=window), **_sets(set_)}
    if not changes:
        raise UsageError("nothing to change: give --set FIELD=VALUE")
    emit(policies.edit_policy(context(repo), name, changes), as_json)


@app.command("show")
def show(name: _NameArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Show a policy and its next run."""
    emit(policies.get_policy(context(repo), name), as_json)


@app.command("list")
def list_(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """List the policies."""
    records = policies.list_policies(context(repo))
    if as_json:
        print_json({"policies": [r.to_dict() for r in records]})
        return
    for r in records:
        p = r.policy
        state = f"next {format_time(r.next_run())}" if p.enabled else "disabled"
        say(f"{p.name}: {p.vcenter} {p.schedule} ({p.timezone}), {state}")
    if not records:
        say("no policies")


@app.command("rm")
def rm(name: _NameArg, repo: RepoOpt = None) -> None:
    """Remove a policy (its history and job history stay)."""
    policies.remove_policy(context(repo), name)
    say(f"removed policy {name}")


@app.command("history")
def history(name: _NameArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Every change of a policy, oldest first."""
    changes = policies.policy_history(context(repo), name)
    if as_json:
        print_json({"changes": [c.to_dict() for c in changes]})
        return
    for c in changes:
        say(f"version {c.version} {format_time(c.at)} {c.action} by {c.who}")


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(metavar="FILE.toml", help="[[policy]] tables.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the difference only.")] = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make the stored policies match FILE: add, change and remove; prints the difference."""
    specs = policies.load_policy_file(file)
    emit(policies.apply_policies(context(repo), specs, dry_run=dry_run), as_json)


@app.command("test")
def test(name: _NameArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Resolve the selection live: what a run now would do per VM and disk, and why."""
    emit(policies.test_policy(context(repo), name), as_json)


@app.command("run")
def run(
    name: _NameArg,
    queue: Annotated[
        bool, typer.Option("--queue", help="Leave the run to the daemon (it starts it at once).")
    ] = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a policy now, in this process (or queue it for the daemon with --queue)."""
    ctx = context(repo)
    job = policies.run_policy_now(ctx, name)
    if queue:
        emit_job(job, as_json)
        return
    from vmaccel.daemon.runner import Runner
    from vmaccel.service.jobs import owner_id

    stop = threading.Event()
    with signals.stopping() as cancel:
        runner = Runner(ctx, owner_id(), stop)
        watcher = threading.Thread(target=_watch, args=(cancel, stop, runner), daemon=True)
        watcher.start()
        ended = runner.run(policies.get_policy(ctx, name).policy, job.id)
        stop.set()
    if ended is None:
        raise UsageError(f"policy {name} is already running (job {job.id}): see `vmaccel jobs`")
    detail = show_job(ctx, job.id)
    emit(detail, as_json)
    if cancel.requested:
        raise Interrupted(cancel.reason)
    if detail.job.state not in ("succeeded", "warning"):
        raise typer.Exit(1)


def _watch(cancel: Any, stop: threading.Event, runner: Any) -> None:
    """A stop signal (Ctrl-C, SIGTERM) aborts the foreground run's VMs in flight."""
    while not stop.wait(0.2):
        if cancel.requested:
            stop.set()
            runner.abort(cancel.reason)
            return


def emit_job(job: JobRecord, as_json: bool) -> None:
    if as_json:
        print_json(job.to_dict())
    else:
        say(f"queued {job.line()}")
