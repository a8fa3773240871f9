"""The daemon's side of its worker processes (:mod:`vmaccel.daemon.worker`): start one per
policy run (never fork: the daemon has threads — a fresh interpreter is started), pass on a
stop or an abort, reap the ended ones.

Not thread safe: the daemon's loop thread calls every method except :meth:`signal_all`
(which only sends signals). The worker dies with the thread that started it
(``PR_SET_PDEATHSIG`` follows the starting thread), so start workers from the loop thread.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from vmaccel.service.context import ENV_CONFIG_DIR, ENV_REPO, Context
from vmaccel.service.policyrun import Limits
from vmaccel.service.policyspec import Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Worker:
    """A started worker: the run of ``policy`` for job ``job_id`` (job 0: recovery)."""

    policy: Policy | None
    job_id: int
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class Ended:
    """A reaped worker and its exit status (negative: killed by that signal)."""

    worker: Worker
    status: int


class Workers:
    """The worker processes of one daemon, by key (the policy's name, or ``(recover)``)."""

    def __init__(
        self, ctx: Context, limits: Limits, log_json: bool = False, local_backups: bool = False
    ) -> None:
        """``local_backups``: the runs back their VMs up themselves even on a PostgreSQL
        catalog (where they are queued for backup proxies otherwise)."""
        self.ctx, self.limits, self.log_json = ctx, limits, log_json
        self.local_backups = local_backups
        self.running: dict[str, Worker] = {}

    def _command(self, command: str, *extra: str) -> list[str]:
        argv = [sys.executable, "-m", "vmaccel.daemon.worker", command,
                "--parent", str(os.getpid()),
                "--log-level", str(logging.getLogger().getEffectiveLevel())]  # fmt: skip
        return argv + (["--log-json"] if self.log_json else []) + list(extra)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**self.ctx.env, ENV_REPO: str(self.ctx.require_repo()),
               ENV_CONFIG_DIR: str(self.ctx.config_dir)}  # fmt: skip
        # Its own session: a Ctrl-C on the daemon's terminal reaches the daemon only, which
        # then stops the worker as a SIGTERM does.
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def start_run(self, policy: Policy, job_id: int) -> Worker:
        """Start the worker that claims and runs job ``job_id`` of ``policy``."""
        lim = self.limits
        limits = f"{lim.per_datastore},{lim.per_host},{lim.per_vcenter}"
        argv = self._command("run", "--policy", policy.name, "--job", str(job_id),
                             "--limits", limits)  # fmt: skip
        argv += ["--local"] if self.local_backups else []
        worker = Worker(policy, job_id, self._spawn(argv))
        self.running[policy.name] = worker
        logger.info("policy %s: run %d started in worker %d", policy.name, job_id,
                    worker.process.pid)  # fmt: skip
        return worker

    def recover(self, timeout: float) -> int:
        """Run the recovery of killed runs in a worker and wait up to ``timeout`` seconds
        for it; returns its exit status (-9 when it had to be killed)."""
        process = self._spawn(self._command("recover"))
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def busy(self, key: str) -> bool:
        return key in self.running

    def reap(self) -> list[Ended]:
        """The workers that have exited since the last call (removed from :attr:`running`)."""
        ended = []
        for key, worker in list(self.running.items()):
            status = worker.process.poll()
            if status is not None:
                del self.running[key]
                ended.append(Ended(worker, status))
        return ended

    def signal_all(self, signum: signal.Signals) -> None:
        """Send ``signum`` to every running worker (SIGTERM: stop, SIGUSR1: abort)."""
        for worker in list(self.running.values()):
            try:
                worker.process.send_signal(signum)
            except ProcessLookupError:  # it has just exited; reap() sees it
                continue

    def wait(self, timeout: float) -> list[Ended]:
        """Wait up to ``timeout`` seconds for every worker; returns the ones reaped."""
        deadline = time.monotonic() + timeout
        ended = self.reap()
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)
            ended += self.reap()
        return ended

    def kill_all(self) -> list[Ended]:
        """SIGKILL the workers left (their jobs go to the dead-owner recovery)."""
        self.signal_all(signal.SIGKILL)
        return self.wait(10.0)
