"""Notification channels: where a notice goes, configured by name in ``<config dir>/notify.toml``.

The file is written by the operator (it is configuration, not catalog state)::

    [channels.ops-mail]
    type = "smtp"
    host = "mail.example.com"
    security = "starttls"        # "starttls" (default port 587) | "tls" (465) | "none" (25)
    user = "vmaccel"             # optional: AUTH only when set
    password_env = "SMTP_PASS"   # the NAME of the variable holding the password
    from = "vmaccel@example.com"
    to = ["ops@example.com"]

    [channels.ops-chat]
    type = "webhook"
    url = "https://hooks.example.com/T0/B0/x"
    format = "slack"             # "slack" | "teams" | "json"
    fingerprint = "AB:CD:..."    # or ca_file = "..."; neither: the system CAs

vmaccel never stores a password: an SMTP channel names an environment variable, read from the
mapping the application hands to the notifier when a mail is sent. Webhook requests ignore the
process environment (proxies, CA bundle variables): ``proxy``, ``ca_file`` and ``fingerprint``
say all there is.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from vmaccel.vocabulary.errors import UsageError, VmaccelError

Security = Literal["starttls", "tls", "none"]
WebhookFormat = Literal["slack", "teams", "json"]

DEFAULT_PORTS: Mapping[str, int] = {"starttls": 587, "tls": 465, "none": 25}
FILE_NAME = "notify.toml"


@dataclass(frozen=True)
class SmtpChannel:
    """Mail over SMTP. ``port`` 0 means the default port of ``security``; ``password_env`` is
    required exactly when ``user`` is set; ``ca_file`` replaces the system CAs for TLS."""

    name: str
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 0
    security: Security = "starttls"
    user: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]


@dataclass(frozen=True)
class WebhookChannel:
    """An HTTP(S) POST of one JSON document per notice. For ``https``, ``fingerprint`` pins the
    server certificate's SHA-256 (hex, colons optional; the CA chain is then not consulted),
    ``ca_file`` replaces the system CAs; at most one of the two."""

    name: str
    url: str
    format: WebhookFormat = "json"
    ca_file: str | None = None
    fingerprint: str | None = None
    proxy: str | None = None
    timeout: float = 30.0


Channel = SmtpChannel | WebhookChannel


class DeliveryFailed(VmaccelError):
    """A channel refused or could not take a notice. ``permanent``: trying again cannot help
    (bad credentials, a refused address, an HTTP 4xx other than 408/429, a missing password
    variable), so the notice is dropped at once instead of retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def load_channels(path: Path) -> dict[str, Channel]:
    """The channels of ``path`` (a ``notify.toml``) by name; ``{}`` when the file is missing.

    Raises :class:`UsageError` naming the channel and the field when the file is malformed.
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    table = data.get("channels", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [channels] must be a table of named channels")
    return {name: channel_from_dict(name, raw) for name, raw in table.items()}


def channel_from_dict(name: str, raw: object) -> Channel:
    """One channel from its TOML table (``type`` says which kind)."""
    if not isinstance(raw, dict):
        raise UsageError(f"notification channel {name!r} must be a table")
    fields = dict(raw)
    kind = fields.pop("type", None)
    if kind == "smtp":
        return _smtp(name, fields)
    if kind == "webhook":
        return _webhook(name, fields)
    raise UsageError(f"notification channel {name!r}: type must be 'smtp' or 'webhook'")


def _take(
    name: str, fields: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = fields.pop(key, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        label = " or ".join(k.__name__ for k in kinds)
        raise UsageError(f"notification channel {name!r}: {key} must be a {label}")
    return value


def _smtp(name: str, fields: dict[str, Any]) -> SmtpChannel:
    to = fields.pop("to", None)
    if isinstance(to, str):
        to = [to]
    if not to or not all(isinstance(a, str) and "@" in a for a in to):
        raise UsageError(f"notification channel {name!r}: to must list mail addresses")
    security = _take(name, fields, "security", str, "starttls")
    if security not in get_args(Security):
        raise UsageError(f"notification channel {name!r}: security must be {get_args(Security)}")
    channel = SmtpChannel(
        name=name,
        host=_required(name, fields, "host"),
        sender=_required(name, fields, "from"),
        to=tuple(to),
        port=_take(name, fields, "port", int, 0),
        security=security,
        user=_take(name, fields, "user", str),
        password_env=_take(name, fields, "password_env", str),
        ca_file=_take(name, fields, "ca_file", str),
        timeout=float(_take(name, fields, "timeout", (int, float), 30.0)),
    )
    if (channel.user is None) != (channel.password_env is None):
        raise UsageError(
            f"notification channel {name!r}: user and password_env go together "
            "(the password is read from the variable password_env names)"
        )
    if channel.user is not None and channel.security == "none":
        raise UsageError(
            f"notification channel {name!r}: AUTH needs security 'starttls' or 'tls' "
            "(a password is never sent in clear)"
        )
    _no_extra(name, fields)
    return channel


def _webhook(name: str, fields: dict[str, Any]) -> WebhookChannel:
    url = _required(name, fields, "url")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise UsageError(f"notification channel {name!r}: url must be an http(s):// URL")
    fmt = _take(name, fields, "format", str, "json")
    if fmt not in get_args(WebhookFormat):
        raise UsageError(f"notification channel {name!r}: format must be {get_args(WebhookFormat)}")
    channel = WebhookChannel(
        name=name,
        url=url,
        format=fmt,
        ca_file=_take(name, fields, "ca_file", str),
        fingerprint=_fingerprint(name, _take(name, fields, "fingerprint", str)),
        proxy=_take(name, fields, "proxy", str),
        timeout=float(_take(name, fields, "timeout", (int, float), 30.0)),
    )
    if channel.ca_file and channel.fingerprint:
        raise UsageError(f"notification channel {name!r}: give ca_file or fingerprint, not both")
    _no_extra(name, fields)
    return channel


def _fingerprint(name: str, text: str | None) -> str | None:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons and case ignored)."""
    if text is None:
        return None
    digits = text.replace(":", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise UsageError(f"notification channel {name!r}: fingerprint must be a SHA-256 in hex")
    return digits


def _required(name: str, fields: dict[str, Any], key: str) -> str:
    value = _take(name, fields, key, str)
    if not value:
        raise UsageError(f"notification channel {name!r} needs {key}")
    return str(value)


def _no_extra(name: str, fields: dict[str, Any]) -> None:
    if fields:
        raise UsageError(
            f"notification channel {name!r}: unknown field(s) {', '.join(sorted(fields))}"
        )
