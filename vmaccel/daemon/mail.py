"""Deliver a notice as one plain-text mail over SMTP (stdlib :mod:`smtplib`).

TLS is either implicit (``security = "tls"``, SMTPS) or negotiated with STARTTLS before any
credentials are sent; the server certificate and host name are always verified, against
``ca_file`` when the channel names one, else against the system's CAs. A connection without TLS
never carries a password (the channel refuses that combination when it is loaded).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from vmaccel.daemon.channels import DeliveryFailed, SmtpChannel
from vmaccel.daemon.notice import Notice


def build_message(channel: SmtpChannel, notice: Notice) -> EmailMessage:
    """The mail for ``notice``: its subject, its text as the body (UTF-8), the severity and
    kind in ``X-Vmaccel-*`` headers so that mail rules can sort on them."""
    message = EmailMessage()
    message["Subject"] = notice.subject
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(notice.created or None, localtime=False)
    message["Message-ID"] = make_msgid(domain=channel.sender.rpartition("@")[2] or None)
    message["X-Vmaccel-Severity"] = notice.severity
    message["X-Vmaccel-Kind"] = notice.kind
    message.set_content(notice.text)
    return message


def send_mail(channel: SmtpChannel, notice: Notice, env: Mapping[str, str]) -> None:
    """Send ``notice`` through ``channel``; returns when the server accepted it for every
    recipient. Raises :class:`DeliveryFailed` (``permanent`` for refused credentials, refused
    addresses, 5xx answers and a missing password variable) or :class:`OSError` (network)."""
    password = _password(channel, env)
    context = ssl.create_default_context(cafile=channel.ca_file)
    port = channel.effective_port
    try:
        if channel.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                channel.host, port, timeout=channel.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(channel.host, port, timeout=channel.timeout)
        with smtp:
            if channel.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=context)
                smtp.ehlo()
            if channel.user is not None and password is not None:
                smtp.login(channel.user, password)
            refused = smtp.send_message(build_message(channel, notice))
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"{channel.host} refused the login: {_reply(exc)}", True) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryFailed(f"{channel.host}: {exc}", True) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryFailed(f"{channel.host} refused every recipient", True) from exc
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(
            f"{channel.host} answered {_reply(exc)}", exc.smtp_code >= 500
        ) from exc
    if refused:
        raise DeliveryFailed(f"{channel.host} refused {', '.join(sorted(refused))}", True)


def _password(channel: SmtpChannel, env: Mapping[str, str]) -> str | None:
    if channel.password_env is None:
        return None
    value = env.get(channel.password_env)
    if value is None:
        raise DeliveryFailed(
            f"channel {channel.name!r} takes its SMTP password from ${channel.password_env}, "
            "which the daemon's environment does not set",
            permanent=True,
        )
    return value


def _reply(exc: smtplib.SMTPResponseException) -> str:
    message = exc.smtp_error
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return f"{exc.smtp_code} {text}".strip()
