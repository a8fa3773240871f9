"""The object store contract (vmaccel.catalog.objectstore), run against every implementation
(the directory store, and the S3 store on SeaweedFS), then what the directory store promises
on top: modes, layout, zero-copy commits and crash behaviour."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.s3server import SeaweedServer
from vmaccel.catalog.localstore import LocalObjectStore
from vmaccel.catalog.objectstore import ObjectExists, ObjectMissing, ObjectStore
from vmaccel.catalog.readcache import ReadCache
from vmaccel.catalog.s3client import S3Location
from vmaccel.catalog.s3store import S3ObjectStore
from vmaccel.vocabulary.errors import DamageError

ROOT = Path(__file__).resolve().parents[2]
DATA = bytes(range(256)) * 1024  # 256 KiB, every offset distinguishable


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    made: ObjectStore
    if request.param == "s3":  # SeaweedFS, packs read through a small read cache
        server: SeaweedServer = request.getfixturevalue("s3")
        where = S3Location(server.bucket(), "repo/", server.endpoint)
        made = S3ObjectStore(where, tmp_path / "staging", cache=ReadCache(tmp_path / "c", 1 << 20))
    else:
        local = made = LocalObjectStore(tmp_path / "repo")
        local.make_layout(("packs/", "backups/"))
    try:
        yield made
    finally:
        made.close()


def _stage(store: ObjectStore, key: str, data: bytes) -> None:
    upload = store.stage(key)
    try:
        upload.stream.write(data)
        upload.commit()
    except BaseException:
        upload.abort()
        raise


# -- the contract ---------------------------------------------------------------------------


def test_put_then_whole_and_ranged_gets(store: ObjectStore) -> None:
    store.put("backups/b1", DATA)
    assert store.get("backups/b1") == DATA
    assert store.get("backups/b1", 1000) == DATA[1000:]
    assert store.get("backups/b1", 4097, 300) == DATA[4097:4397]
    # fewer bytes only where the object ends; none past its end
    assert store.get("backups/b1", len(DATA) - 10, 100) == DATA[-10:]
    assert store.get("backups/b1", len(DATA) + 5, 10) == b""
    info = store.stat("backups/b1")
    assert (info.key, info.size) == ("backups/b1", len(DATA))


def test_put_if_absent_refuses_to_overwrite(store: ObjectStore) -> None:
    store.put("config", b"first")
    with pytest.raises(ObjectExists, match="config exists already") as caught:
        store.put("config", b"second")
    assert isinstance(caught.value, FileExistsError)
    assert store.get("config") == b"first"
    store.put("config", b"second", replace=True)  # the one explicit, atomic overwrite
    assert store.get("config") == b"second"


def test_staged_upload_is_invisible_until_commit(store: ObjectStore) -> None:
    upload = store.stage("packs/ab/ab01")
    upload.stream.write(DATA[:5000])
    with pytest.raises(ObjectMissing):
        store.stat("packs/ab/ab01")
    assert [i.key for i in store.list_prefix("packs/")] == []
    staged = store.staged()
    assert [s.name for s in staged] == ["ab01"]
    upload.stream.write(DATA[5000:])
    upload.commit()
    assert store.get("packs/ab/ab01", 7, 11) == DATA[7:18]
    assert store.staged() == []


def test_upload_commit_refuses_an_existing_key(store: ObjectStore) -> None:
    _stage(store, "packs/cd/cd01", b"original")
    upload = store.stage("packs/cd/cd01")
    upload.stream.write(b"intruder")
    with pytest.raises(ObjectExists):
        upload.commit()
    upload.abort()
    assert store.get("packs/cd/cd01") == b"original"
    assert store.staged() == []


def test_abort_and_discard_leave_nothing(store: ObjectStore) -> None:
    upload = store.stage("packs/ef/ef01")
    upload.stream.write(DATA)
    upload.abort()
    upload.abort()  # idempotent
    assert store.staged() == []
    left = store.stage("packs/ef/ef02")
    left.stream.write(b"half")
    left.stream.flush()
    (found,) = store.staged()  # a writer that died here left this
    assert (found.name, found.size) == ("ef02", 4)
    store.discard_staged(found.name)
    store.discard_staged(found.name)  # gone already: no error
    assert store.staged() == []
    with pytest.raises(ObjectMissing):
        store.get("packs/ef/ef02")


def test_list_by_prefix_is_sorted_with_sizes_and_times(store: ObjectStore) -> None:
    for key, data in [
        ("packs/bb/bb02", b"22"),
        ("packs/aa/aa01", b"1"),
        ("backups/u1", b"333"),
        ("packsx", b"4444"),
    ]:
        store.put(key, data)
    listed = list(store.list_prefix("packs/"))
    assert [(i.key, i.size) for i in listed] == [("packs/aa/aa01", 1), ("packs/bb/bb02", 2)]
    assert all(i.mtime == store.stat(i.key).mtime for i in listed)
    assert [i.key for i in store.list_prefix("packs")] == [
        "packs/aa/aa01",
        "packs/bb/bb02",
        "packsx",
    ]
    assert [i.key for i in store.list_prefix("packs/b")] == ["packs/bb/bb02"]
    assert list(store.list_prefix("nothing/")) == []


def test_delete_is_durable_and_idempotent(store: ObjectStore) -> None:
    store.put("backups/u2", b"manifest")
    assert store.get("backups/u2", 0, 3) == b"man"  # a cached reader of the old object
    store.delete("backups/u2")
    store.delete("backups/u2")
    store.delete("never/was")
    with pytest.raises(ObjectMissing) as caught:
        store.get("backups/u2", 0, 3)
    assert isinstance(caught.value, DamageError) and caught.value.exit_code == 6
    assert isinstance(caught.value, FileNotFoundError)
    store.put("backups/u2", b"MANIFEST")  # a new object under the same key reads as new
    assert store.get("backups/u2", 0, 3) == b"MAN"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "a/.tmp"])
def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x")


def test_missing_objects_raise_damage(store: ObjectStore) -> None:
    for call in (
        lambda: store.get("key"),
        lambda: store.get("packs/00/0001", 0, 1),
        lambda: store.stat("config"),
    ):
        with pytest.raises(ObjectMissing, match="is missing"):
            call()


def test_prefetch_is_only_a_hint(store: ObjectStore) -> None:
    """Ranges inside, across the end of and past an object, and a missing object: no error,
    and the reads after it return exactly the object's bytes."""
    _stage(store, "packs/ab/ab01", DATA)
    store.prefetch("packs/ab/ab01", 1000, 100_000)
    store.prefetch("packs/ab/ab01", len(DATA) - 10, 1 << 20)
    store.prefetch("packs/ab/ab01", len(DATA) + 4096, 4096)
    store.prefetch("packs/00/0001", 0, 4096)
    assert store.get("packs/ab/ab01", 1000, 100_000) == DATA[1000:101_000]
    assert store.get("packs/ab/ab01", len(DATA) - 10, 100) == DATA[-10:]
    assert store.get("packs/ab/ab01") == DATA
    with pytest.raises(ObjectMissing):
        store.get("packs/00/0001", 0, 1)


# -- the directory store --------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalObjectStore]:
    made = LocalObjectStore(tmp_path / "repo")
    made.make_layout(("packs/", "backups/"))
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_files_are_0600_and_directories_0700(local: LocalObjectStore, umask: int) -> None:
    old = os.umask(umask)
    try:
        local.put("backups/u1", b"m")
        local.put("config", b"{}")
        _stage(local, "packs/ab/ab01", b"pack")
        local.put("deep/er/still/x", b"y")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(local.root)): stat.S_IMODE(p.lstat().st_mode)
        for p in [local.root, *local.root.rglob("*")]
    }
    wanted = {k: 0o700 if (local.root / k).is_dir() else 0o600 for k in modes}
    wrong = {k: oct(m) for k, m in modes.items() if m != wanted[k]}
    assert wrong == {}
    assert {"packs/tmp", "packs/ab/ab01", "deep/er/still/x"} <= modes.keys()


def test_the_layout_of_existing_repositories(local: LocalObjectStore) -> None:
    local.put("backups/u1", b"m")
    _stage(local, "packs/ab/ab01", b"pack")
    assert (local.root / "backups" / "u1").read_bytes() == b"m"
    assert (local.root / "packs" / "ab" / "ab01").read_bytes() == b"pack"
    assert local.path("packs/ab/ab01") == local.root / "packs" / "ab" / "ab01"
    with pytest.raises(ValueError, match="staging area"):
        local.path("packs/tmp/ab01")
    # a half-written put's temp file and the staging area are never listed as objects
    (local.root / "backups" / ".u2.tmp").write_bytes(b"half")
    (local.root / "packs" / "tmp" / "cd01").write_bytes(b"half")
    assert [i.key for i in local.list_prefix("")] == ["backups/u1", "packs/ab/ab01"]


def _resident(path: Path, start: int, length: int) -> float:
    """The share of the pages of ``path``'s bytes ``start .. start + length`` that are in the
    page cache (mincore(2) of a read-only shared map)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    )
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page, size = mmap.PAGESIZE, path.stat().st_size
    pages = -(-size // page)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        vec = (ctypes.c_ubyte * pages)()
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    wanted = range(start // page, -(-(start + length) // page))
    return sum(vec[i] & 1 for i in wanted) / len(wanted)


def test_prefetch_reads_the_range_into_the_page_cache(local: LocalObjectStore) -> None:
    big = os.urandom(16 << 20)
    _stage(local, "packs/ab/ab02", big)
    path = local.path("packs/ab/ab02")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    finally:
        os.close(fd)
    if _resident(path, 0, len(big)) > 0.1:
        pytest.skip("this filesystem keeps the file's pages whatever the hint (tmpfs)")
    local.prefetch("packs/ab/ab02", 4 << 20, 6 << 20)
    deadline = time.monotonic() + 10
    while _resident(path, 4 << 20, 6 << 20) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _resident(path, 4 << 20, 6 << 20) == 1
    assert local.get("packs/ab/ab02", 4 << 20, 6 << 20) == big[4 << 20 : 10 << 20]


def test_commit_links_the_staged_file_without_copying(local: LocalObjectStore) -> None:
    upload = local.stage("packs/ab/ab01")
    upload.stream.write(DATA)
    upload.stream.flush()
    inode = os.stat(upload.path).st_ino
    assert upload.path == str(local.root / "packs" / "tmp" / "ab01")
    upload.commit()
    assert local.path("packs/ab/ab01").stat().st_ino == inode
    assert not Path(upload.path).exists()


def test_without_hard_links_put_if_absent_still_refuses(
    local: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # FAT, exFAT
    local.put("backups/u1", b"first")
    _stage(local, "packs/ab/ab01", b"pack")
    with pytest.raises(ObjectExists):
        local.put("backups/u1", b"second")
    assert local.get("backups/u1") == b"first"
    assert local.get("packs/ab/ab01") == b"pack"


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from vmaccel.catalog.localstore import LocalObjectStore

    root, how, key, die_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd)

    os.fsync = fsync
    store = LocalObjectStore(Path(root))
    data = bytes(range(256)) * 1024
    if how == "put":
        store.put(key, data)
    else:
        upload = store.stage(key)
        upload.stream.write(data)
        upload.commit()
    """
)


@pytest.mark.parametrize("how", ["put", "upload"])
@pytest.mark.parametrize("die_at", [1, 2], ids=["before-file-fsync", "before-dir-fsync"])
def test_a_put_killed_before_its_barrier_leaves_nothing_or_the_whole_object(
    local: LocalObjectStore, how: str, die_at: int
) -> None:
    key = "packs/ab/ab01" if how == "upload" else "backups/u1"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(local.root), how, key, str(die_at)],
        cwd=ROOT,
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    listed = [i.key for i in local.list_prefix("")]
    if die_at == 1:  # before the file was durable: it has no name yet
        assert listed == []
        with pytest.raises(ObjectMissing):
            local.get(key)
    else:  # named, its directory entry not yet durable: complete if it is there at all
        assert listed in ([], [key])
        if listed:
            assert local.get(key) == DATA
    # what the killed upload staged is garbage that gc can find; a put leaves none visible
    assert [s.name for s in local.staged()] == (["ab01"] if how == "upload" and die_at == 1 else [])
