"""SIGKILL a real `vmaccel backup` process at a chosen moment of its run.

Incremental backups of small disks end in under a second, so random sleeps alone would hit
start-up most of the time. The process is started with `killpoints/sitecustomize.py` on its
PYTHONPATH (test code, nothing in the product): the functions of every phase of a backup write
``@@killpoint enter|leave <phase>`` lines to stderr. `run_killed` reads them, and after the
`nth` entry into the aimed phase waits a random `delay` (0 to a few ms) and sends SIGKILL.
Where the kill landed is read afterwards from everything the process wrote before it died:
the phases in flight, outermost first (``leftovers/snapshot_remove``), else
``after:<last phase left>`` (the process was between phases). Aim ``start`` kills `delay`
seconds after the process started (imports, login).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VMACCEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vmaccel"
HOOK_DIR = Path(__file__).resolve().parent / "killpoints"
MARK = "@@killpoint "

# phase -> the product functions that mark it (module:qualified name).
PHASES: dict[str, tuple[str, ...]] = {
    "login": ("vmaccel.plugin.vcenter.connection:VCenter.__init__",),
    "inventory": ("vmaccel.plugin.vcenter.inventory:list_vms",),
    "leftovers": ("vmaccel.plugin.vcenter.snapshots:remove_leftovers",),
    "cbt_enable": ("vmaccel.plugin.vcenter.cbt:enable",),
    "snapshot": ("vmaccel.plugin.vcenter.snapshots:create",),
    "cbt_query": ("vmaccel.plugin.vcenter.cbt:changed_areas",),
    "allocation": ("vmaccel.plugin.engine.disk:allocation_of",),
    "read": (
        "vmaccel.plugin.transport.http:HttpSource.read_into",
        "vmaccel.plugin.transport.file:FileSource.read",
    ),
    "image_write": ("vmaccel.catalog.imagewriter:ImageWriter.write",),
    "pack_write": ("vmaccel.catalog.chunkstore:_PackIO._write",),
    "pack_seal": ("vmaccel.catalog.chunkstore:ChunkStore._seal",),
    "finish_image": ("vmaccel.catalog.backup:BackupWriter.finish_image",),
    "commit": ("vmaccel.catalog.backup:BackupWriter.commit",),
    "manifest": ("vmaccel.catalog.repository:Repository.write_manifest",),
    "snapshot_remove": ("vmaccel.plugin.vcenter.snapshots:remove",),
    "file_catalog": ("vmaccel.plugin.engine.fileindex:index_image",),
}


def killpoints_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus what makes a `vmaccel` process write its phase markers."""
    spec = ",".join(f"{t}={phase}" for phase, targets in PHASES.items() for t in targets)
    path = os.pathsep.join(filter(None, [str(HOOK_DIR), base.get("PYTHONPATH", "")]))
    return {**base, "PYTHONPATH": path, "VMACCEL_TEST_KILLPOINTS": spec}


@dataclass(frozen=True)
class Aim:
    """Kill `delay` seconds after the `nth` entry into `phase` (or after start: ``start``)."""

    phase: str
    nth: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How a run aimed at ended: `killed` by our SIGKILL (else it exited `rc` by itself),
    where the kill `landed`, and every phase the process entered."""

    killed: bool
    rc: int
    landed: str
    entered: tuple[str, ...]
    stderr: str


def landed_at(lines: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(where a process that wrote `lines` stopped, the phases it entered, in order)."""
    stack: list[str] = []
    entered: list[str] = []
    last = "start"
    for line in lines:
        if not line.startswith(MARK):
            continue
        event, phase = line[len(MARK) :].split()
        if event == "enter":
            stack.append(phase)
            entered.append(phase)
        elif phase in stack:
            del stack[len(stack) - 1 - stack[::-1].index(phase)]
            last = phase
    in_flight = dict.fromkeys(stack)  # reader threads overlap: each phase named once
    return ("/".join(in_flight) if stack else f"after:{last}"), tuple(entered)


def run_killed(
    args: Sequence[str],
    env: Mapping[str, str],
    aim: Aim,
    timeout: float = 60,
    sig: signal.Signals = signal.SIGKILL,
) -> Outcome:
    """Run ``vmaccel ARGS`` and send it `sig` (SIGKILL unless asked) as `aim` says; wait for
    it to end. With another signal, `killed` means the signal was sent before it ended."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(VMACCEL), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=killpoints_env(env),
        text=True,
    )
    assert proc.stderr is not None
    sent = threading.Event()

    def kill() -> None:
        time.sleep(
            max(0.0, aim.delay - (time.monotonic() - started if aim.phase == "start" else 0))
        )
        if proc.poll() is None:
            sent.set()  # before the kill: the reader may see the process end at once
            os.kill(proc.pid, sig)

    seen, lines = 0, []
    if aim.phase == "start":
        threading.Thread(target=kill, daemon=True).start()

    def expire() -> None:
        if proc.poll() is None:
            proc.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.start()
    try:
        for line in proc.stderr:
            lines.append(line)
            if line == f"{MARK}enter {aim.phase}\n":
                seen += 1
                if seen == aim.nth:
                    threading.Thread(target=kill, daemon=True).start()
        rc = proc.wait()
    finally:
        watchdog.cancel()
        proc.stderr.close()
    landed, entered = landed_at(lines)
    killed = sent.is_set() and (rc == -signal.SIGKILL or sig != signal.SIGKILL)
    return Outcome(killed, rc, landed if killed else "exited", entered, "".join(lines))
