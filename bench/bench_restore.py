#!/usr/bin/env python3
"""Restore benchmark: getting a VM back into vSphere, each way against its baseline of the run.

Run by hand as root, never from CI (``bench/README.md`` explains every figure)::

    .venv/bin/python bench/bench_restore.py [--json] [--quick] [--dir DIR]
                                            [--transports file,nbd,http] [--no-instant]

One run, issue 12's "Proof" figures: the Debian system disk of ``backup_images.py`` (4 GiB;
1 GiB with ``--quick``) attached to VMs of the vSphere test bed and backed up; ``restore disk``
of it to a local file (the baseline), then ``restore vm`` as a new VM over every transport
asked; then the disk's "day 1" (a ~3 % guest day, with the guest's write log for change
tracking) applied to a backed-up VM and rolled back with ``restore vm --in-place --yes``
(per transport that writes ranges), against the full ``restore vm`` of the same disk over the
same transport; finally instant recovery (``bench_instant.py``, its own child and bed). Every
vmaccel command is a child process: wall, CPU, peak RSS and the load average at its start are
that phase's own. Restored and rolled-back disks are compared with the source image, untimed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # bench/ first on sys.path would let bench_catalog.py shadow packages
sys.path.append(str(ROOT / "bench"))

import backup_images  # noqa: E402
from restore_phases import VmaccelCli, identical, log, run_instant, vm_disk  # noqa: E402

from testbed.vsphere.bed import VsphereBed, start_bed  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TRANSPORTS = ("file", "nbd", "http")
RANGED = ("file", "nbd")  # http (/folder) replaces whole files: refused for --in-place
# ratio name (or prefix, one per transport) -> issue 12's target: (comparison, bound)
TARGETS = {
    "sent_over_allocated": ("<=", 1.1),
    "rollback_over_full": ("<=", 0.2),
    "rollback_written_over_changed": ("<=", 1.5),
    "instant_start_ratio": ("<", 1.5),
    "nfs_vs_mount": (">=", 0.7),
}
BED = {"qcda_window": 64 * GiB, "qcda_max_extents": 1000, "ctk_block": 64 * KiB}


def backed_up_vms(
    cli: VmaccelCli, bed: VsphereBed, images: backup_images.Images, count: int
) -> dict[str, Any]:
    """``count`` VMs of the bed with day 0 as their disk, each backed up (the later backups
    dedup against the first: same bytes). Returns name -> disk key and backup figures."""
    out: dict[str, Any] = {}
    for vm in sorted(v.name for v in bed.control.vms())[:count]:
        log(f"{vm}: attaching day 0 and backing it up")
        key = bed.control.attach_disk(vm, Path(images.day0)).key
        out[vm] = {"disk_key": key, "backup": cli.backup(vm)}
    return out


def restore_vms(
    cli: VmaccelCli, bed: VsphereBed, src: str, transports: list[str], day0: Path
) -> dict[str, Any]:
    """``restore vm`` of ``src``'s backup as a new VM per transport, checked against day 0."""
    out: dict[str, Any] = {}
    for t in transports:
        log(f"restore vm {src} as a new VM over {t}")
        seen = len(bed.control.uploads())
        r = cli.restore_vm(f"restore-vm-{t}", src, t, "--name", f"{src}-{t}")
        if t == "http":
            r["nfc_bytes_received"] = sum(u.bytes_received for u in bed.control.uploads(seen))
        r["identical"] = identical(vm_disk(bed, r["vm"]), day0)
        out[t] = r
    return out


def rollbacks(
    cli: VmaccelCli, bed: VsphereBed, vms: dict[str, Any], images: backup_images.Images
) -> dict[str, Any]:
    """Per ranged transport, on its own backed-up VM: day 1 applied (CBT records the guest's
    write log), then ``--in-place --yes``; the disk is checked against day 0 afterwards."""
    out: dict[str, Any] = {}
    for t, vm in vms.items():
        applied = bed.control.apply_guest_day(
            vm["name"], vm["disk_key"], Path(images.day1), Path(images.day1_writes)
        )
        log(f"rollback of {vm['name']} over {t} ({applied.written / MiB:.1f} MiB changed)")
        r = cli.restore_vm(f"rollback-{t}", vm["name"], t, "--in-place", "--yes")
        r["identical"] = identical(vm_disk(bed, vm["name"]), Path(images.day0))
        r.update(
            changed_bytes=applied.written,
            changed_extents=applied.extents,
            tracked_bytes=applied.tracked,
        )
        out[t] = r
    return out


def run_bed(work: Path, images: backup_images.Images, transports: list[str]) -> dict[str, Any]:
    """Backups, the baseline, restore vm per transport and the rollbacks, on one bed."""
    ranged = [t for t in transports if t in RANGED]
    with start_bed(machines=2, timeout=120, control_timeout=1800, **BED) as bed:
        cli = VmaccelCli(work, bed)
        cli.setup()
        vms = backed_up_vms(cli, bed, images, max(1, len(ranged)))
        src, key = next(iter(vms)), next(iter(vms.values()))["disk_key"]
        log(f"restore disk {src} to a local file (the baseline)")
        baseline = work / "restore-disk.img"
        disk = cli.restore_disk(src, f"disk-{key}", baseline)
        disk["identical"] = identical(baseline, Path(images.day0))
        baseline.unlink()
        restored = restore_vms(cli, bed, src, transports, Path(images.day0))
        rb_vms = {t: {"name": n, **vms[n]} for t, n in zip(ranged, vms, strict=False)}
        rolled = rollbacks(cli, bed, rb_vms, images)
    refused = {t: {"note": "refused: the /folder interface replaces whole files"}
               for t in transports if t not in RANGED}  # fmt: skip
    return {
        "vms": vms,
        "restore_disk": disk,
        "restore_vm": restored,
        "rollback": {**rolled, **refused},
    }


def ratios(res: dict[str, Any]) -> dict[str, float]:
    """Each way against its baseline of the same run: wall times of the child processes;
    ``_data`` and ``_own``: the reports' own seconds (without the CLI's start-up)."""
    disk = res["restore_disk"]
    out: dict[str, float] = {}
    for t, r in res["restore_vm"].items():
        out[f"restore_vm_over_disk_{t}"] = round(r["wall_s"] / disk["wall_s"], 3)
        out[f"restore_vm_over_disk_data_{t}"] = round(r["disk_s"] / disk["seconds"], 3)
        out[f"sent_over_allocated_{t}"] = round(r["bytes_written"] / disk["data_bytes"], 3)
    for t, r in res["rollback"].items():
        if "wall_s" not in r:
            continue
        written = r["bytes_written"] + r["bytes_zeroed"]
        full = res["restore_vm"][t]
        out[f"rollback_over_full_{t}"] = round(r["wall_s"] / full["wall_s"], 3)
        out[f"rollback_over_full_own_{t}"] = round(r["report_s"] / full["report_s"], 3)
        out[f"rollback_written_over_changed_{t}"] = round(written / max(1, r["changed_bytes"]), 3)
        out[f"rollback_written_over_tracked_{t}"] = round(written / max(1, r["tracked_bytes"]), 3)
    inst = res.get("instant", {})
    if "start_ratio" in inst:
        out["instant_start_ratio"] = round(inst["start_ratio"], 3)
    if "nfs_vs_mount" in inst.get("read", {}):
        out["nfs_vs_mount"] = round(inst["read"]["nfs_vs_mount"], 3)
    return out


def verdicts(r: dict[str, float]) -> dict[str, bool]:
    """Issue 12's targets, for every ratio that has one."""
    compare = {"<=": float.__le__, "<": float.__lt__, ">=": float.__ge__}
    out = {}
    for key, value in r.items():
        for prefix, (op, bound) in TARGETS.items():
            if key.startswith(prefix):
                out[key] = compare[op](float(value), bound)
    return out


def fmt(name: str, r: dict[str, Any], sent: int, note: str) -> str:
    return (
        f"{name:<26} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} {r['rss_mib']:>7.0f} "
        f"{r['load_at_start']:>5.2f} {sent / MiB:>9.1f}  {note}"
    )


def instant_note(inst: dict[str, Any]) -> str:
    starts = ", ".join(f"{k} GiB {v:.2f} s" for k, v in inst.get("start_s", {}).items())
    read = inst.get("read", {})
    rates = (
        f"; NFS {read['nfs_mib_s']:.0f} MiB/s, mount {read['mount_mib_s']:.0f} MiB/s"
        if "nfs_mib_s" in read
        else ""
    )
    return f"start: {starts}{rates}"


def table_lines(res: dict[str, Any]) -> list[str]:
    img = res["images"]
    disk = res["restore_disk"]
    lines = [
        f"disk {img['size'] / GiB:.2f} GiB{' (--quick)' if res['quick'] else ''}, system "
        f"{backup_images.summary(backup_images.Images(**img))}; load before run "
        f"{res['load_before']:.2f}",
        f"{'run':<26} {'wall s':>8} {'cpu s':>7} {'RSS MiB':>7} {'load':>5} {'sent MiB':>9}  notes",
        fmt("restore disk (baseline)", disk, disk["data_bytes"],
            f"data {disk['seconds']:.2f} s, identical {disk['identical']}"),
    ]  # fmt: skip
    for t, r in res["restore_vm"].items():
        note = f"disk {r['disk_s']:.2f} s, identical {r['identical']}"
        lines.append(fmt(f"restore vm {t}", r, r["bytes_written"], note))
    for t, r in res["rollback"].items():
        if "wall_s" not in r:
            lines.append(f"{'rollback ' + t:<26} {r['note']}")
            continue
        note = (
            f"+{r['bytes_zeroed'] / MiB:.1f} MiB zeroed; changed {r['changed_bytes'] / MiB:.1f}"
            f" MiB, CBT {r['tracked_bytes'] / MiB:.1f} MiB; {'/'.join(r['modes'])}, "
            f"identical {r['identical']}"
        )
        lines.append(fmt(f"rollback {t}", r, r["bytes_written"], note))
    inst = res.get("instant", {})
    if "run" in inst:
        lines.append(fmt("instant (bench_instant)", inst["run"], 0, instant_note(inst)))
    else:
        why = inst.get("error") or inst.get("note") or "not run"
        lines.append(f"{'instant':<26} {why.splitlines()[-1]}")
    return lines


def table(res: dict[str, Any]) -> str:
    lines = [*table_lines(res), ""]
    for key, value in res["ratios"].items():
        ok = res["verdicts"].get(key)
        lines.append(f"{key:<36} {value:>10}  {'' if ok is None else ('PASS' if ok else 'MISS')}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--quick", action="store_true", help="1 GiB disk, small instant sizes")
    ap.add_argument("--size-mib", type=int, default=0, help="disk size in MiB; overrides --quick")
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp/vmaccel-bench"),  # noqa: S108 - the image cache bench_backup shares
        help="image cache (shared with bench_backup.py); scratch in DIR/restore-run[-Nm]",
    )
    ap.add_argument(
        "--transports", default=",".join(TRANSPORTS), help="comma list of file, nbd, http"
    )
    ap.add_argument("--no-instant", action="store_true", help="skip the instant recovery part")
    args = ap.parse_args()
    args.transport_list = [t for t in args.transports.split(",") if t]
    if unknown := set(args.transport_list) - set(TRANSPORTS):
        ap.error(f"unknown transport(s): {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the images are built through loop mounts")
    size = args.size_mib * MiB or (1 * GiB if args.quick else 4 * GiB)
    log(f"images ({size / GiB:.2f} GiB) under {args.dir}")
    images = backup_images.build(args.dir, size)
    work = args.dir / ("restore-run" if size == 4 * GiB else f"restore-run-{size // MiB}m")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict[str, Any] = {
        "images": vars(images),
        "image_system": images.system,
        "quick": args.quick,
        "load_before": os.getloadavg()[0],
        "transports": args.transport_list,
        "bed": BED,
    }
    res.update(run_bed(work, images, args.transport_list))
    if args.no_instant:
        res["instant"] = {"note": "skipped (--no-instant)"}
    else:
        log("instant recovery (bench_instant.py)")
        res["instant"] = run_instant(work / "instant", args.quick or size < 4 * GiB)
    res["ratios"] = ratios(res)
    res["verdicts"] = verdicts(res["ratios"])
    res["targets"] = TARGETS
    print(json.dumps(res, indent=2) if args.json else table(res))


if __name__ == "__main__":
    main()
