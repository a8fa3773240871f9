#!/usr/bin/env python3
# ruff: noqa: E501  (the human table is wide on purpose)
"""Backup benchmark: vmaccel full and incremental against the vSphere test bed, borg and restic.

Run by hand, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_backup.py [--json] [--quick] [--dir DIR] [--no-peers] [--profile]

One run: build (or reuse) a Debian system disk and its "day 1" (``backup_images.py``), back up
day 0 and day 1 with ``vmaccel backup --transport file`` (``--transport http``: over HTTPS) from the test bed (CBT incremental)
under two models of change tracking (``minimal``: the 4 KiB blocks that differ; ``esxi``: every
block the guest wrote, in 64 KiB granules), the same two versions with borg (both chunkers) and
restic (when installed, settings from ``peers.py``), and the same change on a 64 GiB mostly
sparse disk. Every tool runs as a child process, so wall time, CPU and peak RSS (``wait4``
rusage) are that run's own. Targets: issue 5's ("Proof"), issue 16's (``refpipe.py``).
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
import refpipe  # noqa: E402
from peers import PEERS, Peer, fastest  # noqa: E402

from testbed.vsphere.bed import VsphereBed, start_bed  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CBT_MODELS = ("minimal", "esxi")
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
TARGETS = {
    "speedup_vs_peers_min": 5.0,
    "incr_over_full_max": 0.15,
    "read_over_changed_max": 1.5,
    "wide_over_small_max": 1.5,
    "full_vs_reference_min": 0.85,  # issue 16
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


# The CLI in a child process, with timers around the phases the bench reports separately
# (the notes column). The bed's snapshots are hard links (instant, like ESXi's redo log), so
# vmaccel's wall time is the figure: nothing is subtracted from it.
CHILD = """
import atexit, json, os, sys, time
from vmaccel.plugin.engine import vmjob
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

    def __init__(self, work: Path, bed: VsphereBed, profile: bool, transport: str) -> None:
        self.work, self.bed, self.profile, self.transport = work, bed, profile, transport
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

    def _transport(self) -> list[str]:
        """The bed's datastore read as a local directory (file), or over HTTPS (http: what
        a backup server without the datastores mounted uses; every block is read, as HTTP
        has no sparse map)."""
        if self.transport == "http":
            return ["--transport", "http"]
        return ["--transport", "file", "--datastore-path", f"LocalDS_0={self.bed.datastore_dir}"]

    def backup(self, vm: str, name: str) -> dict[str, Any]:
        run = self.cli(
            "backup",
            "--vcenter",
            "bench",
            "--vm",
            vm,
            *self._transport(),
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
        }


def vmaccel_case(
    tool: Vmaccel, bed: VsphereBed, vm: Any, day: tuple[Path, Path, Path | None], label: str
) -> dict[str, Any]:
    """Full backup of day 0, day 1 applied (with the guest's write log when given), incremental."""
    day0, day1, writes = day
    log(f"{label}: attaching {day0.name} to {vm.name}")
    started = time.monotonic()
    bed.control.attach_disk(vm.name, day0)
    attach_s = time.monotonic() - started
    log(f"{label}: full backup, between two runs of the reference pipeline (refpipe.py)")
    full, ref = refpipe.around(lambda: tool.backup(vm.name, f"{label}-full"), PY, day0, tool.work)
    log(f"{label}: applying day 1" + (" and the guest's write log" if writes else ""))
    started = time.monotonic()
    applied = bed.control.apply_guest_day(vm.name, 0, day1, writes)
    apply_s = time.monotonic() - started
    log(
        f"{label}: incremental ({applied.written / MiB:.1f} MiB changed, CBT answers "
        f"{applied.tracked / MiB:.1f} MiB)"
    )
    incr = tool.backup(vm.name, f"{label}-incr")
    return {
        "disk_size": full["disk_size"],
        "changed_bytes": applied.written,
        "changed_extents": applied.extents,
        "rewritten_bytes": applied.rewritten,
        "cbt_answer_bytes": applied.tracked,
        "attach_s": round(attach_s, 2),
        "apply_s": round(apply_s, 2),
        "full": full,
        "incr": incr,
        "reference": ref,
    }


def run_vmaccel(
    work: Path,
    images: backup_images.Images,
    wide: tuple[Path, Path] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Per CBT model a bed and the small case; the wide case under the headline model (the
    last one run). Each case in its own repository, so the wide disk's backups store the
    same new data as the small disk's (no dedup against each other)."""
    writes = Path(images.day1_writes)
    out: dict[str, Any] = {}
    for model in args.models:
        esxi = model == "esxi"
        cases = {f"small-{model}": (Path(images.day0), Path(images.day1), writes if esxi else None)}
        if wide is not None and model == args.models[-1]:
            cases[f"wide-{model}"] = (*wide, writes if esxi else None)
        with start_bed(
            machines=2,
            timeout=120,
            control_timeout=1800,
            qcda_window=args.qcda_window_mib * MiB,
            qcda_max_extents=args.qcda_max_extents,
            ctk_block=args.ctk_block_kib * KiB if esxi else 4 * KiB,
        ) as bed:
            vms = bed.control.vms()
            for (label, day), vm in zip(cases.items(), vms, strict=False):
                (work / label).mkdir()
                tool = Vmaccel(work / label, bed, args.profile, args.transport)
                tool.setup()
                out[label] = {"cbt_model": model, **vmaccel_case(tool, bed, vm, day, label)}
    return out


def run_peer(peer: Peer, work: Path, day0: Path, day1: Path) -> dict[str, Any]:
    """One peer configuration (``peers.py``) on stage/disk.img, hard-linked to each day's image
    in turn (a new inode: both tools re-read the file, as they must for a changed image)."""
    top = work / peer.name
    shutil.rmtree(top, ignore_errors=True)
    stage, repo = top / "stage", top / "repo"
    stage.mkdir(parents=True)
    env = {**os.environ, **peer.env(top, repo)}
    timed(peer.init_argv(repo), env, stage)
    runs = {}
    for day, image in (("day0", day0), ("day1", day1)):
        (stage / "disk.img").unlink(missing_ok=True)
        os.link(image, stage / "disk.img")
        r = timed(peer.backup_argv(repo, day, "disk.img"), env, stage)
        r.pop("output")
        runs[day] = {**r, "repo_bytes": du(repo)}
    (stage / "disk.img").unlink()
    shutil.rmtree(top / "cache", ignore_errors=True)
    return {**peer.describe(), **runs}


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's ratios on the headline model's cases (``esxi`` when it ran), and
    read_over_changed under every model that ran."""
    model = res["cbt_models"][-1]
    small = res["vmaccel"][f"small-{model}"]
    incr, full = small["incr"], small["full"]
    out: dict[str, Any] = {
        "headline_cbt_model": model,
        "incr_over_full": round(incr["wall_s"] / full["wall_s"], 3),
        **refpipe.ratios(full, small["reference"]),  # issue 16
    }
    for m in res["cbt_models"]:
        case = res["vmaccel"][f"small-{m}"]
        read = case["incr"]["bytes_read"]
        out[f"read_over_changed_{m}"] = round(read / max(1, case["changed_bytes"]), 3)
        out[f"read_over_cbt_answer_{m}"] = round(read / max(1, case["cbt_answer_bytes"]), 3)
    walls = {n: r["day1"]["wall_s"] for n, r in res["peers"].items() if "day1" in r}
    for name, wall in walls.items():
        out[f"speedup_vs_{name}"] = round(wall / incr["wall_s"], 2)
    for tool in ("borg", "restic"):
        if best := fastest(walls, tool):
            out[f"faster_{tool}"] = best[0]
            out[f"speedup_vs_faster_{tool}"] = round(best[1] / incr["wall_s"], 2)
    if walls:
        out["speedup_vs_fastest_peer"] = round(min(walls.values()) / incr["wall_s"], 2)
    wide = res["vmaccel"].get(f"wide-{model}")
    if wide:
        out["wide_over_small"] = round(wide["incr"]["wall_s"] / incr["wall_s"], 3)
        out["wide_over_small_disk"] = round(wide["incr"]["disk_s"] / incr["disk_s"], 3)
    return out


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Issue 5's targets; the speedup target against the fastest configuration of each peer."""
    out = {}
    for key, value in r.items():
        if key in ("speedup_vs_faster_borg", "speedup_vs_faster_restic"):
            out[key] = value >= TARGETS["speedup_vs_peers_min"]
        elif key == "incr_over_full":
            out[key] = value <= TARGETS["incr_over_full_max"]
        elif key.startswith("read_over_changed_"):
            out[key] = value <= TARGETS["read_over_changed_max"]
        elif key == "full_vs_reference":
            out[key] = value >= TARGETS["full_vs_reference_min"]
        elif key.startswith("wide_over_small"):
            out[key] = value < TARGETS["wide_over_small_max"]
    return out


def fmt_run(name: str, r: dict[str, Any], extra: str = "") -> str:
    return (
        f"{name:<30} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} "
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
        f"disk {img['size'] / GiB:.2f} GiB, system {backup_images.summary(backup_images.Images(**img))}",
        f"  {img['files']} files, {img['used_pct']}% used; day 1: the guest sent "
        f"{img['day1_write_requests']} writes covering {img['day1_written_bytes'] / MiB:.1f} MiB; "
        f"load before run {res['load_before']:.2f}",
        f"bed QueryChangedDiskAreas: window {res['qcda_window'] // MiB} MiB, max extents "
        f"{res['qcda_max_extents'] or 'unbounded'}; CBT models {', '.join(res['cbt_models'])} "
        f"(esxi granule {res['ctk_block_esxi'] // KiB} KiB); vmaccel reads with --transport "
        f"{res['transport']}",
        f"{'run':<30} {'wall s':>8} {'cpu s':>7} {'RSS MiB':>7} {'read MiB':>9} "
        f"{'stored MiB':>9} {'repo MB':>9}  notes (vmaccel: where the wall time went)",
    ]
    for label, case in res["vmaccel"].items():
        for kind in ("full", "incr"):
            r = case[kind]
            lines.append(fmt_run(f"vmaccel {label} {kind}", r, phase_note(r)))
        lines.append(refpipe.table_row(case["reference"]))
        lines.append(
            f"{'':<30} day 1: {case['changed_bytes'] / MiB:.1f} MiB changed in "
            f"{case['changed_extents']} extents, {case['rewritten_bytes'] / MiB:.1f} MiB rewritten "
            f"unchanged; CBT answered {case['cbt_answer_bytes'] / MiB:.1f} MiB (bed: attach-disk "
            f"{case['attach_s']:.1f} s, apply-image {case['apply_s']:.1f} s)"
        )
    for peer, r in res["peers"].items():
        if "note" in r:
            lines.append(f"{peer:<30} {r['note']}")
            continue
        note = f"{r['version']}; {' '.join(r['create_flags']) or '(defaults)'}"
        for day in ("day0", "day1"):
            lines.append(fmt_run(f"{peer} {day}", r[day], note if day == "day0" else ""))
    lines.append("")
    for key, value in res["ratios"].items():
        ok = res["verdicts"].get(key)
        lines.append(f"{key:<30} {value:>12}  {'' if ok is None else ('PASS' if ok else 'MISS')}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--quick", action="store_true", help="1 GiB disk (16 GiB wide)")
    ap.add_argument("--size-mib", type=int, default=0, help="disk size in MiB (wide: 16x); overrides --quick")
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp/vmaccel-bench"),  # noqa: S108 - a cache kept across runs on the bench machine; --dir moves it
        help="cache for the images and scratch space for the repositories",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip borg and restic")
    ap.add_argument("--no-wide", action="store_true", help="skip the 64 GiB case")
    ap.add_argument("--require-debootstrap", action="store_true", help="fail instead of falling back to a copy of /usr when debootstrap cannot run")
    ap.add_argument("--profile", action="store_true", help="vmaccel backups under py-spy (DIR/run*/CASE/profile-*.txt; times include it)")
    _bed_options(ap)
    args = ap.parse_args()
    args.models = CBT_MODELS if args.cbt == "both" else (args.cbt,)
    return args


def _bed_options(ap: argparse.ArgumentParser) -> None:
    """How the bed tracks and answers changes, and how vmaccel reads its disks."""
    ap.add_argument(
        "--cbt",
        choices=("minimal", "esxi", "both"),
        default="both",
        help="change tracking model(s) of the bed: minimal (the 4 KiB blocks that differ), "
        "esxi (every block the guest wrote, in --ctk-block-kib granules); default both, "
        "headline figures from esxi",
    )
    ap.add_argument("--ctk-block-kib", type=int, default=64, help="esxi model's granule")
    ap.add_argument("--qcda-window-mib", type=int, default=64 * 1024, help="MiB one QueryChangedDiskAreas answer covers at most (default 64 GiB, ESXi-like)")
    ap.add_argument("--qcda-max-extents", type=int, default=1000, help="extents one answer holds at most (default 1000, ESXi-like; 0: window only)")
    ap.add_argument("--transport", choices=("file", "http"), default="file", help="how vmaccel reads the bed's disks (default file: the datastore as a directory)")


def run_peers(res: dict[str, Any], skip: bool, work: Path, images: backup_images.Images) -> None:
    for peer in PEERS:
        if skip or not peer.installed():
            why = "--no-peers" if skip else f"not installed: apt-get install {peer.package}"
            res["peers"][peer.name] = {"note": f"skipped ({why})"}
            continue
        log(f"{peer.name}: day 0 and day 1")
        res["peers"][peer.name] = run_peer(peer, work, Path(images.day0), Path(images.day1))


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the images are built through loop mounts")
    size = args.size_mib * MiB or (1 * GiB if args.quick else 4 * GiB)
    log(f"images ({size / GiB:.2f} GiB) under {args.dir}")
    images = backup_images.build(args.dir, size, args.require_debootstrap)
    log(f"system: {backup_images.summary(images)}")
    wide = None if args.no_wide else backup_images.widen(images, args.dir, 16 * size)
    work = args.dir / ("run" if size == 4 * GiB else f"run-{size // MiB}m")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict[str, Any] = {
        "images": vars(images),
        "image_system": images.system,
        "load_before": os.getloadavg()[0],
        "quick": args.quick,
        "profile": args.profile,
        "cbt_models": list(args.models),
        "ctk_block_esxi": args.ctk_block_kib * KiB,
        "qcda_window": args.qcda_window_mib * MiB,
        "qcda_max_extents": args.qcda_max_extents,
        "transport": args.transport,
        "peers": {},
    }
    res["vmaccel"] = run_vmaccel(work, images, wide, args)
    run_peers(res, args.no_peers, work, images)
    res["ratios"] = ratios(res)
    res["verdicts"] = verdicts(res["ratios"])
    res["targets"] = TARGETS
    print(json.dumps(res, indent=2) if args.json else table(res))


if __name__ == "__main__":
    main()
