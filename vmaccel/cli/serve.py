"""``vmaccel serve``: the daemon (scheduler and REST API).

The scheduler (:mod:`vmaccel.daemon.serve`) runs in the main thread, the REST API
(:mod:`vmaccel.api.server`) beside it in its own thread. The first SIGTERM, SIGINT or SIGHUP
stops both (no new VM starts; VMs in flight get ``--stop-timeout`` seconds); a second one
aborts the VMs in flight at once (their snapshots are still removed).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from vmaccel.cli.options import RepoOpt
from vmaccel.cli.output import say
from vmaccel.cli.settings import context
from vmaccel.daemon.logs import configured
from vmaccel.daemon.scheduler import ServeOptions
from vmaccel.daemon.serve import Daemon
from vmaccel.service.context import Context
from vmaccel.service.limits import SNAPSHOTS_PER_DATASTORE
from vmaccel.service.policyrun import Limits
from vmaccel.service.schedule import check_cron
from vmaccel.vocabulary.errors import VmaccelError

logger = logging.getLogger(__name__)
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _cron(text: str) -> str | None:
    """A maintenance schedule: None for off/never, else a checked cron expression."""
    if text.strip().lower() in ("off", "never", ""):
        return None
    check_cron(text)
    return text


@contextlib.contextmanager
def _signals(daemon: Daemon, api_stop: threading.Event) -> Iterator[None]:
    """First stop signal: stop; second: abort the VMs in flight."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        api_stop.set()
        if daemon.stopping.is_set():
            daemon.abort(f"stopped by a second {signal.Signals(signum).name}")
        else:
            daemon.stop()

    previous = {sig: signal.signal(sig, handle) for sig in _STOP}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_api(
    ctx: Context,
    listen: str,
    cert: Path | None,
    key: Path | None,
    stop: threading.Event,
    daemon: Daemon,
    failed: list[VmaccelError],
    announce: bool,
) -> threading.Thread:
    from vmaccel.api.server import ServerInfo, run

    def ready(info: ServerInfo) -> None:
        if announce:  # a person reads stdout (with --log-json the API's log line says it)
            made = " (self-signed, made by vmaccel)" if info.self_signed else ""
            say(f"REST API on {info.url}/api/v1; certificate SHA-256 "
                f"{info.fingerprint_sha256}{made}")  # fmt: skip
            say(f"web console on {info.url}/console/")

    def serve_api() -> None:
        try:
            run(ctx, listen, cert, key, stop=stop, on_ready=ready)
        except VmaccelError as exc:
            failed.append(exc)
            daemon.stop()

    thread = threading.Thread(target=serve_api, name="vmaccel-api", daemon=True)
    thread.start()
    return thread


_ListenOpt = Annotated[
    str, typer.Option("--listen", metavar="ADDR:PORT", help="Where the REST API listens.")
]
_CertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate.")]
_KeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")]
_NoApiOpt = Annotated[bool, typer.Option("--no-api", help="Run the scheduler only.")]
_TickOpt = Annotated[
    float, typer.Option("--tick", min=0.1, metavar="SECONDS", help="Scheduler pass interval.")
]
_StopOpt = Annotated[
    float,
    typer.Option(
        "--stop-timeout", min=0.0, metavar="SECONDS",
        help="On stop, how long VMs in flight may finish.",
    ),
]  # fmt: skip
_GcOpt = Annotated[
    str, typer.Option("--gc-schedule", metavar="CRON", help="gc times, UTC ('off': never).")
]
_VerifyOpt = Annotated[
    str,
    typer.Option(
        "--verify-schedule", metavar="CRON", help="verify --full times, UTC ('off': never)."
    ),
]
_PerDsOpt = Annotated[
    int, typer.Option("--max-per-datastore", min=1, help="Open backup snapshots per datastore.")
]
_PerHostOpt = Annotated[
    int, typer.Option("--max-per-host", min=1, help="VM backups at once per ESXi host.")
]
_PerVcOpt = Annotated[
    int, typer.Option("--max-per-vcenter", min=1, help="VM backups at once per vCenter.")
]
_LogJsonOpt = Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")]
_LocalOpt = Annotated[
    bool,
    typer.Option("--local-backups",
                 help="Back VMs up here even on a PostgreSQL catalog (else proxies do)."),
]  # fmt: skip


def serve(
    repo: RepoOpt = None,
    listen: _ListenOpt = "127.0.0.1:8443",
    tls_cert: _CertOpt = None,
    tls_key: _KeyOpt = None,
    no_api: _NoApiOpt = False,
    tick: _TickOpt = 30.0,
    stop_timeout: _StopOpt = 300.0,
    gc_schedule: _GcOpt = "0 3 * * *",
    verify_schedule: _VerifyOpt = "0 4 * * 0",
    max_per_datastore: _PerDsOpt = SNAPSHOTS_PER_DATASTORE,
    max_per_host: _PerHostOpt = 4,
    max_per_vcenter: _PerVcOpt = 8,
    log_json: _LogJsonOpt = False,
    local_backups: _LocalOpt = False,
) -> None:
    """Run the daemon: scheduled policy runs, prune, gc, verify, notifications, REST API."""
    debug = logging.getLogger().level == logging.DEBUG
    ctx = context(repo)
    ctx.require_repo()
    limits = Limits(max_per_datastore, max_per_host, max_per_vcenter)
    options = ServeOptions(tick=tick, stop_timeout=stop_timeout, gc_schedule=_cron(gc_schedule),
                           verify_schedule=_cron(verify_schedule), limits=limits,
                           local_backups=local_backups)  # fmt: skip
    daemon, api_stop = Daemon(ctx, options, log_json), threading.Event()
    failed: list[VmaccelError] = []
    api: list[threading.Thread] = []

    def locked() -> None:  # the daemon holds the repository: the API may start
        if not no_api:
            api.append(_start_api(ctx, listen, tls_cert, tls_key, api_stop, daemon, failed,
                                  not log_json))  # fmt: skip

    with _signals(daemon, api_stop), configured(log_json, logging.DEBUG if debug else logging.INFO):
        try:
            daemon.run(on_locked=locked)
        finally:
            api_stop.set()
            for thread in api:
                thread.join(30)
    if failed:
        raise failed[0]


def register(app: typer.Typer) -> None:
    """Adds ``serve`` to the root command."""
    app.command("serve")(serve)
