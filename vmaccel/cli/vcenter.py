"""``vmaccel vcenter add|list|test``: the vCenters vmaccel backs up from."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.table import Table

from vmaccel.cli.output import console, print_json
from vmaccel.cli.settings import build_settings
from vmaccel.plugin.registry import Registry, VCenterEntry, parse_url
from vmaccel.plugin.vcenter.models import Endpoint, TlsTrust
from vmaccel.vocabulary.errors import UsageError

app = typer.Typer(help="Add, list and test vCenter connections.", no_args_is_help=True)


@app.command("add")
def add(
    name: str,
    url: Annotated[str, typer.Option("--url", help="https://HOST[:PORT]/sdk")],
    user: Annotated[str, typer.Option("--user")],
    password_env: Annotated[
        str | None,
        typer.Option(
            "--password-env",
            metavar="VAR",
            help="Read the password from $VAR at each run (stores only VAR).",
        ),
    ] = None,
    thumbprint: Annotated[
        str | None, typer.Option("--thumbprint", help="Pin this SHA-256 certificate thumbprint.")
    ] = None,
    ca_file: Annotated[
        str | None, typer.Option("--ca-file", help="Trust certificates signed by this CA (PEM).")
    ] = None,
) -> None:
    """Add (or replace) a vCenter. Without --thumbprint/--ca-file, the certificate seen on
    first contact is shown and pinned. The login is tested before anything is stored."""
    from vmaccel.plugin.vcenter.connection import VCenter  # the SDK loads only when needed
    from vmaccel.plugin.vcenter.tls import normalize_thumbprint, server_certificate, thumbprints

    if thumbprint and ca_file:
        raise UsageError("give --thumbprint or --ca-file, not both")
    settings = build_settings(None)
    host = parse_url(url)
    if ca_file is None and thumbprint is None:
        hostname, _, port = host.partition(":")
        sha1, sha256 = thumbprints(server_certificate(hostname, int(port or 443)))
        console.print(
            f"{host} presents certificate SHA-256 {sha256} (SHA-1 {sha1}); pinning it",
            highlight=False,
        )
        thumbprint = sha256
    trust = TlsTrust(normalize_thumbprint(thumbprint) if thumbprint else None, ca_file)
    if password_env is not None:
        password = settings.env.get(password_env)
        if password is None:
            raise UsageError(f"${password_env} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"Password for {user}@{host}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    with VCenter(Endpoint(host, user, password, trust)) as vc:
        version = vc.content.about.fullName
    entry = VCenterEntry(name, host, user, trust.thumbprint, trust.ca_file, password_env)
    stored = Registry(settings.config_dir).save(entry, None if password_env else password)
    where = f"${password_env}" if password_env else f"the {stored.password_store} store"
    console.print(f"added vCenter {name} ({version}); password from {where}", highlight=False)


@app.command("list")
def list_vcenters(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The vCenters added so far (no secrets shown)."""
    entries = Registry(build_settings(None).config_dir).entries()
    if as_json:
        print_json(
            {
                n: {
                    "host": e.host,
                    "user": e.user,
                    "thumbprint": e.thumbprint,
                    "ca_file": e.ca_file,
                    "password_env": e.password_env,
                }
                for n, e in entries.items()
            }
        )
        return
    table = Table("name", "host", "user", "trust", "password")
    for e in entries.values():
        trust = f"sha256 {e.thumbprint[:16]}…" if e.thumbprint else f"CA {e.ca_file}"
        table.add_row(
            e.name,
            e.host,
            e.user,
            trust,
            f"${e.password_env}" if e.password_env else e.password_store or "-",
        )
    console.print(table)


@app.command("test")
def test(name: str) -> None:
    """Log in and count the VMs: proves URL, certificate and credentials."""
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.inventory import list_vms

    settings = build_settings(None)
    endpoint = Registry(settings.config_dir).endpoint(name, settings.env)
    with VCenter(endpoint) as vc:
        vms = list_vms(vc)
        console.print(
            f"{name}: {vc.content.about.fullName}, API {vc.api_version}, "
            f"{len(vms)} VMs visible to {endpoint.user}",
            highlight=False,
        )
