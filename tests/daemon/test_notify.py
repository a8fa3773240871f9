"""Notifications delivered for real: an aiosmtpd server (STARTTLS or implicit TLS, AUTH) gets
the mail, an HTTP(S) receiver gets the Slack-, Teams- and JSON-shaped POSTs, a receiver that is
down at first gets the notice once it is up (also after a restart of the outbox), and a channel
that keeps failing is logged and dropped without raising."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.notifybed import (
    PASSWORD,
    USER,
    Cert,
    free_port,
    http_receiver,
    make_cert,
    smtp_server,
)
from vmaccel.daemon.notify import (
    Notifier,
    RetrySchedule,
    RunSummary,
    SmtpChannel,
    Subscription,
    VmOutcome,
    WebhookChannel,
)

FAST = RetrySchedule(first=0.1, factor=1.5, cap=0.3, attempts=50)
T0 = 1_780_000_000.0
RUN = RunSummary(
    policy="gold",
    run_id=42,
    state="failed",
    started=T0,
    ended=T0 + 95,
    vms=(
        VmOutcome("web01", "succeeded", bytes_read=4096, bytes_stored=1024, attempts=2),
        VmOutcome("db01", "failed", errors=("snapshot failed: datastore ds1 is full",)),
    ),
)
SUBS = (Subscription("mail", frozenset({"failure"})), Subscription("chat", frozenset({"always"})))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_mail_arrives_over_tls_with_auth(cert: Cert, state: Path, security: str) -> None:
    with smtp_server(cert, implicit_tls=security == "tls") as (port, mailbox):
        mail = SmtpChannel(
            name="mail",
            host="127.0.0.1",
            port=port,
            security=security,  # type: ignore[arg-type]
            user=USER,
            password_env="SMTP_PASS",
            ca_file=str(cert.cert),
            sender="vmaccel@example.com",
            to=("ops@example.com", "oncall@example.com"),
        )
        with Notifier(state, {"mail": mail}, {"SMTP_PASS": PASSWORD}, FAST) as notifier:
            assert notifier.run_finished(RUN, SUBS)
            assert notifier.flush(15)
    [(envelope, message, user, tls)] = mailbox.mails
    assert (user, tls) == (USER, True)
    assert envelope.mail_from == "vmaccel@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert message["Subject"] == "vmaccel: policy gold failed (1 of 2 VMs failed)"
    assert message["X-Vmaccel-Severity"] == "error"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    body = payload.decode()
    assert "error: snapshot failed: datastore ds1 is full" in body
    assert "web01: succeeded after retry" in body


def test_missing_password_variable_drops_at_once(
    cert: Cert, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mail = SmtpChannel(
        name="mail",
        host="127.0.0.1",
        port=free_port(),
        user=USER,
        password_env="UNSET_VAR",
        sender="vmaccel@example.com",
        to=("ops@example.com",),
    )
    with Notifier(state, {"mail": mail}, {}, FAST) as notifier:
        assert notifier.run_finished(RUN, SUBS)
        assert notifier.flush(5)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "dropped notice" in record.getMessage() and "$UNSET_VAR" in record.getMessage()


def test_webhooks_get_slack_teams_and_json_shapes(state: Path) -> None:
    with http_receiver() as receiver:
        base = f"http://127.0.0.1:{receiver.port}"
        channels = {
            f: WebhookChannel(name=f, url=f"{base}/{f}", format=f)
            for f in ("slack", "teams", "json")
        }
        with Notifier(state, channels, {}, FAST) as notifier:
            assert notifier.run_finished(
                RUN, [Subscription(f, frozenset({"warning"})) for f in channels]
            )
            assert notifier.flush(10)
    posts = dict(receiver.posts)
    assert set(posts) == {"/slack", "/teams", "/json"}
    subject = "vmaccel: policy gold failed (1 of 2 VMs failed)"
    assert posts["/slack"]["text"].startswith(f"*{subject}*\n")
    assert "ds1 is full" in posts["/slack"]["text"]
    teams = posts["/teams"]
    assert teams["type"] == "message"
    [attachment] = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == subject
    assert {"title": "Policy", "value": "gold"} in card["body"][1]["facts"]
    doc = posts["/json"]
    assert (doc["schema"], doc["kind"], doc["severity"]) == ("vmaccel.notice/1", "run", "error")
    assert doc["summary"]["run_id"] == 42
    assert [v["label"] for v in doc["summary"]["vms"]] == ["succeeded after retry", "failed"]


def test_https_webhook_with_pin_or_ca_file(cert: Cert, state: Path) -> None:
    with http_receiver(cert=cert) as receiver:
        url = f"https://127.0.0.1:{receiver.port}/hook"
        channels = {
            "pinned": WebhookChannel(name="pinned", url=url, fingerprint=cert.sha256),
            "ca": WebhookChannel(name="ca", url=url, ca_file=str(cert.cert)),
        }
        with Notifier(state, channels, {}, FAST) as notifier:
            assert notifier.run_finished(RUN, [Subscription("pinned", frozenset({"always"}))])
            assert notifier.run_finished(RUN, [Subscription("ca", frozenset({"always"}))])
            assert notifier.flush(10)
    assert len(receiver.posts) == 2


def test_wrong_pin_is_retried_then_dropped(
    cert: Cert, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    retry = RetrySchedule(first=0.05, factor=1.0, cap=0.05, attempts=3)
    with http_receiver(cert=cert) as receiver:
        channel = WebhookChannel(
            name="pinned", url=f"https://127.0.0.1:{receiver.port}/T/secret", fingerprint="0" * 64
        )
        with Notifier(state, {"pinned": channel}, {}, retry) as notifier:
            assert notifier.run_finished(RUN, [Subscription("pinned", frozenset({"always"}))])
            assert notifier.flush(10)
    assert receiver.posts == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 2 and len(errors) == 1
    assert "after 3 failed attempt(s)" in errors[0]
    assert all("secret" not in m for m in warnings + errors)  # the URL's token is not logged


@pytest.fixture
def down_port() -> Iterator[int]:
    yield free_port()


def test_receiver_down_at_first_gets_it_after_restart(state: Path, down_port: int) -> None:
    channel = WebhookChannel(name="chat", url=f"http://127.0.0.1:{down_port}/hook", format="json")
    first = Notifier(state, {"chat": channel}, {}, FAST)
    with first:
        assert first.run_finished(RUN, SUBS)
        _wait(lambda: first.outbox.due(time.time() + 60)[0].attempts >= 1)
    # The daemon restarted; the notice waited in the outbox, the receiver is now up.
    with (
        http_receiver(port=down_port) as receiver,
        Notifier(state, {"chat": channel}, {}, FAST) as second,
    ):
        assert second.flush(10)
    [(path, doc)] = receiver.posts
    assert (path, doc["summary"]["policy"]) == ("/hook", "gold")


def test_failing_channel_is_logged_and_dropped(
    state: Path, down_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    retry = RetrySchedule(first=0.05, factor=2.0, cap=0.1, attempts=3)
    channel = WebhookChannel(name="chat", url=f"http://127.0.0.1:{down_port}/hook")
    with Notifier(state, {"chat": channel}, {}, retry) as notifier:
        assert notifier.run_finished(RUN, SUBS[1:])  # returns at once: delivery is the worker's
        assert notifier.flush(10)
    assert [r.levelname for r in caplog.records if r.name == "vmaccel.daemon.notify"] == [
        "WARNING",
        "WARNING",
        "ERROR",
    ]


def test_http_4xx_is_dropped_without_retry(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    with http_receiver(status=404) as receiver:
        channel = WebhookChannel(name="chat", url=f"http://127.0.0.1:{receiver.port}/gone")
        with Notifier(state, {"chat": channel}, {}, FAST) as notifier:
            assert notifier.run_finished(RUN, SUBS)
            assert notifier.flush(10)
    assert len(receiver.posts) == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "it cannot succeed" in error and "HTTP 404" in error


def test_send_once_and_unknown_channels(state: Path, down_port: int) -> None:
    channel = WebhookChannel(name="chat", url=f"http://127.0.0.1:{down_port}/hook")
    notifier = Notifier(state, {"chat": channel}, {}, FAST)  # worker not started: rows stay
    try:
        from vmaccel.daemon.notify import stale_notice

        notice = stale_notice("gold", None, 86400.0, T0)
        assert notifier.send(notice, ["chat", "nowhere"], once="stale:gold:never")
        assert not notifier.send(notice, ["chat"], once="stale:gold:never")
        assert not notifier.send(notice, ["nowhere"])
        assert len(notifier.outbox) == 1
        assert not notifier.run_finished(RUN, [Subscription("chat", frozenset({"digest"}))])
    finally:
        notifier.close()


def test_damaged_outbox_row_is_dropped_not_looped(
    state: Path, down_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    channel = WebhookChannel(name="chat", url=f"http://127.0.0.1:{down_port}/hook")
    notifier = Notifier(state, {"chat": channel}, {}, FAST)
    try:
        with sqlite3.connect(notifier.outbox.path) as db:
            db.execute(
                "INSERT INTO outbox (channel, notice, next_at, created) VALUES ('chat', '{', 0, 0)"
            )
        assert notifier.outbox.due(time.time()) == []
        assert len(notifier.outbox) == 0
        assert "dropped unreadable outbox entry" in caplog.text
    finally:
        notifier.close()
