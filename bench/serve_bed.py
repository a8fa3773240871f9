"""The serve bench's test bed: N small VMs on the vSphere bed, tagged for one policy.

:func:`prepared` starts a bed with enough VMs, gives N of them a small sparse disk (random
64 KiB blocks in about a third of it: a few MiB of guest data each), attaches the tag
``backup:<tag>`` to those N through the vSphere Automation API (as an admin does in the
vSphere client), and registers the bed as vCenter ``bench`` in a private config directory.
Change tracking answers like ESXi's (:data:`QCDA_LIKE_ESXI`).
Everything runs as child processes of the bench except the bed's control calls.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.vsphere.bed import VsphereBed, start_bed  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
VMACCEL = str(ROOT / ".venv/bin/vmaccel")
VCENTER = "bench"
PASSWORD_ENV = "BENCH_VC_PASSWORD"  # noqa: S105 - the variable's name, not a password
CATEGORY = "backup"
# QueryChangedDiskAreas answered as ESXi does (one answer covers up to 64 GiB and 1,000
# extents), not with the tests' small windows that make callers loop: a bench counts calls.
QCDA_LIKE_ESXI = {"qcda_window": 64 << 30, "qcda_max_extents": 1000}


def log(msg: str) -> None:
    """A progress line on stderr (stdout is the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def small_disk(path: Path, size: int, seed: int) -> int:
    """Write a sparse raw disk of ``size`` bytes with random 64 KiB blocks in about a third
    of it; returns the data bytes written (the rest are holes)."""
    rng = random.Random(seed)
    data = 0
    with path.open("wb") as f:
        f.truncate(size)
        for block in range(0, size, 64 * KiB):
            if rng.random() < 0.35:
                f.seek(block)
                f.write(rng.randbytes(64 * KiB))
                data += 64 * KiB
    return data


def tag_vms(bed: VsphereBed, morefs: list[str], tag: str) -> str:
    """Attach ``CATEGORY:tag`` (category and tag created here) to the VMs; returns the
    policy's form of the tag, ``backup:TAG``."""
    from com.vmware.cis.tagging_client import CategoryModel
    from com.vmware.vapi.std_client import DynamicID
    from vmware.vapi.vsphere.client import create_vsphere_client

    client = create_vsphere_client(
        server=bed.host, username=bed.user, password=bed.password, session=bed.http_session()
    )
    tagging = client.tagging
    category = tagging.Category.create(
        tagging.Category.CreateSpec(
            name=CATEGORY, description="", associable_types=set(),
            cardinality=CategoryModel.Cardinality.MULTIPLE,
        )
    )  # fmt: skip
    tag_id = tagging.Tag.create(
        tagging.Tag.CreateSpec(name=tag, description="", category_id=category)
    )
    for moref in morefs:
        tagging.TagAssociation.attach(tag_id, DynamicID(type="VirtualMachine", id=moref))
    return f"{CATEGORY}:{tag}"


@dataclass(frozen=True)
class BenchBed:
    """A prepared bed: ``vms`` (names) carry ``tag``; ``env`` runs the CLI against the
    private config directory (vCenter ``bench`` registered, its password in the env);
    ``data_bytes`` is the guest data of all disks together."""

    bed: VsphereBed
    work: Path
    vms: tuple[str, ...]
    tag: str
    disk_bytes: int
    data_bytes: int
    env: dict[str, str] = field(repr=False)


def cli(env: dict[str, str], *args: str | Path) -> str:
    """``vmaccel ARGS`` as a child (set-up, not timed); its stdout. Raises when it fails."""
    done = subprocess.run(
        [VMACCEL, *map(str, args)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"vmaccel {' '.join(map(str, args))}: {done.stderr[-2000:]}")
    return done.stdout


def enable_cbt(bed: VsphereBed, morefs: list[str]) -> None:
    """Turn change tracking on for the VMs now, so that neither side of the bench pays the
    one reconfigure task a VM's first backup would otherwise make."""
    from testbed.vsphere import vimclient

    with vimclient.connect(bed) as si:
        for moref in morefs:
            vimclient.enable_cbt(si, vimclient.vm_by_moref(si, moref))


def _disks(bed: VsphereBed, work: Path, vms: list[Any], size: int) -> int:
    data = 0
    for seed, vm in enumerate(vms):
        image = work / "disks" / f"{vm.name}.img"
        data += small_disk(image, size, seed + 1)
        bed.control.attach_disk(vm.name, image)
        image.unlink()  # the bed copied it into the datastore
    return data


@contextmanager
def prepared(count: int, disk_mib: int, work: Path | None = None) -> Iterator[BenchBed]:
    """A bed with ``count`` tagged VMs of ``disk_mib`` MiB disks (see the module docstring);
    the bed stops and a scratch ``work`` directory (when none is given) goes at the end."""
    scratch = tempfile.TemporaryDirectory(prefix="vmaccel-bench-serve-") if work is None else None
    base = Path(scratch.name) if scratch else work
    assert base is not None
    (base / "disks").mkdir(parents=True, exist_ok=True)
    try:
        with start_bed(machines=max(2, (count + 1) // 2), **QCDA_LIKE_ESXI) as bed:
            vms = sorted(bed.control.vms(), key=lambda v: v.name)[:count]
            data = _disks(bed, base, vms, disk_mib * MiB)
            tag = tag_vms(bed, [v.moref for v in vms], "bench-serve")
            enable_cbt(bed, [v.moref for v in vms])
            env = {**os.environ, "VMACCEL_CONFIG_DIR": str(base / "config"),
                   PASSWORD_ENV: bed.password, "PYTHONPATH": str(ROOT)}  # fmt: skip
            env.pop("VMACCEL_REPO", None)
            cli(env, "vcenter", "add", VCENTER, "--url", bed.url, "--user", bed.user,
                "--password-env", PASSWORD_ENV, "--ca-file", bed.ca_file)  # fmt: skip
            names = tuple(v.name for v in vms)
            yield BenchBed(bed, base, names, tag, disk_mib * MiB, data, env)
    finally:
        if scratch:
            scratch.cleanup()
