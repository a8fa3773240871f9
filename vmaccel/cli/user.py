"""``vmaccel user add|passwd|rm|list``: local users of the web console."""

from __future__ import annotations

import getpass
import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import users
from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.errors import UsageError

app = typer.Typer(help="Users of the web console (vmaccel serve).", no_args_is_help=True)


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    restore = "restore"


NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The user's login name.")]
StdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input."
    ),
]


def _password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask a password on: pass --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise UsageError("the two passwords differ")
    return first


@app.command("add")
def add(
    name: NameArg,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            help="admin: everything; operator: policies, jobs and restores; "
            "restore: browse and restore only.",
        ),
    ],
    password_stdin: StdinOpt = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a console user (the password is stored as a scrypt hash only)."""
    ctx = context(repo)
    row = users.add_user(ctx, name, role.value, _password(password_stdin))
    if as_json:
        print_json(row.to_dict())
        return
    say(f"user {row.name} added (role {row.role})")


@app.command("passwd")
def passwd(
    name: NameArg,
    role: Annotated[Role | None, typer.Option("--role", help="Also change the role.")] = None,
    keep_password: Annotated[
        bool, typer.Option("--keep-password", help="Change only the role.")
    ] = False,
    password_stdin: StdinOpt = False,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's password (and role); the user's open sessions end."""
    ctx = context(repo)
    password = None if keep_password else _password(password_stdin)
    row = users.set_password(ctx, name, password, role.value if role else None)
    if as_json:
        print_json(row.to_dict())
        return
    say(f"user {row.name} changed (role {row.role}); its sessions ended")


@app.command("rm")
def rm(name: NameArg, repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a user and end its sessions."""
    row = users.remove_user(context(repo), name)
    if as_json:
        print_json(row.to_dict())
        return
    say(f"user {row.name} removed")


@app.command("list")
def list_(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Every console user with its role (never a password or hash)."""
    found = users.list_users(context(repo))
    if as_json:
        print_json([u.to_dict() for u in found])
        return
    table = Table("name", "role", "created (UTC)", "changed (UTC)")
    for u in found:
        table.add_row(u.name, u.role, dir_time(u.created), dir_time(u.changed))
    console.print(table)
