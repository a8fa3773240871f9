"""The vCenters vmaccel backs up from: add (pin the certificate, test the login, store),
list, test. Passwords are handed in by the application (a prompt, a variable); only the
registry decides where a stored one lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmaccel.plugin.registry import Registry, VCenterEntry, parse_url
from vmaccel.plugin.vcenter.models import Endpoint, TagCategory, TlsTrust
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import UsageError


@dataclass(frozen=True)
class Certificate:
    """The certificate a server presents: its host and its SHA-256 and SHA-1 thumbprints."""

    host: str
    sha256: str
    sha1: str


@dataclass(frozen=True)
class NewVCenter:
    """A vCenter to add. Exactly one trust: ``thumbprint`` (SHA-256) or ``ca_file`` (PEM);
    ``password_env`` names the variable read at each run (then ``password`` is only for the
    login test and never stored)."""

    name: str
    url: str
    user: str
    password: str
    thumbprint: str | None = None
    ca_file: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class VCenterAdded:
    name: str
    version: str
    password_from: str  # "$VAR" or "the <store> store"


@dataclass(frozen=True)
class VCenterTested:
    name: str
    version: str
    api_version: str
    vms: int
    user: str


def validate(url: str, thumbprint: str | None, ca_file: str | None) -> None:
    """Raise :class:`UsageError` for a URL that is not ``https://HOST[:PORT]/...`` or for two
    trusts at once: checked before anyone is asked for a password."""
    parse_url(url)
    if thumbprint and ca_file:
        raise UsageError("give --thumbprint or --ca-file, not both")


def first_contact(url: str) -> Certificate:
    """The certificate the server at ``url`` presents now (trust on first use)."""
    from vmaccel.plugin.vcenter.tls import server_certificate, thumbprints

    host = parse_url(url)
    hostname, _, port = host.partition(":")
    sha1, sha256 = thumbprints(server_certificate(hostname, int(port or 443)))
    return Certificate(host, sha256, sha1)


def add_vcenter(ctx: Context, new: NewVCenter) -> VCenterAdded:
    """Test the login with the given trust, then store the entry (replacing one of that
    name). Nothing is stored when the login fails."""
    from vmaccel.plugin.vcenter.connection import VCenter  # the SDK loads only when needed
    from vmaccel.plugin.vcenter.tls import normalize_thumbprint

    validate(new.url, new.thumbprint, new.ca_file)
    if not new.thumbprint and not new.ca_file:
        raise UsageError("a vCenter needs a pinned thumbprint or a CA file")
    host = parse_url(new.url)
    trust = TlsTrust(normalize_thumbprint(new.thumbprint) if new.thumbprint else None, new.ca_file)
    with VCenter(Endpoint(host, new.user, new.password, trust)) as vc:
        version = str(vc.content.about.fullName)
    entry = VCenterEntry(
        new.name, host, new.user, trust.thumbprint, trust.ca_file, new.password_env
    )
    stored = Registry(ctx.config_dir).save(entry, None if new.password_env else new.password)
    where = f"${new.password_env}" if new.password_env else f"the {stored.password_store} store"
    return VCenterAdded(new.name, version, where)


def password_from_env(ctx: Context, variable: str) -> str:
    """The value of ``$variable``; raises :class:`UsageError` when it is not set."""
    password = ctx.env.get(variable)
    if password is None:
        raise UsageError(f"${variable} is not set")
    return password


def list_vcenters(ctx: Context) -> list[VCenterEntry]:
    """The registered vCenters, by name (no secrets)."""
    return sorted(Registry(ctx.config_dir).entries().values(), key=lambda e: e.name)


def vcenter_dict(entry: VCenterEntry) -> dict[str, Any]:
    """One entry as ``vcenter list --json`` prints it (docs/json.md)."""
    return {
        "host": entry.host,
        "user": entry.user,
        "thumbprint": entry.thumbprint,
        "ca_file": entry.ca_file,
        "password_env": entry.password_env,
    }


def check_vcenter(ctx: Context, name: str) -> VCenterTested:
    """Log in and count the VMs: proves URL, certificate and credentials."""
    from vmaccel.plugin.vcenter.connection import VCenter
    from vmaccel.plugin.vcenter.inventory import list_vms

    endpoint = Registry(ctx.config_dir).endpoint(name, ctx.env)
    with VCenter(endpoint) as vc:
        vms = list_vms(vc)
        return VCenterTested(
            name, str(vc.content.about.fullName), str(vc.api_version), len(vms), endpoint.user
        )


@dataclass(frozen=True)
class VCenterTags:
    """The tag categories of vCenter ``name`` (sorted by name, each with its tags), as a
    policy's ``tags`` names them: ``CATEGORY:TAG`` (see :meth:`specs`)."""

    name: str
    categories: tuple[TagCategory, ...]

    def specs(self) -> list[str]:
        """Every tag as ``CATEGORY:TAG``, in category then tag order."""
        return [f"{c.name}:{t.name}" for c in self.categories for t in c.tags]

    def to_dict(self) -> dict[str, Any]:
        """As ``GET /vcenters/{name}/tags`` answers (docs/api.md)."""
        return {
            "vcenter": self.name,
            "categories": [
                {
                    "id": c.id,
                    "name": c.name,
                    "description": c.description,
                    "cardinality": c.cardinality,
                    "associable_types": list(c.associable_types),
                    "tags": [
                        {
                            "id": t.id,
                            "name": t.name,
                            "description": t.description,
                            "spec": f"{c.name}:{t.name}",
                        }
                        for t in c.tags
                    ],
                }
                for c in self.categories
            ],
        }


def list_tags(ctx: Context, name: str) -> VCenterTags:
    """The tag categories and tags of registered vCenter ``name``, read live through its
    tagging API (one call per category and per tag). Raises :class:`NotFound` for an
    unregistered name, :class:`LoginFailed`/:class:`ConnectionFailed` as a login does."""
    from vmaccel.plugin.vcenter.tags import TagDirectory  # the SDK loads only when needed

    endpoint = Registry(ctx.config_dir).endpoint(name, ctx.env)
    return VCenterTags(name, TagDirectory(endpoint).categories())
