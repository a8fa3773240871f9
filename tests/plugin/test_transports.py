"""The three transports (plugin/transport/): holes, exact reads, and clear failures."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from testbed.guestimages.model import GuestImage
from testbed.guestimages.nbdserver import file_holes
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.plugin.imagecheck import file_data
from vmaccel.guestfs.extent import Extent, complement, merge
from vmaccel.plugin.transport.file import FileSource
from vmaccel.plugin.transport.http import HttpSource
from vmaccel.plugin.transport.nbd import NbdSource
from vmaccel.plugin.transport.source import SourceStream
from vmaccel.plugin.vcenter import snapshots
from vmaccel.plugin.vcenter.connection import VCenter
from vmaccel.plugin.vcenter.datastore import http_location
from vmaccel.plugin.vcenter.inventory import list_vms
from vmaccel.plugin.vcenter.models import DiskRef, Endpoint, TlsTrust
from vmaccel.plugin.vcenter.tls import normalize_thumbprint
from vmaccel.vocabulary.errors import SourceChanged, TransportError

MiB = 1 << 20
DATA = [Extent(0, 64 * 1024), Extent(3 * MiB, 128 * 1024), Extent(7 * MiB + 4096, 8192)]


@pytest.fixture
def sparse(tmp_path: Path) -> tuple[Path, bytes]:
    """An 8 MiB sparse file with three data ranges; returns it and its full content."""
    path = tmp_path / "sparse.img"
    content = bytearray(8 * MiB)
    rng = random.Random(7)
    with path.open("wb") as f:
        f.truncate(8 * MiB)
        for e in DATA:
            chunk = rng.randbytes(e.length)
            content[e.offset : e.end] = chunk
            f.seek(e.offset)
            f.write(chunk)
    return path, bytes(content)


# -- file -----------------------------------------------------------------------------------


def test_file_source_maps_holes_and_reads_exactly(sparse: tuple[Path, bytes]) -> None:
    path, content = sparse
    src = FileSource(path)
    try:
        assert src.size == 8 * MiB and src.name == str(path)
        assert tuple(src.data_extents()) == merge(DATA)
        for off, n in ((0, 4096), (3 * MiB - 100, 300), (7 * MiB, 2 * 4096 + 4096)):
            assert src.read(off, n) == content[off : off + n]
        stream = SourceStream(src, page=4096, pages=2)
        stream.seek(3 * MiB + 10)
        assert stream.read(20000) == content[3 * MiB + 10 : 3 * MiB + 20010]
        stream.seek(-5, os.SEEK_END)
        assert stream.read(100) == content[-5:]
    finally:
        src.close()


def test_file_source_short_read_is_a_transport_error(sparse: tuple[Path, bytes]) -> None:
    path, _ = sparse
    src = FileSource(path)
    try:
        with pytest.raises(TransportError, match="ended at"):
            src.read(8 * MiB - 10, 100)
        os.truncate(path, 4 * MiB)  # shrunk while being backed up
        with pytest.raises(TransportError, match="truncated during the backup"):
            src.read(5 * MiB, 4096)
    finally:
        src.close()


def test_file_source_refuses_what_is_not_a_file_or_block_device(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="neither a regular file nor a block device"):
        FileSource(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TransportError, match="neither a regular file nor a block device"):
        FileSource(fifo)  # must not hang waiting for a writer
    with pytest.raises(TransportError, match="cannot open"):
        FileSource(tmp_path / "missing.img")


def test_file_source_on_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    src = FileSource(tmp_path / "empty")
    assert src.size == 0 and list(src.data_extents()) == []
    src.close()


# -- nbd ------------------------------------------------------------------------------------


def test_nbd_source_block_status_matches_the_file_holes(
    guest_images: Mapping[str, GuestImage], nbd_export: Callable[[Path], str]
) -> None:
    path = guest_images["gpt"].path
    src = NbdSource(uri=nbd_export(path))
    try:
        size = path.stat().st_size
        assert src.size == size
        holes = merge(Extent(o, n) for o, n in file_holes(path))
        assert merge(src.data_extents()) == complement(holes, size)
        rng = random.Random(3)
        with path.open("rb") as f:
            for ext in [*file_data(path)[:5], Extent(size - 4096, 4096)]:
                off = ext.offset + rng.randrange(0, max(1, ext.length - 65536))
                n = min(65536, ext.end - off)
                f.seek(off)
                assert src.read(off, n) == f.read(n)
            f.seek(0)
            assert src.read(0, 40 * MiB) == f.read(40 * MiB)  # more than one NBD request
    finally:
        src.close()


def test_nbd_source_errors(
    sparse: tuple[Path, bytes], nbd_export: Callable[[Path], str], tmp_path: Path
) -> None:
    path, content = sparse
    src = NbdSource(uri=nbd_export(path))
    try:
        assert src.read(3 * MiB, 4096) == content[3 * MiB : 3 * MiB + 4096]
        with pytest.raises(TransportError, match="past the end"):
            src.read(8 * MiB - 10, 100)
    finally:
        src.close()
    with pytest.raises(TransportError, match="cannot connect to NBD server"):
        NbdSource(uri=f"nbd+unix:///?socket={tmp_path}/none.sock")
    with pytest.raises(TransportError, match="cannot connect to NBD server"):
        NbdSource(command=["false"])
    # A server started as a command (the --nbd-command case) serves the same bytes.
    cmd = NbdSource(command=["nbdkit", "-s", "--exit-with-parent", "-r", "file", str(path)])
    try:
        assert merge(cmd.data_extents()) == merge(DATA)
        assert cmd.read(7 * MiB, 3 * 4096) == content[7 * MiB : 7 * MiB + 3 * 4096]
    finally:
        cmd.close()


# -- http (against the bed) -----------------------------------------------------------------


def _disk_ref(**kw: object) -> DiskRef:
    base = DiskRef(
        2000, "Hard disk 1", MiB, "[ds1] vm/vm.vmdk", "u", None, "persistent", "flat", "ds1"
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_http_location_refuses_what_http_cannot_read() -> None:
    with pytest.raises(TransportError, match="delta disk"):
        http_location(None, _disk_ref(file_name="[ds1] vm/vm-000001.vmdk"), "DC0", "VMFS")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="sparse or delta"):
        http_location(None, _disk_ref(backing="sparse"), "DC0", "VMFS")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="vSAN"):
        http_location(None, _disk_ref(), "DC0", "vsan")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="vVols"):
        http_location(None, _disk_ref(), "DC0", "VVOL")  # type: ignore[arg-type]


@pytest.mark.vsphere
def test_http_source_reads_the_frozen_snapshot_disk(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    sparse: tuple[Path, bytes],
    tmp_path: Path,
) -> None:
    vm_info = fresh_vm()
    image, content = sparse
    disk = plugin_bed.control.attach_disk(vm_info.name, image)
    endpoint = Endpoint(
        plugin_bed.host,
        plugin_bed.user,
        plugin_bed.password,
        TlsTrust(normalize_thumbprint(plugin_bed.thumbprint_sha256)),
    )
    with VCenter(endpoint) as vc:
        vm = next(v for v in list_vms(vc) if v.moref == vm_info.moref)
        snap = snapshots.create(vc, vm, quiesce=False)
        try:
            # The guest goes on writing; the snapshot's disk keeps the old bytes.
            plugin_bed.control.guest_write(vm.name, disk.key, 3 * MiB, b"\xee" * 65536)
            frozen = snap.disks[0]
            loc = http_location(vc, frozen, vm.datacenter, "VMFS")
            src = HttpSource(loc, frozen.capacity)
            try:
                assert src.size == len(content)
                assert src.data_extents() == [Extent(0, len(content))]
                assert src.read(0, len(content)) == content
                assert src.read(3 * MiB, 65536) == content[3 * MiB : 3 * MiB + 65536]
                # read_into (the copy engine's path) gives the same bytes as read, in a
                # reused buffer, from any thread (each keeps its own connection).
                for offset, length in [(MiB - 3, 5 * MiB + 7), (0, 4096), (7 * MiB, MiB)]:
                    buf = bytearray(length)
                    src.read_into(offset, memoryview(buf))
                    assert buf == content[offset : offset + length] == src.read(offset, length)
                with ThreadPoolExecutor(3) as pool:
                    parts = pool.map(lambda k: src.read(k * MiB, MiB), range(8))
                    assert b"".join(parts) == content
                with pytest.raises(TransportError, match=r"answered 416|with 0 bytes|answered"):
                    src.read(len(content), 4096)
            finally:
                src.close()
            with pytest.raises(SourceChanged, match="bytes, the disk is"):
                HttpSource(loc, frozen.capacity + MiB)
            wrong = replace(loc, url=loc.url.replace("-flat.vmdk", "-gone-flat.vmdk"))
            with pytest.raises(TransportError, match=r"404.*snapshot still exists"):
                HttpSource(wrong, frozen.capacity)
            bad_cookie = replace(loc, cookie="vmware_soap_session=forged")
            # vcsim's /folder does not check the session (tests/README.md), so a forged
            # cookie cannot be refused here; the source must at least not crash on it.
            HttpSource(bad_cookie, frozen.capacity).close()
        finally:
            snapshots.remove(vc, snap.snapshot.moref, "cleanup")
