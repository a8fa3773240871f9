"""vmaccel.service.limits: snapshot slots per datastore hold across threads and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmaccel.service.limits import DatastoreSlots
from vmaccel.vocabulary.errors import Interrupted

HOLDER = """
import sys, time
from pathlib import Path
from vmaccel.service.limits import DatastoreSlots
with DatastoreSlots(Path(sys.argv[1]), "vc", per_datastore=1).hold(["ds1"]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_threads_wait_for_a_free_slot(tmp_path: Path) -> None:
    slots = DatastoreSlots(tmp_path, "vc", per_datastore=2, poll=0.01)
    inside, most = [0], [0]
    lock = threading.Lock()

    def vm() -> None:
        with slots.hold(["ds1", "ds2"]):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=vm) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2


def test_the_limit_holds_across_processes_and_survives_kill_minus_nine(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        waited = [False]

        def give_up() -> None:
            waited[0] = True
            raise Interrupted("stopped")

        blocked = DatastoreSlots(tmp_path, "vc", per_datastore=1, checkpoint=give_up, poll=0.01)
        with pytest.raises(Interrupted), blocked.hold(["ds1"]):
            pass
        assert waited[0]
        with DatastoreSlots(tmp_path, "other-vc", per_datastore=1).hold(["ds1"]):
            pass  # the same datastore name in another vCenter is another datastore
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with DatastoreSlots(tmp_path, "vc", per_datastore=1).hold(["ds1"]):
            pass  # the kernel released the killed holder's lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
