"""How the http transport takes the answers a datastore server may give to a Range GET.

A local TLS server (pinned by thumbprint, as vCenter is) answers in the shapes the bed's vcsim
does not send: a chunked 206, a body longer than asked, a short Content-Length, a cut body,
a 401 then the right answer. The bed's own tests (test_transports, the fault suites) are the
transport's proof against vCenter's interface; these pin down the parsing.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.daemon.notifybed import make_cert
from vmaccel.plugin import backoff
from vmaccel.plugin.transport.http import HttpSource
from vmaccel.plugin.vcenter.models import HttpDiskLocation, TlsTrust
from vmaccel.vocabulary.errors import SessionLost, TransportError

DISK = random.Random(3).randbytes(256 * 1024)
Answer = Callable[[BaseHTTPRequestHandler, int, int], None]


@dataclass
class Server:
    url: str
    trust: TlsTrust
    answers: list[Answer] = field(default_factory=list)  # one per GET, then `plain`
    gets: list[tuple[str, str]] = field(default_factory=list)  # (range, cookie)
    connections: int = 0


def plain(h: BaseHTTPRequestHandler, start: int, end: int) -> None:
    h.send_response(206)
    h.send_header("Content-Length", str(end - start))
    h.end_headers()
    h.wfile.write(DISK[start:end])


def chunked(h: BaseHTTPRequestHandler, start: int, end: int, extra: bytes = b"") -> None:
    h.send_response(206)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    body = DISK[start:end] + extra
    for k in range(0, len(body), 10_000):
        part = body[k : k + 10_000]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
    h.wfile.write(b"0\r\n\r\n")


def cut(h: BaseHTTPRequestHandler, start: int, end: int) -> None:
    h.send_response(206)
    h.send_header("Content-Length", str(end - start))
    h.end_headers()
    h.wfile.write(DISK[start : start + (end - start) // 3])
    h.close_connection = True


def short_length(h: BaseHTTPRequestHandler, start: int, end: int) -> None:
    h.send_response(206)
    h.send_header("Content-Length", str(end - start - 1))
    h.end_headers()
    h.wfile.write(DISK[start : end - 1])


def refused(h: BaseHTTPRequestHandler, start: int, end: int) -> None:
    h.send_response(401)
    h.send_header("Content-Length", "0")
    h.end_headers()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(backoff, "TRANSPORT", backoff.Backoff(window=5, first=0.01, attempts=2))
    cert = make_cert(tmp_path)
    state = Server("", TlsTrust(thumbprint=cert.sha256))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vCenter

        def setup(self) -> None:
            super().setup()
            state.connections += 1

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DISK)))
            self.end_headers()

        def do_GET(self) -> None:
            rng = self.headers["Range"]
            state.gets.append((rng, self.headers["Cookie"]))
            first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            answer = state.answers.pop(0) if state.answers else plain
            answer(self, first, last + 1)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = cert.server_context().wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"https://127.0.0.1:{httpd.server_address[1]}/folder/vm/disk-flat.vmdk?dsName=ds"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def source(server: Server, renew: Callable[[str], str] | None = None) -> HttpSource:
    return HttpSource(HttpDiskLocation(server.url, "c=1", server.trust), len(DISK), renew=renew)


def read_into(src: HttpSource, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    src.read_into(offset, memoryview(buf))
    return bytes(buf)


def test_plain_and_chunked_answers_fill_the_buffer_on_one_connection(server: Server) -> None:
    server.answers = [plain, chunked, plain]
    src = source(server)
    try:
        assert read_into(src, 0, 50_000) == DISK[:50_000]
        assert read_into(src, 7, 100_001) == DISK[7:100_008]  # chunked, several chunks
        assert read_into(src, 200_000, 62_144) == DISK[200_000:]
    finally:
        src.close()
    assert len(server.gets) == 3 and server.connections == 1  # the HEAD's, kept alive


def test_a_body_longer_than_asked_is_not_taken(server: Server) -> None:
    def longer(h: BaseHTTPRequestHandler, start: int, end: int) -> None:
        chunked(h, start, end, extra=b"more")

    server.answers = [longer] * 3
    src = source(server)
    with pytest.raises(TransportError, match="went on past the 4096 bytes asked for"):
        read_into(src, 0, 4096)
    assert len(server.gets) == 3  # the try and its two retries
    assert read_into(src, 0, 4096) == DISK[:4096]  # the next answer is right again
    src.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [(cut, "ended after 10922 of 32768 bytes"), (short_length, "answered 206 with 32767 bytes")],
)
def test_short_answers_are_sent_again_then_given_up(
    server: Server, answer: Answer, message: str
) -> None:
    server.answers = [answer, plain]  # once: the retry succeeds
    src = source(server)
    assert read_into(src, 0, 32768) == DISK[:32768]
    server.answers = [answer] * 3
    with pytest.raises(TransportError, match=f"{message}.*gave up after retrying"):
        read_into(src, 0, 32768)
    src.close()


def test_a_refused_session_is_renewed_once(server: Server) -> None:
    server.answers = [refused, plain]
    renewed: list[str] = []

    def renew(stale: str) -> str:
        renewed.append(stale)
        return "c=2"

    src = source(server, renew)
    assert read_into(src, 100, 1000) == DISK[100:1100]
    assert renewed == ["c=1"] and [c for _, c in server.gets] == ["c=1", "c=2"]
    server.answers = [refused, refused]
    with pytest.raises(SessionLost, match="refused again after a new login"):
        read_into(src, 0, 10)
    src.close()
