"""The NFS export manager (nfs-ganesha): configuration, start with the first export, reload
on adding and removing one (the others keep serving), stop with the last; read and write
through a user-space NFS client."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from testbed.vsphere.nas import NfsClient, NfsError
from vmaccel.plugin.nfsexport import Export, ExportServer, ExportSettings
from vmaccel.plugin.nfsexport.server import render_config

needs_ganesha = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ganesha.nfsd") is None, reason="needs root and ganesha")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_exports_each_path_to_its_one_client(tmp_path: Path) -> None:
    settings = ExportSettings(tmp_path, "127.0.0.1", 12049, 12050)
    text = render_config(settings, [Export(1, Path("/a b"), "10.0.0.5"), Export(2, Path("/c"),
                                                                              "10.0.0.6")])
    assert "Protocols = 3;" in text and "Enable_UDP = false;" in text
    assert "NFS_Port = 12049;" in text and "MNT_Port = 12050;" in text
    assert 'Path = "/a b";' in text and "Clients = 10.0.0.5; Access_Type = RW;" in text
    assert text.count("Squash = No_Root_Squash;") == 2
    assert "Filesystem_id = 30317.1;" in text and "Filesystem_id = 30317.2;" in text
    assert text.count("Access_Type = None;") == 2  # nobody but the named client


@needs_ganesha
def test_exports_come_and_go_while_the_others_serve(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "f").write_bytes(d.name.encode() * 1000)
    ports = _free_port(), _free_port()
    server = ExportServer(ExportSettings(tmp_path / "state", "127.0.0.1", *ports))
    first = server.add(one, "127.0.0.1")
    try:
        assert server.add(one, "127.0.0.1") == first  # idempotent
        pid = server.pid()
        second = server.add(two, "127.0.0.1")
        assert server.pid() == pid  # reloaded, not restarted
        with NfsClient("127.0.0.1", str(one), *ports) as nfs:
            assert nfs.read("f") == b"one" * 1000
            nfs.write("f", 3, b"ONE")
        assert (one / "f").read_bytes()[:6] == b"oneONE"
        assert server.remove(second.id)
        with pytest.raises(NfsError):
            NfsClient("127.0.0.1", str(two), *ports)
        with NfsClient("127.0.0.1", str(one), *ports) as nfs:
            assert nfs.listdir() == ["f"]
    finally:
        server.remove_path(one)
        server.remove_path(two)
    assert server.pid() is None and server.exports() == []
