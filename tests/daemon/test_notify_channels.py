"""Loading notification channels from ``notify.toml``: every field, every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmaccel.daemon.notify import SmtpChannel, WebhookChannel, load_channels, open_notifier
from vmaccel.vocabulary.errors import UsageError

FULL = """
[channels.ops-mail]
type = "smtp"
host = "mail.example.com"
security = "tls"
user = "vmaccel"
password_env = "SMTP_PASS"
from = "vmaccel@example.com"
to = ["ops@example.com", "oncall@example.com"]

[channels.plain]
type = "smtp"
host = "relay"
security = "none"
from = "vmaccel@example.com"
to = "ops@example.com"

[channels.chat]
type = "webhook"
url = "https://hooks.example.com/T0/B0/secret"
format = "teams"
fingerprint = "%s"
proxy = "http://proxy:3128"
timeout = 5
"""
PIN = ":".join(["AB"] * 32)


def test_load_every_field(tmp_path: Path) -> None:
    path = tmp_path / "notify.toml"
    path.write_text(FULL % PIN)
    channels = load_channels(path)
    assert channels["ops-mail"] == SmtpChannel(
        name="ops-mail",
        host="mail.example.com",
        sender="vmaccel@example.com",
        to=("ops@example.com", "oncall@example.com"),
        security="tls",
        user="vmaccel",
        password_env="SMTP_PASS",
    )
    assert channels["ops-mail"].effective_port == 465
    assert isinstance(channels["plain"], SmtpChannel)
    assert (channels["plain"].to, channels["plain"].effective_port) == (("ops@example.com",), 25)
    assert channels["chat"] == WebhookChannel(
        name="chat",
        url="https://hooks.example.com/T0/B0/secret",
        format="teams",
        fingerprint="ab" * 32,
        proxy="http://proxy:3128",
        timeout=5.0,
    )


def test_missing_file_means_no_channels(tmp_path: Path) -> None:
    assert load_channels(tmp_path / "notify.toml") == {}
    with open_notifier(tmp_path, tmp_path / "state", {}) as notifier:
        assert notifier.channels == {}
        assert (tmp_path / "state" / "notify-outbox.sqlite").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('type = "pager"', "type must be 'smtp' or 'webhook'"),
        ('type = "smtp"\nfrom = "a@b"\nto = ["c@d"]', "needs host"),
        ('type = "smtp"\nhost = "h"\nfrom = "a@b"\nto = ["nobody"]', "to must list"),
        ('type = "smtp"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\nuser = "u"', "go together"),
        (
            'type = "smtp"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\nsecurity = "none"\n'
            'user = "u"\npassword_env = "P"',
            "never sent in clear",
        ),
        ('type = "smtp"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\nport = "25"', "port must be"),
        ('type = "smtp"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\npassword = "x"', "unknown"),
        ('type = "webhook"\nurl = "ftp://x/y"', "http(s):// URL"),
        ('type = "webhook"\nurl = "https://x/y"\nformat = "xml"', "format must be"),
        ('type = "webhook"\nurl = "https://x/y"\nfingerprint = "abc"', "SHA-256"),
        (
            f'type = "webhook"\nurl = "https://x/y"\nca_file = "c"\nfingerprint = "{PIN}"',
            "not both",
        ),
    ],
)
def test_bad_channels_are_refused(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "notify.toml"
    path.write_text(f"[channels.bad]\n{table}\n")
    with pytest.raises(UsageError, match="'bad'") as info:
        load_channels(path)
    assert message in str(info.value)


def test_malformed_toml_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "notify.toml"
    path.write_text("[channels\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_channels(path)
