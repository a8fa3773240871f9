"""Copy-on-write overlays: merged reads, read-modify-write, persistence order, and a real
writable FUSE mount (`vmaccel mount --writable`) that never touches the repository."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fusemount.conftest import MakeRepo, MiB, Mounted, backup_image, needs_fuse
from vmaccel.cli.app import main
from vmaccel.fusemount.overlay import BLOCK, Overlay, OverlayError, OverlayImage, OverlaySet
from vmaccel.vocabulary.errors import DamageError

MountFn = Callable[..., Mounted]


class BytesImage:
    """An in-memory ImageStream; ``damaged`` blocks raise like a damaged chunk."""

    def __init__(self, data: bytes, damaged: frozenset[int] = frozenset()) -> None:
        self.data, self.damaged, self.closed = data, damaged, False

    @property
    def size(self) -> int:
        return len(self.data)

    def read_into(self, offset: int, buf: memoryview) -> int:
        piece = self.data[offset : offset + len(buf)]
        if any(b // BLOCK in self.damaged for b in range(offset, offset + len(piece), 4096)):
            raise DamageError(f"damaged chunk under byte {offset}")
        buf[: len(piece)] = piece
        return len(piece)

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        yield 0, len(self.data), True

    def close(self) -> None:
        self.closed = True


def read_all(img: OverlayImage, chunk: int = 300_000) -> bytes:
    out = bytearray(img.size)
    for off in range(0, img.size, chunk):
        n = img.read_into(off, memoryview(out)[off : off + chunk])
        assert n == min(chunk, img.size - off)
    return bytes(out)


def test_writes_merge_over_the_image(tmp_path: Path) -> None:
    rnd = random.Random(1)
    base = rnd.randbytes(2 * MiB + 1000)  # not a whole number of blocks
    expect = bytearray(base)
    overlays = OverlaySet(tmp_path / "ovl", "repo-1")
    img = OverlayImage(BytesImage(base), overlays, 7)
    assert read_all(img) == base and not list((tmp_path / "ovl").glob("image-*"))
    for _ in range(200):
        off = rnd.randrange(0, len(base) - 1)
        data = rnd.randbytes(rnd.randint(1, min(200_000, len(base) - off)))
        assert img.write(off, data) == len(data)
        expect[off : off + len(data)] = data
    assert read_all(img) == expect
    with pytest.raises(OSError) as e:
        img.write(len(base) - 10, b"x" * 11)
    assert e.value.errno == errno.EFBIG
    img.close()  # syncs
    overlays.close()  # not kept: gone
    assert os.listdir(tmp_path / "ovl") == []


def test_partial_write_copies_the_block_and_damage_fails_the_write(tmp_path: Path) -> None:
    base = bytes(range(256)) * (4 * BLOCK // 256)
    overlays = OverlaySet(tmp_path / "ovl", "r")
    img = OverlayImage(BytesImage(base, damaged=frozenset({2})), overlays, 1)
    img.write(BLOCK + 10, b"AB")
    got = bytearray(BLOCK)
    img.read_into(BLOCK, memoryview(got))
    assert got == base[BLOCK : BLOCK + 10] + b"AB" + base[BLOCK + 12 : 2 * BLOCK]
    with pytest.raises(DamageError):
        img.write(2 * BLOCK + 5, b"x")  # needs the damaged block: refused, nothing written
    img.write(2 * BLOCK, b"y" * BLOCK)  # a whole block needs no copy: fine
    got = bytearray(BLOCK)
    img.read_into(2 * BLOCK, memoryview(got))
    assert got == b"y" * BLOCK
    overlays.close()


def test_persistence_order_and_reuse(tmp_path: Path) -> None:
    d = tmp_path / "ovl"
    d.mkdir()
    base = BytesImage(bytes(4 * BLOCK))
    ov = Overlay(d, 3, "repo/3", base.size)
    ov.write(base, 100, b"hello")
    assert not (d / "image-3.bitmap").exists()  # bits reach disk only at sync
    ov.sync()
    ov.write(base, 3 * BLOCK, b"unsynced")
    os.close(ov._fd)  # a crash: no sync, no close
    again = Overlay(d, 3, "repo/3", base.size)
    buf = bytearray(4 * BLOCK)
    again.read_into(base, 0, memoryview(buf))
    assert buf[100:105] == b"hello" and buf[3 * BLOCK : 3 * BLOCK + 8] == bytes(8)
    again.close(keep=True)
    with pytest.raises(OverlayError, match="another image"):
        Overlay(d, 3, "other-repo/3", base.size)
    (d / "image-3.bitmap").unlink()  # data without a bitmap: nothing was synced
    fresh = Overlay(d, 3, "repo/3", base.size)
    fresh.read_into(base, 0, memoryview(buf))
    assert buf == bytes(4 * BLOCK)
    fresh.close(keep=False)


def test_overlay_dir_is_exclusive(tmp_path: Path) -> None:
    first = OverlaySet(tmp_path / "ovl", "r")
    with pytest.raises(OverlayError, match="in use"):
        OverlaySet(tmp_path / "ovl", "r")
    first.close()
    OverlaySet(tmp_path / "ovl", "r").close()


def dir_digest(root: Path) -> str:
    """Every file of a repository (packs, index, config), but the empty lock files that any
    reader creates (readers.lock)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.name.endswith(".lock"):
            assert p.stat().st_size == 0, p
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def latest(mnt: Path) -> Path:
    return mnt / "vm" / os.readlink(mnt / "vm" / "latest")


def random_writes(path: Path, expect: bytearray, seed: int, count: int = 300) -> None:
    rnd = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(count):
            off = rnd.randrange(0, len(expect) - 1)
            data = rnd.randbytes(rnd.randint(1, min(3 * BLOCK, len(expect) - off)))
            assert os.pwrite(fd, data, off) == len(data)
            expect[off : off + len(data)] = data
        os.fsync(fd)
    finally:
        os.close(fd)


@needs_fuse
@pytest.mark.fuse
def test_writable_mount(make_repo: MakeRepo, mount_repo: MountFn, tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(random.Random(3).randbytes(4 * MiB))
    repo = make_repo()
    backup_image(repo, "vm", {"disk0": source})
    before = dir_digest(repo)
    ovl = tmp_path / "overlay"
    m = mount_repo(repo, "--writable", str(ovl))
    d = latest(m.path)
    expect = bytearray(source.read_bytes())
    random_writes(d / "disk0.raw", expect, seed=1)
    random_writes(d / "disk0-flat.vmdk", expect, seed=2)  # same disk, same overlay
    assert (d / "disk0.raw").read_bytes() == expect
    assert (d / "disk0-flat.vmdk").read_bytes() == expect
    assert sorted(os.listdir(ovl)) == [".lock", "image-1.bitmap", "image-1.data"]
    (tmp_path / "expected.raw").write_bytes(expect)
    compare = subprocess.run(["qemu-img", "compare", str(d / "disk0.vmdk"),
                              str(tmp_path / "expected.raw")], capture_output=True, text=True)
    assert compare.returncode == 0 and "Images are identical" in compare.stdout, compare.stderr
    for name, flags, code in [("disk0.vmdk", os.O_RDWR, errno.EROFS),
                              ("vm.json", os.O_WRONLY, errno.EROFS),
                              ("disk0.raw", os.O_RDWR | os.O_TRUNC, errno.EPERM)]:
        with pytest.raises(OSError) as e:
            os.open(d / name, flags)
        assert e.value.errno == code, name
    with pytest.raises(OSError) as e:
        os.truncate(d / "disk0.raw", MiB)
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        (d / "new-file").write_bytes(b"x")
    assert e.value.errno in (errno.EROFS, errno.ENOSYS, errno.EACCES)
    assert (d / "disk0.raw").stat().st_size == 4 * MiB
    assert main(["umount", str(m.path)]) == 0
    assert m.proc.wait(timeout=15) == 0, m.output()
    assert os.listdir(ovl) == []  # discarded at unmount
    assert dir_digest(repo) == before  # the repository never changed


@needs_fuse
@pytest.mark.fuse
def test_keep_overlay(make_repo: MakeRepo, mount_repo: MountFn, tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    source.write_bytes(random.Random(4).randbytes(MiB))
    repo = make_repo()
    backup_image(repo, "vm", {"disk0": source})
    before = dir_digest(repo)
    ovl = tmp_path / "overlay"
    m = mount_repo(repo, "--writable", str(ovl), "--keep-overlay", name="one")
    expect = bytearray(source.read_bytes())
    random_writes(latest(m.path) / "disk0.raw", expect, seed=5, count=50)
    assert main(["umount", str(m.path)]) == 0
    assert m.proc.wait(timeout=15) == 0, m.output()
    assert sorted(os.listdir(ovl)) == [".lock", "image-1.bitmap", "image-1.data"]
    again = mount_repo(repo, "--writable", str(ovl), name="two")  # picks the overlay up
    assert (latest(again.path) / "disk0.raw").read_bytes() == expect
    plain = mount_repo(repo, name="three")  # a read-only mount shows the backup
    assert (latest(plain.path) / "disk0.raw").read_bytes() == source.read_bytes()
    assert main(["umount", str(again.path)]) == 0
    assert again.proc.wait(timeout=15) == 0, again.output()
    assert os.listdir(ovl) == []  # that mount did not keep it
    assert main(["umount", str(plain.path)]) == 0
    assert plain.proc.wait(timeout=15) == 0, plain.output()
    assert dir_digest(repo) == before
    assert main(["mount", "--repo", str(repo), str(tmp_path), "--keep-overlay"]) == 2
