"""The vmaccel demo: every step is a real `vmaccel` command against a simulated vCenter.

Run it with `bash scripts/demo.sh` (installs what it needs). It uses the test bed (govmomi's
vcsim extended with real disks, frozen snapshots, CBT and vAPI tags) and a guest disk built
with the real mkfs tools: GPT with FAT32, ext4, NTFS and LVM.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.guestimages.builder import load_or_build
from testbed.guestimages.guestday import apply_day
from testbed.guestimages.mounts import clone_image
from testbed.vsphere.bed import VsphereBed, start_bed

TAG_CATEGORY, TAG = "backup-policy", "daily"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def vmaccel(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ vmaccel {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "vmaccel.cli", *args], text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"vmaccel {args[0]} failed with exit code {done.returncode}")
    return done


def tag_vm(bed: VsphereBed, moref: str) -> None:
    from com.vmware.cis.tagging_client import CategoryModel
    from com.vmware.vapi.std_client import DynamicID
    from vmware.vapi.vsphere.client import create_vsphere_client

    client = create_vsphere_client(server=bed.host, username=bed.user, password=bed.password,
                                   session=bed.http_session())
    category = client.tagging.Category.create(client.tagging.Category.CreateSpec(
        name=TAG_CATEGORY, description="vmaccel demo", associable_types=set(),
        cardinality=CategoryModel.Cardinality.MULTIPLE))
    tag = client.tagging.Tag.create(client.tagging.Tag.CreateSpec(
        name=TAG, description="back up every day", category_id=category))
    client.tagging.TagAssociation.attach(tag, DynamicID(type="VirtualMachine", id=moref))


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vmaccel-demo-"))
    os.environ.update(VMACCEL_REPO=str(work / "repo"), VMACCEL_CONFIG_DIR=str(work / "config"))
    say("building a guest disk (GPT: FAT32, ext4, NTFS, LVM) with the real mkfs tools")
    image = load_or_build("gpt")
    disk = work / "guest.img"
    clone_image(image.path, disk)
    say("starting the simulated vCenter")
    with start_bed(machines=2) as bed:
        vm = bed.control.vms()[0]
        bed.control.attach_disk(vm.name, disk)
        tag_vm(bed, vm.moref)
        print(f"VM {vm.name} has the guest disk and the tag {TAG_CATEGORY}:{TAG}")
        os.environ["DEMO_VC_PASSWORD"] = bed.password
        vmaccel("repo", "init")
        vmaccel("vcenter", "add", "lab", "--url", bed.url, "--user", bed.user,
                "--password-env", "DEMO_VC_PASSWORD", "--ca-file", str(bed.ca_file))
        say("first backup, selected by tag: a full read of the used blocks")
        vmaccel("backup", "--vcenter", "lab", "--tag", f"{TAG_CATEGORY}:{TAG}")
        say("a day in the guest: files rewritten, appended, created and deleted")
        day = apply_day(image, work / "day1.img", fraction=0.05, seed=7)
        written, extents = bed.control.apply_image(vm.name, 0, day.image.path)
        print(f"the guest wrote {written} bytes in {extents} extents")
        say("second backup: CBT + free-block skipping read only what changed")
        vmaccel("backup", "--vcenter", "lab", "--tag", f"{TAG_CATEGORY}:{TAG}")
        vmaccel("backups", "list")
        changed = show_changed_file(vm.name, day)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; repository: {work / 'repo'}")
    if not changed:
        raise SystemExit(1)


def show_changed_file(vm_name: str, day: object) -> bool:
    """Mount the repository, list the newest backup's ext4 files, read a changed file."""
    from testbed.guestimages.model import GuestImage

    assert hasattr(day, "image") and hasattr(day, "changes")
    image: GuestImage = day.image
    mnt = Path(tempfile.mkdtemp(prefix="vmaccel-mnt-"))
    say("mounting every backup as disks and file trees")
    vmaccel("mount", str(mnt))
    try:
        latest = mnt / vm_name / "latest"
        subprocess.run(["ls", "-l", f"{latest}/", f"{latest}/files/"], check=True)
        for volume, changes in day.changes.items():
            vol = image.volume(volume)
            for change in changes:
                expect = vol.files.get(change.path)
                if change.action == "delete" or expect is None or expect.kind != "file":
                    continue
                found = sorted((latest / "files").glob(f"*/{change.path.lstrip('/')}"))
                for path in found:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    print(f"{change.action} {volume}:{change.path} -> {path} "
                          f"sha256 {'matches' if digest == expect.sha256 else 'DIFFERS'}")
                    if digest == expect.sha256:
                        subprocess.run(["ls", "-l", str(path.parent)], check=True)
                        say("every restore point holding that file, from the file catalog")
                        vmaccel("files", "find", change.path.rsplit("/", 1)[-1])
                        return True
        print("no changed file found in the mounted backup")
        return False
    finally:
        vmaccel("umount", str(mnt), check=False)


if __name__ == "__main__":
    main()
