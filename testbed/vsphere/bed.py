"""The vSphere test bed: builds and runs vcsim plus the vmaccel test layer, and talks to it.

`start_bed()` builds the Go program in `testbed/vsphere/vcsim` once per source hash (the binary and
Go's build cache live under ~/.cache/vmaccel), starts it on a free loopback port with a fresh
self-signed RSA-2048 certificate and returns a `VsphereBed`. `BedControl` is the client of the
bed's control API (`/vmaccel-test/...`): guest writes, disk images, CBT resets, fault injection,
power. Production code never sees this module; it talks to the bed as to a vCenter.

Units: every offset, length and capacity is in bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from testbed.vsphere.bedrecords import SnapshotEvent, Upload, VmConfig, VmEvent

SOURCE_DIR = Path(__file__).resolve().parent / "vcsim"
GOPATH = "/usr/share/gocode"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"

FaultKind = Literal["quiesce", "snapshot", "task", "session", "qcda", "folder", "login"]
PowerState = Literal["poweredOn", "poweredOff", "suspended"]


class BedError(Exception):
    """The bed could not be built or started, or the control API refused a request."""


@dataclass(frozen=True)
class DiskInfo:
    """A VM's virtual disk as the bed sees it."""

    key: int  # device key
    file_name: str  # datastore path of the descriptor, "[LocalDS_0] vm/disk1.vmdk"
    path: Path  # the -flat.vmdk on the local disk (the guest-visible bytes)
    capacity: int
    uuid: str  # backing uuid; "" until the bed first touches the disk

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DiskInfo:
        return cls(d["key"], d["file_name"], Path(d["path"]), d["capacity"], d["uuid"])


@dataclass(frozen=True)
class AppliedImage:
    """What `BedControl.apply_guest_day` wrote and recorded for CBT, in bytes.

    written: the 4 KiB blocks that differed (copied); extents: their number; rewritten: bytes
    of the guest's write log outside them (written with unchanged bytes, recorded only);
    tracked: what QueryChangedDiskAreas answers for this call's writes alone (rounded out to
    the bed's ctk_block and merged).
    """

    written: int
    extents: int
    rewritten: int
    tracked: int


@dataclass(frozen=True)
class VmInfo:
    name: str
    moref: str
    power_state: str
    disks: tuple[DiskInfo, ...]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmaccel"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="",
               GOCACHE=str(_cache_dir() / "go-build"))
    return env


def _source_hash() -> str:
    """Hash of everything the binary depends on: our sources, Go and govmomi versions."""
    h = hashlib.sha256()
    for src in sorted(SOURCE_DIR.glob("*.go")):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    go = subprocess.run(["go", "version"], capture_output=True, text=True, check=True)
    h.update(go.stdout.encode())
    pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", GOVMOMI_PACKAGE],
                         capture_output=True, text=True, check=False)
    h.update(pkg.stdout.encode())
    return h.hexdigest()[:16]


def build_binary() -> Path:
    """Return the bed binary, building it first if these sources were never built.

    Safe against concurrent callers: the binary is built under a temporary name and renamed.
    """
    binary = _cache_dir() / f"vcsim-{_source_hash()}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=SOURCE_DIR,
                            env=_go_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BedError(f"building the vcsim bed failed:\n{result.stderr}")
    tmp.replace(binary)
    return binary


def thumbprint(cert_file: Path, algorithm: str) -> str:
    """The certificate's fingerprint as vSphere prints it: upper-case hex pairs joined by ':'."""
    der = ssl.PEM_cert_to_DER_cert(cert_file.read_text())
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def verified_session(ca_file: Path) -> requests.Session:
    """A requests session that trusts exactly the bed's certificate.

    trust_env is off because requests lets REQUESTS_CA_BUNDLE (set on this machine) override
    Session.verify whenever a request does not pass verify= itself, as the vAPI connector does.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_file)
    return session


class BedControl:
    """Client of the bed's control API. `vm` is a VM name ("DC0_H0_VM0") or moref ("vm-57");
    `disk` a device key, 0 meaning the VM's first disk.

    timeout: seconds one control request may take. Calls that copy or compare whole disks
    (attach_disk, add_disk with an image, apply_image) read only the data extents of sparse
    files, so their time follows the data, not the virtual size: ~1-2 s per GiB of data here.
    """

    def __init__(self, base_url: str, ca_file: Path, timeout: float = 600.0) -> None:
        self._base = base_url.rstrip("/") + "/vmaccel-test/"
        self._http = verified_session(ca_file)
        self.timeout = timeout

    def _call(self, method: str, endpoint: str, payload: dict[str, Any] | None = None,
              *, params: dict[str, str | int] | None = None, data: bytes | None = None) -> Any:
        resp = self._http.request(method, self._base + endpoint, json=payload, params=params,
                                  data=data, timeout=self.timeout)
        body = resp.json()
        if resp.status_code != 200:
            raise BedError(f"{method} {endpoint}: {body.get('error', resp.text)}")
        return body

    def vms(self) -> list[VmInfo]:
        return [VmInfo(v["name"], v["moref"], v["power_state"],
                       tuple(DiskInfo.from_json(d) for d in v["disks"] or ()))
                for v in self._call("GET", "vms")]

    def attach_disk(self, vm: str, image_path: Path, disk: int = 0) -> DiskInfo:
        """Make the raw image the disk's content; the disk's capacity becomes the image size."""
        payload = {"vm": vm, "disk": disk, "image": str(image_path)}
        return DiskInfo.from_json(self._call("POST", "attach-disk", payload))

    def add_disk(self, vm: str, image_path: Path | None = None, capacity: int = 0) -> DiskInfo:
        """Add a disk filled from image_path, or an empty one of capacity bytes."""
        payload = {"vm": vm, "image": str(image_path) if image_path else "", "capacity": capacity}
        return DiskInfo.from_json(self._call("POST", "add-disk", payload))

    def grow_disk(self, vm: str, disk: int, capacity: int) -> DiskInfo:
        """Extend the disk; the new area reads as zeros."""
        payload = {"vm": vm, "disk": disk, "capacity": capacity}
        return DiskInfo.from_json(self._call("POST", "grow-disk", payload))

    def guest_write(self, vm: str, disk: int, offset: int, data: bytes) -> None:
        """Write as the guest would: the bytes land in the VM's current disk and in its CBT."""
        params: dict[str, str | int] = {"vm": vm, "disk": disk, "offset": offset}
        self._call("POST", "write", params=params, data=data)

    def apply_image(self, vm: str, disk: int, new_image_path: Path) -> tuple[int, int]:
        """Guest-write the 4 KiB blocks where new_image_path differs from the disk.

        Returns (bytes written, number of extents written).
        """
        payload = {"vm": vm, "disk": disk, "image": str(new_image_path)}
        res = self._call("POST", "apply-image", payload)
        return res["written"], res["extents"]

    def apply_guest_day(self, vm: str, disk: int, new_image_path: Path,
                        writes: Path | None = None) -> AppliedImage:
        """`apply_image`, and with `writes` (the guest's write log: one "offset length" line
        per extent, in bytes) also record as written every block of the log whose bytes did
        not change, as a real change tracker reports every guest write."""
        payload = {"vm": vm, "disk": disk, "image": str(new_image_path),
                   "writes": str(writes) if writes else ""}
        res = self._call("POST", "apply-image", payload)
        return AppliedImage(res["written"], res["extents"], res["rewritten"], res["tracked"])

    def reset_cbt(self, vm: str) -> None:
        """Reinitialise change tracking as after a power loss: every earlier changeId is invalid."""
        self._call("POST", "reset-cbt", {"vm": vm})

    def inject_fault(self, kind: FaultKind, count: int = 1, *, after: int = 0,
                     method: str = "", cut_bytes: int = 0) -> None:
        """Fail the next `count` matching calls (count < 0: until cleared, 0: disarm), after
        letting the first `after` matching calls through.

        quiesce: quiesced CreateSnapshot_Task fails (ApplicationQuiesceFault);
        snapshot: any CreateSnapshot_Task fails (SnapshotFault);
        task: the next *_Task call of any kind fails (SystemError);
        session: SOAP calls answer NotAuthenticated as with an expired session (Login*,
          RetrieveServiceContent and Logout still work); `method` limits it to one method;
        qcda: QueryChangedDiskAreas answers SystemError (any page of the loop: use `after`);
        folder: a /folder GET sends its headers and `cut_bytes` body bytes, then the
          connection drops;
        login: SessionManager.Login answers InvalidLogin (credentials revoked meanwhile).
        """
        payload = {"kind": kind, "count": count, "after": after, "method": method,
                   "bytes": cut_bytes}
        self._call("POST", "faults", payload)

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def set_power(self, vm: str, state: PowerState) -> None:
        self._call("POST", "power", {"vm": vm, "state": state})

    def vm_config(self, vm: str) -> VmConfig:
        """The VM's configuration as the bed holds it (devices, disks, NICs, extraConfig)."""
        return VmConfig.from_json(self._call("GET", "vm-config", params={"vm": vm}))

    def vm_events(self, since: int = 0) -> list[VmEvent]:
        """VMs created, destroyed or unregistered, oldest first, those after seq `since`."""
        events = self._call("GET", "vm-events", params={"since": since})
        return [VmEvent.from_json(e) for e in events]

    def snapshot_events(self, since: int = 0) -> list[SnapshotEvent]:
        """Snapshots created and removed, in the order the bed applied them, those after seq
        `since` (pass the last seq seen before an action to get what the action did)."""
        events = self._call("GET", "snapshot-events", params={"since": since})
        return [SnapshotEvent.from_json(e) for e in events]

    def set_lease_timeout(self, seconds: float) -> None:
        """NFC import leases opened from now on expire after `seconds` without progress or
        upload activity (the bed then removes the half-made VM); 300 s at start."""
        self._call("POST", "lease-timeout", {"seconds": seconds})

    def uploads(self, since: int = 0) -> list[Upload]:
        """Datastore /folder and NFC uploads received, oldest first, those after seq `since`."""
        return [Upload.from_json(u) for u in self._call("GET", "uploads", params={"since": since})]


@dataclass
class VsphereBed:
    """A running bed. `url` is the SOAP endpoint (pyVmomi), `host` the host:port that
    create_vsphere_client takes; `ca_file` is the PEM certificate to trust."""

    url: str
    host: str
    user: str
    password: str
    ca_file: Path
    thumbprint_sha1: str
    thumbprint_sha256: str
    datastore_dirs: dict[str, Path]
    control: BedControl
    _process: subprocess.Popen[bytes]
    _state_dir: Path

    @property
    def datastore_dir(self) -> Path:
        """Directory of the first datastore (LocalDS_0), where the model VMs live."""
        return self.datastore_dirs[min(self.datastore_dirs)]

    def http_session(self) -> requests.Session:
        """A requests session trusting the bed's certificate (for create_vsphere_client)."""
        return verified_session(self.ca_file)

    def stop(self) -> None:
        if self._process.poll() is None:
            if self._process.stdin:
                self._process.stdin.close()  # the bed exits on EOF (also if we die)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout:
            self._process.stdout.close()
        shutil.rmtree(self._state_dir, ignore_errors=True)

    def __enter__(self) -> VsphereBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for the bed's JSON readiness line on stdout."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0]:
        raise BedError("the vcsim bed did not become ready")
    ready: dict[str, Any] = json.loads(lines[0])
    return ready


def start_bed(*, qcda_window: int = 4 << 20, qcda_max_extents: int = 0,
              ctk_block: int = 64 << 10, machines: int = 4, timeout: float = 60.0,
              control_timeout: float = 600.0) -> VsphereBed:
    """Build (if needed) and start a bed; the caller must `stop()` it (or use `with`).

    qcda_window: bytes one QueryChangedDiskAreas answer covers at most (callers must loop);
    qcda_max_extents: changed extents one answer holds at most, 0 for no limit (ESXi-like:
      a large window with an extent cap; the answer's length then ends at its last extent);
    ctk_block: change tracking granularity (extents are rounded out to it);
    machines: VMs per host and per cluster (2 x machines VMs in all);
    timeout: seconds to wait for the bed to start; control_timeout: BedControl's per request.
    """
    binary = build_binary()
    state_dir = Path(tempfile.mkdtemp(prefix="vmaccel-bed-"))
    log = open(state_dir / "vcsim.log", "wb")  # noqa: SIM115 - handed to the child
    with log:
        process = subprocess.Popen(
            [str(binary), "-exit-on-stdin-eof", f"-state-dir={state_dir}",
             f"-qcda-window={qcda_window}", f"-qcda-max-extents={qcda_max_extents}",
             f"-ctk-block={ctk_block}", f"-machines={machines}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    try:
        ready = _read_ready_line(process, timeout)
    except BedError as e:
        process.kill()
        process.wait()
        log_text = (state_dir / "vcsim.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(state_dir, ignore_errors=True)
        raise BedError(f"{e}; log:\n{log_text}") from e
    url = ready["url"]
    split = urlsplit(url)
    ca_file = Path(ready["cert_file"])
    return VsphereBed(
        url=url, host=split.netloc, user=ready["user"], password=ready["password"],
        ca_file=ca_file,
        thumbprint_sha1=thumbprint(ca_file, "sha1"),
        thumbprint_sha256=thumbprint(ca_file, "sha256"),
        datastore_dirs={k: Path(v) for k, v in ready["datastores"].items()},
        control=BedControl(f"{split.scheme}://{split.netloc}", ca_file, control_timeout),
        _process=process, _state_dir=state_dir)


def main() -> None:
    """Run a bed in the foreground for experiments: `python -m testbed.vsphere.bed`."""
    import signal
    import sys

    with start_bed() as bed:
        print(json.dumps({
            "url": bed.url, "host": bed.host, "user": bed.user, "password": bed.password,
            "ca_file": str(bed.ca_file), "thumbprint_sha1": bed.thumbprint_sha1,
            "thumbprint_sha256": bed.thumbprint_sha256,
            "datastores": {k: str(v) for k, v in bed.datastore_dirs.items()},
            "control": bed.url.removesuffix("/sdk") + "/vmaccel-test/",
            "vms": [vm.name for vm in bed.control.vms()],
        }, indent=2), flush=True)
        print("Ctrl-C stops the bed.", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
