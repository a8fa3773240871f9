"""SIGTERM, SIGHUP and Ctrl-C (SIGINT) stop `vmaccel backup` the same clean way.

A real `vmaccel backup` process against the vSphere bed gets the signal while it reads the
disk (aimed with the kill points of `killer.py`). It must end by itself with exit 130 and one
line naming the signal, after taking the cleanup path: the backup snapshot removed, nothing
of the interrupted run recorded as a restore point, `verify --full` clean, and the next run
succeeds and restores byte-identical. A service manager's stop (SIGTERM) or a closed terminal
(SIGHUP) therefore never leaves a snapshot growing on the datastore.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.killer import Aim, run_killed
from tests.faults.test_kill import KillLoop, _unused_vms, kill_bed, loop
from tests.plugin.vimcheck import snapshots

__all__ = ["_unused_vms", "kill_bed", "loop"]  # fixtures
pytestmark = pytest.mark.vsphere

INTERRUPTED = 130


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signal_removes_the_snapshot_and_records_nothing(
    loop: KillLoop, sig: signal.Signals
) -> None:
    first = loop.cli(*loop.args("http"))  # a full backup first: CBT on, a baseline
    assert first.rc == 0, first.err
    loop.expected[first_id(loop)] = loop.disk_sha()
    loop.guest_write()
    before = loop.complete()
    # --rescan reads every allocated block: reads enough for the signal to land mid-disk
    out = run_killed(
        ["--debug", *loop.args("http", "--rescan")], os.environ, Aim("read"), sig=sig
    )
    assert out.killed, "the run ended before the signal was sent"
    assert out.rc == INTERRUPTED, out.stderr[-3000:]
    assert f"stopped by {sig.name}" in out.stderr, out.stderr[-3000:]
    assert "snapshot_remove" in out.entered, "the cleanup path did not remove the snapshot"
    assert not [n for n in snapshots(loop.bed, loop.moref) if n.startswith("vmaccel-")]
    assert loop.complete() == before, "the interrupted run recorded a restore point"
    assert loop.cli("verify", "--repo", loop.repo, "--full").rc == 0
    damaged, wrong = loop.clean_run()
    assert (damaged, wrong) == (False, False)


def first_id(loop: KillLoop) -> int:
    (only,) = loop.complete()
    return only
