"""A guest folder as a streamed zip (every file equal to the image's manifest, hostile
symlinks left out and named in the comment, pieces of at most about 1 MiB), and the tag
categories and tags of a registered vCenter read live from the bed's tagging API."""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.guestimages.model import GuestImage
from testbed.vsphere.bed import VmInfo, VsphereBed
from tests.api.conftest import VM, Api, serve_process
from tests.plugin.conftest import (
    Tagger,
    _fresh_vms,
    cli,
    config_dir,
    fresh_vm,
    new_repo,
    plugin_bed,
    tagger,
)
from tests.plugin.conftest import vcenter as vcenter
from vmaccel.service import guestzip, tokens
from vmaccel.service.context import Context

__all__ = ["_fresh_vms", "cli", "config_dir", "fresh_vm", "new_repo", "plugin_bed", "tagger"]

LINUX = "p2"  # the gpt image's linux volume, as the tree names it


def _zip(api: Api, path: str, **params: str) -> zipfile.ZipFile:
    got = api.call("GET", f"/backups/{VM}@latest/zip", "read", params={"path": path, **params})
    assert got.status_code == 200, got.text
    assert got.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in got.headers  # streamed (chunked), not built first
    return zipfile.ZipFile(io.BytesIO(got.content))


def _expected(image: GuestImage, volume: str, prefix: str) -> dict[str, str]:
    """member name below the top folder -> sha256, for the manifest's files under prefix."""
    files = image.volume(volume).files
    return {
        p[len(prefix) :]: f.sha256
        for p, f in files.items()
        if f.kind in ("file", "hardlink") and p.startswith(prefix)
    }


def test_a_whole_volume_zips_to_the_guest_files(api: Api, gpt_image: GuestImage) -> None:
    archive = _zip(api, LINUX, compress="false")
    names = archive.namelist()
    assert all(n.startswith(f"{LINUX}/") and ".." not in n.split("/") for n in names)
    want = _expected(gpt_image, "linux", "")
    assert len(want) > 40
    for path, sha in want.items():
        info = archive.getinfo(f"{LINUX}/{path}")
        with archive.open(info) as member:
            digest = hashlib.file_digest(member, "sha256").hexdigest()
        assert digest == sha, path
    big = archive.getinfo(f"{LINUX}/big/" + next(p for p in want if p.startswith("big/"))[4:])
    assert big.compress_type == zipfile.ZIP_STORED
    assert archive.testzip() is None


def test_hostile_symlinks_stay_out_and_are_named(api: Api, gpt_image: GuestImage) -> None:
    archive = _zip(api, f"{LINUX}/links")
    links = {
        i.filename: archive.read(i).decode()
        for i in archive.infolist()
        if stat.S_ISLNK(i.external_attr >> 16)
    }
    assert links == {
        "links/dangling": "does/not/exist",
        "links/deep-dir": "../l01/l02",
        "links/to-readme": "../README.txt",
    }
    assert archive.getinfo("links/hard-a.txt").compress_type == zipfile.ZIP_DEFLATED
    comment = archive.comment.decode()
    assert "skipped links/abs-passwd: absolute symlink target" in comment
    assert "skipped links/escape: symlink target escapes" in comment
    for path, sha in _expected(gpt_image, "linux", "links/").items():
        assert hashlib.sha256(archive.read(f"links/{path}")).hexdigest() == sha


def test_a_file_or_nothing_is_refused(api: Api) -> None:
    for path, status in (("", 400), (f"{LINUX}/README.txt", 400), (f"{LINUX}/nope", 404)):
        got = api.call("GET", "/backups/1/zip", "read", params={"path": path})
        assert got.status_code == status, (path, got.text)
        assert got.json()["error"]["message"]
    assert api.call("GET", "/backups/1/zip", params={"path": LINUX}).status_code == 401


def test_pieces_stay_small_whatever_the_folder_size(api: Api) -> None:
    """The generator never holds a file: every piece is at most a read buffer (1 MiB) plus
    headers, also through the 50 MiB file of big/."""
    largest, total = 0, 0
    with guestzip.open_guest_folder(api.ctx, f"{VM}@latest", f"{LINUX}/big") as folder:
        for piece in guestzip.zip_pieces(folder, compress=False):
            largest, total = max(largest, len(piece)), total + len(piece)
        assert folder.bytes >= 50 << 20 and not folder.skipped
    assert total > 50 << 20
    assert largest <= guestzip.PIECE + 4096


@pytest.mark.vsphere
def test_tags_of_a_vcenter_are_listed_live(
    plugin_bed: VsphereBed,
    fresh_vm: Callable[[], VmInfo],
    tagger: Tagger,
    vcenter: str,
    new_repo: Callable[[str], Path],
    config_dir: Path,
    tmp_path: Path,
) -> None:
    spec = tagger.tag(fresh_vm().moref, "zip-silver")
    ctx = Context(repo=new_repo("repo"), config_dir=config_dir)
    secret = tokens.create_token(ctx, "read", "tags").secret
    with serve_process(ctx, tmp_path / "serve.log") as info:
        api = Api(info, ctx.require_repo(), ctx, {"read": secret})
        found = api.call("GET", "/vcenters", "read")
        assert found.status_code == 200, found.text
        assert [v["name"] for v in found.json()] == [vcenter]
        assert plugin_bed.password not in found.text
        got = api.call("GET", f"/vcenters/{vcenter}/tags", "read")
        assert got.status_code == 200, got.text
        doc = got.json()
        backup = {c["name"]: c for c in doc["categories"]}["backup"]
        assert backup["cardinality"] == "MULTIPLE"
        assert spec in [t["spec"] for t in backup["tags"]]
        assert all(t["id"] for t in backup["tags"])
        missing = api.call("GET", "/vcenters/nope/tags", "read")
        assert missing.status_code == 404
        assert "no vCenter named 'nope'" in missing.json()["error"]["message"]
        log = (tmp_path / "serve.log").read_text()
        assert f"web console on {info.url}/console/" in log
