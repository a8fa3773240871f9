#!/usr/bin/env python3
# ruff: noqa: E501  (the human table is wide on purpose)
"""Backup benchmark: vmaccel full and incremental against the vSphere test bed, borg and restic.

Run by hand, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_backup.py [--json] [--quick] [--dir DIR] [--no-peers] [--profile]

One run: build (or reuse) a Debian system disk and its "day 1" (``backup_images.py``), back up
day 0 and day 1 with ``vmaccel backup --transport file`` from the test bed (CBT incremental),
the same two versions with borg and restic (when installed), and the same change on a 64 GiB
mostly sparse disk. Every tool runs as a child process, so wall time, CPU and peak RSS
(``wait4`` rusage) are that run's own. The targets are those of issue 5 ("Proof").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/bench_catalog.py must not shadow catalog/

import backup_images  # noqa: E402

from testbed.vsphere.bed import VsphereBed, start_bed  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
TARGETS = {
    "speedup_vs_peers_min": 5.0,
    "incr_over_full_max": 0.15,
    "read_over_changed_max": 1.5,
    "wide_over_small_max": 1.5,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run argv as a child; wall seconds, CPU seconds and peak RSS (MiB) from its own rusage.
    Raises with the output when the child fails."""
    with out.open("w+b") if out else tempfile.TemporaryFile() as f:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        f.seek(0)
        text = f.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{text[-3000:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "rss_mib": round(ru.ru_maxrss / 1024, 1),
        "output": text,
    }


def du(path: Path) -> int:
    return int(
        subprocess.run(
            ["du", "-sb", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )


# The CLI in a child process, with timers around the phases the bench reports separately. The
# bed's CreateSnapshot copies the disk's data (a real ESXi starts a redo log), so snapshot time
# is simulator cost inside vmaccel's wall time: "own s" subtracts what this run spent in it.
CHILD = """
import atexit, json, os, sys, time
from vmaccel.plugin.job import vmjob
from vmaccel.plugin.vcenter import cbt, snapshots
spent = {}
def timer(mod, name, key):
    fn = getattr(mod, name)
    def timed(*a, **k):
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            spent[key] = round(spent.get(key, 0.0) + time.monotonic() - t, 3)
    setattr(mod, name, timed)
timer(snapshots, "create", "snapshot_create_s")
timer(snapshots, "remove", "snapshot_remove_s")
timer(cbt, "changed_areas", "cbt_query_s")
timer(vmjob, "index_backup", "file_index_s")
from pyVmomi import SoapAdapter  # a backup of a vCenter VM imports it anyway
invoke = SoapAdapter.SoapStubAdapter.InvokeMethod
def counting(self, mo, info, args, *rest, **kw):
    if info.name == "QueryChangedDiskAreas":
        spent["cbt_calls"] = spent.get("cbt_calls", 0) + 1
    return invoke(self, mo, info, args, *rest, **kw)
SoapAdapter.SoapStubAdapter.InvokeMethod = counting
atexit.register(lambda: open(os.environ["BENCH_PHASES"], "w").write(json.dumps(spent)))
from vmaccel.cli.app import run
sys.argv[0] = "vmaccel"
run()
"""


class Vmaccel:
    """The vmaccel CLI as child processes, against one repository and one bed."""

    def __init__(self, work: Path, bed: VsphereBed, profile: bool) -> None:
        self.work, self.bed, self.profile = work, bed, profile
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "VMACCEL_REPO": str(work / "repo"),
            "VMACCEL_CONFIG_DIR": str(work / "config"),
            "BENCH_VC_PASSWORD": bed.password,
        }

    def cli(self, *args: str, name: str = "cli") -> dict[str, Any]:
        argv = [PY, "-c", CHILD, *args]
        self.env["BENCH_PHASES"] = str(self.work / f"{name}.phases.json")
        if self.profile and args[0] == "backup":
            spy = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
            argv = [
                spy,
                "record",
                "--idle",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(self.work / f"profile-{name}.txt"),
                "--",
                *argv,
            ]
        return timed(argv, self.env, ROOT, self.work / f"{name}.out")

    def setup(self) -> None:
        self.cli("repo", "init")
        self.cli(
            "vcenter",
            "add",
            "bench",
            "--url",
            self.bed.url,
            "--user",
            self.bed.user,
            "--password-env",
            "BENCH_VC_PASSWORD",
            "--ca-file",
            str(self.bed.ca_file),
        )

    def backup(self, vm: str, name: str) -> dict[str, Any]:
        run = self.cli(
            "backup",
            "--vcenter",
            "bench",
            "--vm",
            vm,
            "--transport",
            "file",
            "--datastore-path",
            f"LocalDS_0={self.bed.datastore_dir}",
            "--json",
            name=name,
        )
        text = run.pop("output")
        report, _ = json.JSONDecoder().raw_decode(text, text.index("{\n"))
        phases = json.loads((self.work / f"{name}.phases.json").read_text())
        vm_rep = report["vms"][0]
        disk = vm_rep["disks"][0]
        return {
            **run,
            "vm_s": round(vm_rep["duration"], 3),
            "catalog_s": round(vm_rep.get("catalog_seconds", 0.0), 3),
            "disk_s": round(disk["duration"], 3),
            "mode": disk["mode"],
            "reason": disk["reason"],
            "bytes_read": disk["bytes_read"],
            "new_bytes": disk["new_bytes"],
            "stored_bytes": disk["stored_bytes"],
            "hole_bytes": disk["hole_bytes"],
            "disk_size": disk["size"],
            "repo_bytes": du(self.work / "repo"),
            "warnings": vm_rep["warnings"] + disk["warnings"],
            **phases,
            "own_s": round(
                run["wall_s"]
                - phases.get("snapshot_create_s", 0)
                - phases.get("snapshot_remove_s", 0),
                3,
            ),
        }


def vmaccel_case(
    tool: Vmaccel, bed: VsphereBed, vm: Any, day0: Path, day1: Path, label: str
) -> dict[str, Any]:
    log(f"{label}: attaching {day0.name} to {vm.name}")
    started = time.monotonic()
    bed.control.attach_disk(vm.name, day0)
    attach_s = time.monotonic() - started
    log(f"{label}: full backup")
    full = tool.backup(vm.name, f"{label}-full")
    log(f"{label}: applying day 1")
    started = time.monotonic()
    written, extents = bed.control.apply_image(vm.name, 0, day1)
    apply_s = time.monotonic() - started
    log(f"{label}: incremental backup ({written / MiB:.1f} MiB changed in {extents} extents)")
    incr = tool.backup(vm.name, f"{label}-incr")
    return {
        "disk_size": full["disk_size"],
        "changed_bytes": written,
        "changed_extents": extents,
        "attach_s": round(attach_s, 2),
        "apply_s": round(apply_s, 2),
        "full": full,
        "incr": incr,
    }


def run_vmaccel(
    work: Path,
    images: backup_images.Images,
    wide: tuple[Path, Path] | None,
    profile: bool,
    qcda_window: int,
    qcda_max_extents: int,
) -> dict[str, Any]:
    """Each case in its own repository, so the wide disk's backups store the same new data
    as the small disk's (no dedup against each other)."""
    cases = {"small": (Path(images.day0), Path(images.day1))}
    if wide is not None:
        cases["wide"] = wide
    out = {}
    with start_bed(
        machines=2,
        timeout=120,
        control_timeout=1800,
        qcda_window=qcda_window,
        qcda_max_extents=qcda_max_extents,
    ) as bed:
        vms = bed.control.vms()
        for (label, (day0, day1)), vm in zip(cases.items(), vms, strict=False):
            (work / label).mkdir()
            tool = Vmaccel(work / label, bed, profile)
            tool.setup()
            out[label] = vmaccel_case(tool, bed, vm, day0, day1, label)
    return out


def run_peer(name: str, work: Path, day0: Path, day1: Path) -> dict[str, Any]:
    """borg (zstd,3, no encryption) or restic (repo v2, auto compression) on stage/disk.img,
    hard-linked to each day's image in turn (a new inode: both tools re-read the file)."""
    top = work / name
    shutil.rmtree(top, ignore_errors=True)
    stage, repo = top / "stage", top / "repo"
    stage.mkdir(parents=True)
    env = {
        **os.environ,
        "BORG_BASE_DIR": str(top / "home"),
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(top / "cache"),
        "RESTIC_REPOSITORY": str(repo),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
    }
    if name == "borg":
        timed(["borg", "init", "-e", "none", str(repo)], env, stage)
    else:
        timed(["restic", "init", "--repository-version", "2"], env, stage)
    runs = {}
    for day, image in (("day0", day0), ("day1", day1)):
        (stage / "disk.img").unlink(missing_ok=True)
        os.link(image, stage / "disk.img")
        argv = (
            ["borg", "create", "--compression", "zstd,3", f"{repo}::{day}", "disk.img"]
            if name == "borg"
            else ["restic", "backup", "--host", "bench", "disk.img"]
        )
        r = timed(argv, env, stage)
        r.pop("output")
        runs[day] = {**r, "repo_bytes": du(repo)}
    (stage / "disk.img").unlink()
    shutil.rmtree(top / "cache", ignore_errors=True)
    return {"version": peer_version(name), **runs}


def peer_version(name: str) -> str:
    done = subprocess.run(
        [name, "version" if name == "restic" else "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    small = res["vmaccel"]["small"]
    incr, full = small["incr"], small["full"]
    out: dict[str, Any] = {
        "incr_over_full": round(incr["wall_s"] / full["wall_s"], 3),
        "incr_over_full_own": round(incr["own_s"] / full["own_s"], 3),
        "read_over_changed": round(incr["bytes_read"] / max(1, small["changed_bytes"]), 3),
    }
    for peer, r in res["peers"].items():
        if "day1" in r:
            out[f"speedup_vs_{peer}"] = round(r["day1"]["wall_s"] / incr["wall_s"], 2)
            out[f"speedup_vs_{peer}_own"] = round(r["day1"]["wall_s"] / incr["own_s"], 2)
    wide = res["vmaccel"].get("wide")
    if wide:
        out["wide_over_small"] = round(wide["incr"]["wall_s"] / incr["wall_s"], 3)
        out["wide_over_small_own"] = round(wide["incr"]["own_s"] / incr["own_s"], 3)
        out["wide_over_small_disk"] = round(wide["incr"]["disk_s"] / incr["disk_s"], 3)
    return out


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Issue 5's targets, on wall time and on own time (the bed's snapshot copies taken out)."""
    out = {}
    for key, value in r.items():
        base = key.removesuffix("_own")
        if base in ("speedup_vs_borg", "speedup_vs_restic"):
            out[key] = value >= TARGETS["speedup_vs_peers_min"]
        elif base == "incr_over_full":
            out[key] = value <= TARGETS["incr_over_full_max"]
        elif base == "read_over_changed":
            out[key] = value <= TARGETS["read_over_changed_max"]
        elif base.startswith("wide_over_small"):
            out[key] = value < TARGETS["wide_over_small_max"]
    return out


def fmt_run(name: str, r: dict[str, Any], extra: str = "") -> str:
    return (
        f"{name:<30} {r['wall_s']:>8.2f} {r.get('own_s', r['wall_s']):>8.2f} {r['cpu_s']:>7.2f} "
        f"{r['rss_mib']:>7.0f} {r.get('bytes_read', 0) / MiB:>9.1f} "
        f"{r.get('stored_bytes', 0) / MiB:>9.1f} {r['repo_bytes'] / 1e6:>9.1f}  {extra}"
    )


def phase_note(r: dict[str, Any]) -> str:
    """Where a vmaccel run's wall time went; "other" is start-up, connect, inventory, commit."""
    snap = r.get("snapshot_create_s", 0) + r.get("snapshot_remove_s", 0)
    idx, cbt = r.get("file_index_s", 0), r.get("cbt_query_s", 0)
    other = r["wall_s"] - snap - idx - cbt - r["disk_s"]
    return (
        f"{r['mode']}: snapshot {snap:.2f}, cbt {cbt:.2f} ({r.get('cbt_calls', 0)} calls), "
        f"disk {r['disk_s']:.2f}, file catalog {idx:.2f}, other {other:.2f} s"
    )


def table(res: dict[str, Any]) -> str:
    img = res["images"]
    lines = [
        f"disk {img['size'] / GiB:.0f} GiB ({img['system']}, {img['files']} files, "
        f"{img['used_pct']}% used); load before run {res['load_before']:.2f}; "
        f"bed QueryChangedDiskAreas: window {res['qcda_window'] // MiB} MiB, "
        f"max extents {res['qcda_max_extents'] or 'unbounded'}",
        f"{'run':<30} {'wall s':>8} {'own s':>8} {'cpu s':>7} {'RSS MiB':>7} {'read MiB':>9} "
        f"{'stored MiB':>9} {'repo MB':>9}  notes (vmaccel: where the wall time went)",
    ]
    for case in res["vmaccel"].values():
        size = case["disk_size"] / GiB
        for kind in ("full", "incr"):
            r = case[kind]
            lines.append(fmt_run(f"vmaccel {size:.0f} GiB {kind}", r, phase_note(r)))
        lines.append(
            f"{'':<30} changed by apply_image: {case['changed_bytes'] / MiB:.1f} MiB "
            f"in {case['changed_extents']} extents (bed: attach-disk {case['attach_s']:.1f} s, "
            f"apply-image {case['apply_s']:.1f} s)"
        )
    for peer, r in res["peers"].items():
        if "note" in r:
            lines.append(f"{peer:<30} {r['note']}")
            continue
        for day in ("day0", "day1"):
            lines.append(fmt_run(f"{peer} {day}", r[day], r["version"] if day == "day0" else ""))
    lines.append("")
    for key, value in res["ratios"].items():
        ok = res["verdicts"].get(key)
        lines.append(f"{key:<28} {value:>8}  {'' if ok is None else ('PASS' if ok else 'MISS')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument(
        "--quick", action="store_true", help="1 GiB disk (16 GiB wide); peers only when installed"
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp/vmaccel-bench"),  # noqa: S108 - a cache kept across runs on the bench machine; --dir moves it
        help="cache for the images and scratch space for the repositories",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip borg and restic")
    ap.add_argument("--no-wide", action="store_true", help="skip the 64 GiB case")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run vmaccel backups under py-spy "
        "(raw collapsed stacks in DIR/run*/CASE/profile-*.txt; times include its overhead)",
    )
    ap.add_argument(
        "--qcda-window-mib",
        type=int,
        default=64 * 1024,
        help="MiB one QueryChangedDiskAreas answer of the bed covers at most "
        "(default 64 GiB, ESXi-like; the tests use 1-8 MiB windows)",
    )
    ap.add_argument(
        "--qcda-max-extents",
        type=int,
        default=1000,
        help="changed extents one QueryChangedDiskAreas answer holds at most "
        "(default 1000, ESXi-like; 0: bounded by the window only)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the images are built through loop mounts")
    size, wide_size = (1 * GiB, 16 * GiB) if args.quick else (4 * GiB, 64 * GiB)
    log(f"images ({size // GiB} GiB) under {args.dir}")
    images = backup_images.build(args.dir, size)
    wide = None if args.no_wide else backup_images.widen(images, args.dir, wide_size)
    work = args.dir / ("run-quick" if args.quick else "run")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict[str, Any] = {
        "images": vars(images),
        "load_before": os.getloadavg()[0],
        "quick": args.quick,
        "profile": args.profile,
        "peers": {},
    }
    res["qcda_window"] = args.qcda_window_mib * MiB
    res["qcda_max_extents"] = args.qcda_max_extents
    res["vmaccel"] = run_vmaccel(
        work, images, wide, args.profile, res["qcda_window"], args.qcda_max_extents
    )
    for peer in ("borg", "restic"):
        if args.no_peers or shutil.which(peer) is None:
            res["peers"][peer] = {
                "note": "skipped ("
                + (
                    "--no-peers"
                    if args.no_peers
                    else f"{peer} not installed: apt-get install {'borgbackup' if peer == 'borg' else peer}"
                )
                + ")"
            }
            continue
        log(f"{peer}: day 0 and day 1")
        res["peers"][peer] = run_peer(peer, work, Path(images.day0), Path(images.day1))
    res["ratios"] = ratios(res)
    res["verdicts"] = verdicts(res["ratios"])
    res["targets"] = TARGETS
    print(json.dumps(res, indent=2) if args.json else table(res))


if __name__ == "__main__":
    main()
