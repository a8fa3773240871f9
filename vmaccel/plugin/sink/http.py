"""The ``http`` sink: one streamOptimized VMDK sent to an NFC device URL with a single PUT
(chunked transfer encoding, so the stream is never held whole). The stream is produced
while it is sent; ``keepalive`` is called at most every ``KEEPALIVE_SECONDS`` meanwhile (the
import lease expires when nothing is heard of it). A failed upload is not retried: the lease
is aborted and the VM goes with it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import requests

from vmaccel.plugin.vcenter.models import TlsTrust
from vmaccel.plugin.vcenter.nfc import STREAM_VMDK
from vmaccel.plugin.vcenter.tls import requests_session
from vmaccel.vocabulary.errors import TransportError

KEEPALIVE_SECONDS = 20.0
BATCH = 1024 * 1024  # bytes handed to the socket at once


def _batched(
    pieces: Iterable[bytes], keepalive: Callable[[], None] | None, sent: list[int]
) -> Iterator[bytes]:
    last = time.monotonic()
    buf: list[bytes] = []
    size = 0
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= BATCH:
            sent[0] += size
            yield b"".join(buf)
            buf, size = [], 0
        if keepalive is not None and time.monotonic() - last >= KEEPALIVE_SECONDS:
            keepalive()
            last = time.monotonic()
    if buf:
        sent[0] += size
        yield b"".join(buf)


def upload_stream(
    url: str,
    cookie: str,
    trust: TlsTrust,
    pieces: Iterable[bytes],
    keepalive: Callable[[], None] | None = None,
    timeout: float = 600.0,
) -> int:
    """PUT ``pieces`` (a streamOptimized VMDK) to ``url``; returns the bytes sent. Raises
    :class:`TransportError` naming the URL when the upload fails or is refused."""
    session = requests_session(trust)
    sent = [0]
    headers = {"Cookie": cookie, "Content-Type": STREAM_VMDK}
    where = url.split("?", 1)[0]
    try:
        resp = session.put(
            url, data=_batched(pieces, keepalive, sent), headers=headers, timeout=timeout
        )
    except requests.RequestException as exc:
        raise TransportError(f"NFC upload to {where} failed after {sent[0]} bytes: {exc}") from exc
    finally:
        session.close()
    if resp.status_code not in (200, 201, 204):
        raise TransportError(
            f"NFC upload to {where} answered {resp.status_code} {resp.reason}: "
            f"{resp.text.strip()[:200]}"
        )
    return sent[0]
