"""The measuring parts of ``bench/bench_restore.py``: the vmaccel CLI as child processes (each
phase's own wall time, CPU time and peak RSS from ``wait4``), byte-for-byte checks of restored
disks, and instant recovery through ``bench/bench_instant.py`` in a child of its own.

Units: bytes, seconds; RSS in MiB (``ru_maxrss`` of the child and the children it waited for).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.vsphere.bed import VsphereBed

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
VCENTER = "bench"
PASSWORD_ENV = "BENCH_VC_PASSWORD"  # noqa: S105 - the variable's name, not a password
# nbdkit's file plugin in write mode stands in for nbdkit-vddk, as in the tests.
NBD_WRITE = "nbdkit -s --exit-with-parent file {path}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_child(
    argv: list[str], env: dict[str, str], out: Path, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``argv`` in a session of its own; stdout to ``out``, stderr to ``out`` + ``.err``.
    Returns wall and CPU seconds, peak RSS (MiB) and the 1-minute load average when it
    started. Raises with the end of stderr when the child fails; after ``timeout`` seconds
    its whole process group is killed first."""
    load = os.getloadavg()[0]
    err = out.with_name(out.name + ".err")
    with out.open("wb") as fo, err.open("wb") as fe:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=fo, stderr=fe, start_new_session=True
        )
        status, ru = _wait(proc.pid, None if timeout is None else started + timeout)
        wall = time.monotonic() - started
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it left running in its group
        tail = err.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited {rc} after {wall:.0f} s:\n{tail}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "rss_mib": round(ru.ru_maxrss / 1024, 1),
        "load_at_start": round(load, 2),
    }


def _wait(pid: int, deadline: float | None) -> tuple[int, Any]:
    """``wait4`` of ``pid``; past ``deadline`` (monotonic) its process group gets SIGTERM,
    then SIGKILL 10 s later."""
    if deadline is None:
        _, status, ru = os.wait4(pid, 0)
        return status, ru
    signals = [signal.SIGTERM, signal.SIGKILL]
    while True:
        done, status, ru = os.wait4(pid, os.WNOHANG)
        if done:
            return status, ru
        if time.monotonic() > deadline and signals:
            log(f"child {pid} overran its time: {signals[0].name} to its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signals.pop(0))
            deadline = time.monotonic() + 10
        time.sleep(0.2)


class VmaccelCli:
    """``python -m vmaccel.cli`` in child processes, against one repository and one bed."""

    def __init__(self, work: Path, bed: VsphereBed) -> None:
        self.work, self.bed = work, bed
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "VMACCEL_REPO": str(work / "repo"),
            "VMACCEL_CONFIG_DIR": str(work / "config"),
            PASSWORD_ENV: bed.password,
        }

    def run(self, name: str, *args: str) -> tuple[dict[str, Any], Any]:
        """(the child's figures, its ``--json`` document or None)."""
        out = self.work / f"{name}.out"
        figures = run_child([PY, "-m", "vmaccel.cli", *args], self.env, out)
        text = out.read_text()
        return figures, json.loads(text) if "--json" in args else None

    def setup(self) -> None:
        self.run("repo-init", "repo", "init")
        self.run(
            "vcenter-add", "vcenter", "add", VCENTER, "--url", self.bed.url,
            "--user", self.bed.user, "--password-env", PASSWORD_ENV,
            "--ca-file", str(self.bed.ca_file),
        )  # fmt: skip

    def datastore_opts(self) -> list[str]:
        return ["--datastore-path", f"LocalDS_0={self.bed.datastore_dirs['LocalDS_0']}"]

    def transport_opts(self, transport: str) -> list[str]:
        extra = ["--nbd-command", NBD_WRITE] if transport == "nbd" else []
        return ["--transport", transport, *self.datastore_opts(), *extra]

    def backup(self, vm: str) -> dict[str, Any]:
        """A full backup of ``vm`` (file transport, every block read: ``--no-skip-free``, so a
        restored disk must equal the source image byte for byte)."""
        run, doc = self.run(
            f"backup-{vm}", "backup", "--vcenter", VCENTER, "--vm", vm, "--transport", "file",
            "--no-skip-free", *self.datastore_opts(), "--json",
        )  # fmt: skip
        disk = doc["vms"][0]["disks"][0]
        return {**run, "bytes_read": disk["bytes_read"], "stored_bytes": disk["stored_bytes"]}

    def restore_disk(self, vm: str, disk: str, to: Path) -> dict[str, Any]:
        run, doc = self.run(
            "restore-disk", "restore", "disk", f"{vm}@latest", disk, "--to", str(to), "--json"
        )
        keys = ("size", "data_bytes", "hole_bytes", "seconds")
        return {**run, **{k: doc[k] for k in keys}}

    def restore_vm(self, name: str, vm: str, transport: str, *extra: str) -> dict[str, Any]:
        """``restore vm`` (new VM, or ``--in-place --yes`` in ``extra``): the child's figures,
        the report's seconds, bytes sent as data and zeroed, and the disks' modes."""
        run, doc = self.run(
            name, "restore", "vm", f"{vm}@latest", "--vcenter", VCENTER,
            *self.transport_opts(transport), *extra, "--json",
        )  # fmt: skip
        disks = doc["disks"]
        return {
            **run,
            "vm": doc["vm"],
            "report_s": round(doc["seconds"], 3),
            "disk_s": round(sum(d["seconds"] for d in disks), 3),
            "bytes_written": sum(d["bytes_written"] for d in disks),
            "bytes_zeroed": sum(d["bytes_zeroed"] for d in disks),
            "modes": sorted({d["mode"] for d in disks}),
            "reasons": [d["reason"] for d in disks if d["reason"]],
        }


def identical(a: Path, b: Path) -> bool:
    """Whether the two files hold the same bytes (``cmp``; not timed by any phase)."""
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def vm_disk(bed: VsphereBed, vm: str) -> Path:
    """The local file of the first disk of ``vm`` in the bed."""
    path = bed.control.vm_config(vm).disks[0].path
    assert path is not None, f"{vm} has no local disk file"
    return Path(path)


def run_instant(work: Path, quick: bool) -> dict[str, Any]:
    """``bench_instant.py --json`` in a child (its own peak RSS): full, its defaults (4 and
    64 GiB); quick, 1 and 16 GiB disks and short reads. Its document plus the child's figures
    under ``run``. A failure or an overrun (30 min; quick 2.5) is recorded as ``error`` (the
    other phases still count) and what the child left under ``work`` is cleaned up."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [PY, str(ROOT / "bench/bench_instant.py"), "--json", "--workdir", str(work / "w")]
    if quick:
        argv += ["--sizes-gib", "1,16", "--read-mib", "16", "--session-reads", "2000",
                 "--lock-cycles", "200"]  # fmt: skip
    out = work / "instant.out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        run = run_child(argv, env, out, timeout=150 if quick else 1800)
    except RuntimeError as exc:
        return {"error": str(exc)[-1500:], "argv": argv[1:], "cleaned": cleanup_instant(work)}
    text = out.read_text()  # the in-process CLI's own lines come first, then the document
    start = 0 if text.startswith("{") else text.index("\n{\n") + 1
    doc: dict[str, Any] = json.JSONDecoder().raw_decode(text, start)[0]
    return {**doc, "run": run, "argv": argv[1:]}


def cleanup_instant(top: Path) -> list[str]:
    """After a failed instant run: unmount the FUSE mounts under ``top`` (their processes
    then exit) and stop the nfs-ganesha whose pid file is under ``top`` (checked to be the
    one started with a configuration from ``top``). Returns what was done."""
    done = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1]
        if point.startswith(f"{top}/"):
            subprocess.run(["fusermount", "-u", "-z", point], check=False)
            done.append(f"unmounted {point}")
    for pidfile in top.glob("**/ganesha.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if str(top) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGTERM)
                done.append(f"stopped ganesha {pid}")
    return done
