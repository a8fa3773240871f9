"""Serving the API: :func:`run` binds the address, serves HTTPS with uvicorn until asked to
stop, and reports where it listens (:class:`ServerInfo`) once it does.

``vmaccel serve`` calls :func:`run` (in a thread of its own or its main thread) and owns
the process's signals: uvicorn's own signal handling is switched off, the caller sets
``stop`` instead. On stop, event streams end, requests in flight get
:data:`GRACE` seconds to finish, queued restore tasks are cancelled and running ones end
at their next progress step. Access logs name the method, path and status, never a token
(tokens travel only in the ``Authorization`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from vmaccel.api.app import ApiSettings, create_app
from vmaccel.api.tls import ServerCertificate, server_certificate
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import LocalIOError, UsageError

logger = logging.getLogger(__name__)

GRACE = 5.0  # seconds requests in flight may take to finish at shutdown
DEFAULT_LISTEN = "127.0.0.1:8443"


@dataclass(frozen=True)
class ServerInfo:
    """Where the API listens: ``url`` (the port actually bound), the certificate in use and
    its SHA-256 fingerprint (``AB:CD:...``), ``self_signed`` when vmaccel made it."""

    url: str
    host: str
    port: int
    certificate: Path
    fingerprint_sha256: str
    self_signed: bool


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller stops it through ``should_exit``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 addresses) -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"listen address {listen!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)  # noqa: S104 - ":PORT" asks for every address


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every keep-alive response waits ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LocalIOError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def run(
    ctx: Context,
    listen: str = DEFAULT_LISTEN,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
    settings: ApiSettings | None = None,
) -> None:
    """Serve ``/api/v1`` over HTTPS on ``listen`` until ``stop`` is set (forever without
    one). ``on_ready`` is called once, from this thread, when the socket accepts
    connections. Raises :class:`UsageError` for a bad address or TLS files,
    :class:`LocalIOError` when the address cannot be bound."""
    host, port = parse_listen(listen)
    cert = server_certificate(ctx.config_dir, tls_cert, tls_key)
    app = create_app(ctx, settings)
    sock = bind(host, port)
    try:
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        info = ServerInfo(
            f"https://{shown}:{bound}", host, bound, cert.cert, cert.fingerprint_sha256,
            cert.self_signed,
        )  # fmt: skip
        server = _Server(_config(app, cert))
        asyncio.run(_serve(server, app, sock, stop or threading.Event(), info, on_ready))
    finally:
        sock.close()


def _config(app: FastAPI, cert: ServerCertificate) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
        log_config=None,  # the application configured logging
        lifespan="on",
        timeout_graceful_shutdown=int(GRACE),
        proxy_headers=False,  # limits count the peer's address, not a header it may forge
        server_header=False,
    )


async def _serve(
    server: _Server,
    app: FastAPI,
    sock: socket.socket,
    stop: threading.Event,
    info: ServerInfo,
    on_ready: Callable[[ServerInfo], None] | None,
) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    announced = False
    while not task.done():
        if server.started and not announced:
            announced = True
            logger.info("REST API listening on %s (certificate %s), web console on %s/console/",
                        info.url, info.fingerprint_sha256, info.url)  # fmt: skip
            if on_ready is not None:
                on_ready(info)
        if stop.is_set() and not server.should_exit:
            app.state.closing.set()
            server.should_exit = True
        await asyncio.wait({task}, timeout=0.1)
    try:
        task.result()
    except SystemExit as exc:  # uvicorn's way to say that start-up failed
        raise LocalIOError(f"the REST API could not start on {info.url}") from exc
