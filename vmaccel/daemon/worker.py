"""A worker process of the daemon: ``python -m vmaccel.daemon.worker``.

The daemon runs each policy run, and the recovery of killed runs, in a worker of its own, so
what a run loads (pyVmomi, the vSphere Automation SDK, codecs) and the heap it leaves die
with the worker: the daemon itself keeps only the scheduler, the REST API and the
notifications. Commands::

    python -m vmaccel.daemon.worker run --repo R --policy NAME --job ID --parent PID ...
    python -m vmaccel.daemon.worker recover --repo R --parent PID

A ``run`` claims the job row (owner ``host:pid`` of the worker) and runs it as
:class:`~vmaccel.daemon.runner.Runner` does (on a PostgreSQL catalog its VMs are queued for
backup proxies, ``vmaccel worker``, unless ``--local``); the daemon sends the run's
notification when the worker has exited. Signals from the daemon: SIGTERM — no new VM starts,
VMs in flight finish; SIGUSR1 — abort the VMs in flight (disks stop at the next progress step,
snapshots are removed). A cancel (``jobs cancel``, the API) reaches the worker through the job
row its runner polls. The worker dies with the daemon (``PR_SET_PDEATHSIG``: SIGKILL), so a
daemon killed with -9 leaves its jobs to the dead-owner recovery at the next start, as before.

The repository, config directory and passphrase come from the environment the daemon passes
(``VMACCEL_REPO``, ``VMACCEL_CONFIG_DIR``, ``VMACCEL_PASSPHRASE``). Exit status: 0 when the
run ended (whatever its state) or recovery is done, 75 when another process had claimed the
job, else the error's exit code.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from vmaccel.daemon.logs import configure
from vmaccel.service.context import ENV_PASSPHRASE, Context
from vmaccel.vocabulary.errors import PassphraseError, VmaccelError

logger = logging.getLogger("vmaccel.daemon.worker")  # also when run as __main__
CLAIMED_ELSEWHERE = 75  # exit status: the job was claimed by someone else (EX_TEMPFAIL)
_PR_SET_PDEATHSIG = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vmaccel.daemon.worker")
    parser.add_argument("command", choices=("run", "recover"))
    parser.add_argument("--parent", type=int, required=True, help="the daemon's pid")
    parser.add_argument("--policy", default="")
    parser.add_argument("--job", type=int, default=0)
    parser.add_argument("--limits", default="", help="per-datastore,per-host,per-vcenter")
    parser.add_argument("--local", action="store_true", help="never queue VMs for proxies")
    parser.add_argument("--log-json", action="store_true")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    return parser


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the daemon dies; exit now if it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the daemon's stop still reaches us
        logger.debug("PR_SET_PDEATHSIG is not available")
    if os.getppid() != parent:
        sys.exit(1)


def _passphrase() -> str:
    value = os.environ.get(ENV_PASSPHRASE)
    if value is None:
        raise PassphraseError(f"the repository is encrypted: set {ENV_PASSPHRASE} for the daemon")
    return value


def _run(ctx: Context, args: argparse.Namespace) -> int:
    from vmaccel.catalog.catalogdb import catalog_url
    from vmaccel.daemon.runner import Runner
    from vmaccel.service.jobs import owner_id
    from vmaccel.service.policies import get_policy
    from vmaccel.service.policyrun import Limits

    stopping, abort, done = threading.Event(), threading.Event(), threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    def on_abort(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        abort.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_abort)
    limits = Limits(*(int(n) for n in args.limits.split(","))) if args.limits else Limits()
    queue = None if args.local else catalog_url(ctx.require_repo())  # proxies take the VMs
    runner = Runner(ctx, owner_id(), stopping, limits, queue=queue)

    def watch() -> None:  # Runner.abort takes a lock: never from the signal handler
        while not done.wait(0.2):
            if abort.is_set():
                runner.abort("the daemon stopped")
                return

    threading.Thread(target=watch, name="vmaccel-abort", daemon=True).start()
    try:
        job = runner.run(get_policy(ctx, args.policy).policy, args.job)
    finally:
        done.set()
    return 0 if job is not None else CLAIMED_ELSEWHERE


def _recover(ctx: Context) -> int:
    from vmaccel.daemon.recovery import recover
    from vmaccel.service.jobs import owner_id

    for line in recover(ctx, owner_id()):
        logger.warning("%s", line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The worker's entry point (see the module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    _die_with_parent(args.parent)
    configure(args.log_json, args.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides how a stop goes
    ctx = Context.from_env(os.environ, passphrase=_passphrase)
    try:
        return _run(ctx, args) if args.command == "run" else _recover(ctx)
    except VmaccelError as exc:
        logger.error("%s %s failed: %s", args.command, args.policy or "", exc)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
