"""``vmaccel token create|list|revoke``: API tokens for the REST API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.options import JsonOpt, RepoOpt
from vmaccel.cli.output import console, print_json, say, warn
from vmaccel.cli.settings import context
from vmaccel.service import tokens
from vmaccel.vocabulary.backupref import dir_time

app = typer.Typer(help="API tokens for the REST API.", no_args_is_help=True)


class Scope(StrEnum):
    read = "read"
    restore = "restore"
    admin = "admin"


@app.command("create")
def create(
    scope: Annotated[
        Scope,
        typer.Option(
            "--scope",
            help="read: look at everything; restore: also restore to this host; "
            "admin: also policies, jobs and tokens.",
        ),
    ],
    name: Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")] = None,
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it, once: only a hash of it is stored."""
    new = tokens.create_token(context(repo), scope.value, name)
    if as_json:
        print_json(new.to_dict())
        return
    say(new.secret)
    warn(
        f"token {new.token.id} ({new.token.name}, scope {new.token.scope}): copy it now, "
        "it is not shown again"
    )


@app.command("list")
def list_(repo: RepoOpt = None, as_json: JsonOpt = False) -> None:
    """Every token with its scope and state (never the token values)."""
    found = tokens.list_tokens(context(repo))
    if as_json:
        print_json([t.to_dict() for t in found])
        return
    table = Table("id", "name", "scope", "starts with", "created (UTC)", "revoked (UTC)")
    for t in found:
        revoked = dir_time(t.revoked) if t.revoked is not None else "-"
        table.add_row(str(t.id), t.name, t.scope, t.hint + "...", dir_time(t.created), revoked)
    console.print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (token list).")],
    repo: RepoOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: requests carrying it are refused from now on."""
    row = tokens.revoke_token(context(repo), token_id)
    if as_json:
        print_json(row.to_dict())
        return
    say(f"token {row.id} ({row.name}) revoked")
