"""``vmaccel vcenter add|list|test``: the vCenters vmaccel backs up from."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.output import console, print_json, say
from vmaccel.cli.settings import context
from vmaccel.service import vcenters

app = typer.Typer(help="Add, list and test vCenter connections.", no_args_is_help=True)

_UrlOpt = Annotated[str, typer.Option("--url", help="https://HOST[:PORT]/sdk")]
_PasswordEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--password-env",
        metavar="VAR",
        help="Read the password from $VAR at each run (stores only VAR).",
    ),
]
_ThumbprintOpt = Annotated[
    str | None, typer.Option("--thumbprint", help="Pin this SHA-256 certificate thumbprint.")
]
_CaFileOpt = Annotated[
    str | None, typer.Option("--ca-file", help="Trust certificates signed by this CA (PEM).")
]


@app.command("add")
def add(
    name: str,
    url: _UrlOpt,
    user: Annotated[str, typer.Option("--user")],
    password_env: _PasswordEnvOpt = None,
    thumbprint: _ThumbprintOpt = None,
    ca_file: _CaFileOpt = None,
) -> None:
    """Add (or replace) a vCenter. Without --thumbprint/--ca-file, the certificate seen on
    first contact is shown and pinned. The login is tested before anything is stored."""
    ctx = context()
    vcenters.validate(url, thumbprint, ca_file)
    if ca_file is None and thumbprint is None:
        seen = vcenters.first_contact(url)
        say(
            f"{seen.host} presents certificate SHA-256 {seen.sha256} (SHA-1 {seen.sha1}); "
            "pinning it"
        )
        thumbprint = seen.sha256
    if password_env is not None:
        password = vcenters.password_from_env(ctx, password_env)
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {user}@{url}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    new = vcenters.NewVCenter(name, url, user, password, thumbprint, ca_file, password_env)
    added = vcenters.add_vcenter(ctx, new)
    say(f"added vCenter {added.name} ({added.version}); password from {added.password_from}")


@app.command("list")
def list_vcenters(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The vCenters added so far (no secrets shown)."""
    entries = vcenters.list_vcenters(context())
    if as_json:
        print_json({e.name: vcenters.vcenter_dict(e) for e in entries})
        return
    table = Table("name", "host", "user", "trust", "password")
    for e in entries:
        trust = f"sha256 {e.thumbprint[:16]}…" if e.thumbprint else f"CA {e.ca_file}"
        password = f"${e.password_env}" if e.password_env else e.password_store or "-"
        table.add_row(e.name, e.host, e.user, trust, password)
    console.print(table)


@app.command("test")
def test(name: str) -> None:
    """Log in and count the VMs: proves URL, certificate and credentials."""
    t = vcenters.check_vcenter(context(), name)
    say(f"{t.name}: {t.version}, API {t.api_version}, {t.vms} VMs visible to {t.user}")
