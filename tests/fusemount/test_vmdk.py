"""vmaccel.fusemount.vmdk: descriptors qemu-img reads as the flat file they name."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from vmaccel.fusemount.vmdk import Geometry, ddb_uuid, descriptor, geometry, sectors_of


@pytest.mark.parametrize(
    ("size", "geo"),
    [
        (64 << 20, Geometry(64, 64, 32)),
        ((1 << 30) + (1 << 20), Geometry(512, 128, 32)),
        (20 << 30, Geometry(2610, 255, 63)),
    ],
)
def test_geometry(size: int, geo: Geometry) -> None:
    assert geometry(size) == geo


def test_descriptor_fields() -> None:
    text = descriptor(
        "disk0-flat.vmdk", 20 << 30,
        {"adapter_type": "ide", "uuid": "6000C29a-1b2c-3d4e-5f60-7182 93a4b5c6",
         "virtual_hw_version": 19},
    ).decode()
    lines = text.splitlines()
    assert lines[0] == "# Disk DescriptorFile"
    assert 'createType="vmfs"' in lines and "CID=fffffffe" in lines
    assert 'RW 41943040 VMFS "disk0-flat.vmdk"' in lines  # no offset: qemu rejects one on VMFS
    assert 'ddb.adapterType = "ide"' in lines
    assert 'ddb.uuid = "60 00 c2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6"' in lines
    assert 'ddb.virtualHWVersion = "19"' in lines
    assert 'ddb.geometry.cylinders = "2610"' in lines


def test_bad_metadata_falls_back_to_defaults() -> None:
    text = descriptor('we"ird-flat.vmdk', 1000, {"adapter_type": "nvme", "uuid": "zz",
                                                 "virtual_hw_version": "x"}).decode()
    assert 'ddb.adapterType = "lsilogic"' in text and "ddb.uuid" not in text
    assert 'ddb.virtualHWVersion = "4"' in text
    assert 'RW 2 VMFS "we_ird-flat.vmdk"' in text  # 1000 bytes round up to 2 sectors
    assert sectors_of(1024) == 2 and ddb_uuid("0" * 31) is None


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_qemu_reads_descriptor_as_the_flat_file(tmp_path: Path) -> None:
    flat = tmp_path / "d-flat.vmdk"
    flat.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    (tmp_path / "d.vmdk").write_bytes(descriptor("d-flat.vmdk", flat.stat().st_size))
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(tmp_path / "d.vmdk")],
        check=True, capture_output=True, text=True,
    ).stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == 3 << 20
    subprocess.run(["qemu-img", "compare", str(tmp_path / "d.vmdk"), str(flat)], check=True,
                   capture_output=True)
