"""Deliver a notice as one JSON POST: shaped for Slack, for Microsoft Teams, or vmaccel's own.

Shapes (``format`` of the channel):

- ``slack``: ``{"text": "*subject*\\n<text>"}`` with ``&``, ``<``, ``>`` escaped as Slack asks;
  Slack incoming webhooks and the many receivers that copy them (Mattermost, Rocket.Chat,
  Discord's ``/slack`` endpoint) accept it.
- ``teams``: a ``message`` carrying one Adaptive Card (version 1.4): title, text, facts. Teams
  Workflows webhooks and the older Office 365 connectors both accept this envelope.
- ``json``: ``{"schema": "vmaccel.notice/1", ...Notice.to_dict()}``.

TLS: requests ignore the process environment (``trust_env`` off, so neither proxy variables nor
``REQUESTS_CA_BUNDLE`` apply) and verify by the channel's ``ca_file``, or the pinned SHA-256
``fingerprint`` (checked by urllib3 on every connection, CA chain and host name then not
consulted), or else requests' default CA bundle. Redirects are not followed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vmaccel.daemon.channels import DeliveryFailed, WebhookChannel
from vmaccel.daemon.notice import Notice

if TYPE_CHECKING:
    import requests

SCHEMA = "vmaccel.notice/1"
_TEAMS_COLOR = {"error": "Attention", "warning": "Warning", "info": "Good"}
RETRYABLE_STATUS = frozenset({408, 425, 429})


def payload(fmt: str, notice: Notice) -> dict[str, Any]:
    """The JSON document a receiver of format ``fmt`` (slack, teams, json) gets."""
    if fmt == "slack":
        return {"text": _slack_escape(f"*{notice.subject}*\n{notice.text}")}
    if fmt == "teams":
        return _teams(notice)
    return {"schema": SCHEMA, **notice.to_dict()}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _teams(notice: Notice) -> dict[str, Any]:
    # Adaptive Card TextBlocks render markdown, where one newline is no line break: keep
    # paragraphs by doubling it, and leave the indentation to the text's own wording.
    body_text = "\n\n".join(line.strip() for line in notice.text.splitlines() if line.strip())
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": notice.subject,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": _TEAMS_COLOR.get(notice.severity, "Default"),
            },
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in notice.facts]},
            {"type": "TextBlock", "text": body_text, "wrap": True},
        ],
    }
    return {
        "type": "message",
        "summary": notice.subject,
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _session(channel: WebhookChannel) -> requests.Session:
    """A session that verifies as ``channel`` says and ignores the process environment. The
    pin and the CA file use the project's one pinning helper; ``requests`` (and that helper)
    load on the first post, so commands that merely import the daemon start without them."""
    from vmaccel.plugin.vcenter.models import TlsTrust
    from vmaccel.plugin.vcenter.tls import requests_session

    if channel.fingerprint is not None:
        return requests_session(TlsTrust(thumbprint=channel.fingerprint))
    if channel.ca_file is not None:
        return requests_session(TlsTrust(ca_file=channel.ca_file))
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def post_webhook(channel: WebhookChannel, notice: Notice) -> None:
    """POST ``notice`` to ``channel``; returns on a 2xx answer. Raises
    :class:`DeliveryFailed` (``permanent`` for 3xx and 4xx other than 408/425/429) or
    :class:`requests.RequestException` (an :class:`OSError`: network, TLS, timeout)."""
    with _session(channel) as session:
        proxies = {"http": channel.proxy, "https": channel.proxy} if channel.proxy else {}
        response = session.post(
            channel.url,
            json=payload(channel.format, notice),
            timeout=channel.timeout,
            proxies=proxies,
            allow_redirects=False,
        )
    if 200 <= response.status_code < 300:
        return
    permanent = response.status_code < 500 and response.status_code not in RETRYABLE_STATUS
    reason = response.text.strip()[:200]
    raise DeliveryFailed(
        f"{where(channel)} answered HTTP {response.status_code} {reason}".strip(), permanent
    )


def where(channel: WebhookChannel) -> str:
    """The channel's URL without path and query: those often hold the webhook's secret token,
    so logs name only the scheme, host and port."""
    parts = urlsplit(channel.url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


def redact(channel: WebhookChannel, message: str) -> str:
    """``message`` (an exception's text) with the channel's secret URL path replaced."""
    parts = urlsplit(channel.url)
    for secret in (f"{parts.path}?{parts.query}", parts.path):
        if len(secret) > 1:
            message = message.replace(secret, "/...")
    return message
