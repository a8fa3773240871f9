"""Guest files over HTTPS: the tree of a backup as the image's manifest has it, downloads
equal to the guest's files (whole and by Range), the file catalog."""

from __future__ import annotations

import hashlib

import pytest

from testbed.guestimages.model import GuestImage
from tests.api.conftest import VM, Api

VOLUME, SHOWN = "esp", "p1"  # the gpt image's FAT volume, as the tree names it
BIG = "blobs/blob-5.bin"


def _guest_bytes(api: Api, path: str, headers: dict[str, str] | None = None) -> bytes:
    got = api.call(
        "GET",
        f"/backups/{VM}@latest/download",
        "read",
        params={"path": path},
        headers=headers or {},
    )
    assert got.status_code in (200, 206), got.text
    assert int(got.headers["Content-Length"]) == len(got.content)
    return got.content


def test_every_file_of_a_volume_downloads_equal_to_the_guest_file(
    api: Api, gpt_image: GuestImage
) -> None:
    files = {p: f for p, f in gpt_image.volume(VOLUME).files.items() if f.kind == "file"}
    assert len(files) > 20
    for path, expect in sorted(files.items()):
        data = _guest_bytes(api, f"{SHOWN}/{path}")
        assert len(data) == expect.size, path
        assert hashlib.sha256(data).hexdigest() == expect.sha256, path


def test_ranges(api: Api, gpt_image: GuestImage) -> None:
    expect = gpt_image.volume(VOLUME).files[BIG]
    whole = _guest_bytes(api, f"{SHOWN}/{BIG}")
    assert hashlib.sha256(whole).hexdigest() == expect.sha256
    size = len(whole)
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=1000-": (1000, size - 1),
        "bytes=-500": (size - 500, size - 1),
        f"bytes=100000-{size + 5000}": (100000, size - 1),  # clipped at the end
    }
    for header, (first, last) in cases.items():
        got = api.call(
            "GET",
            "/backups/1/download",
            "read",
            params={"path": f"{SHOWN}/{BIG}"},
            headers={"Range": header},
        )
        assert got.status_code == 206, header
        assert got.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert got.content == whole[first : last + 1], header
    beyond = api.call(
        "GET",
        "/backups/1/download",
        "read",
        params={"path": f"{SHOWN}/{BIG}"},
        headers={"Range": f"bytes={size}-"},
    )
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"
    several = api.call(
        "GET",
        "/backups/1/download",
        "read",
        params={"path": f"{SHOWN}/{BIG}"},
        headers={"Range": "bytes=0-1,5-6"},
    )
    assert several.status_code == 200 and several.content == whole


def test_the_tree_lists_what_the_guest_holds(api: Api, gpt_image: GuestImage) -> None:
    root = api.call("GET", "/backups/1/files", "read").json()
    assert root["path"] == "" and root["vm"] == VM
    assert SHOWN in {e["name"] for e in root["entries"]}
    files = gpt_image.volume(VOLUME).files
    top = {p.split("/", 1)[0] for p in files}
    listed = api.call("GET", "/backups/1/files", "read", params={"path": SHOWN}).json()
    assert {e["name"] for e in listed["entries"]} == top
    assert listed["total"] == len(top)
    page = api.call(
        "GET", "/backups/1/files", "read", params={"path": SHOWN, "offset": 1, "limit": 2}
    ).json()
    assert [e["name"] for e in page["entries"]] == [e["name"] for e in listed["entries"]][1:3]
    one = api.call("GET", "/backups/1/files", "read", params={"path": f"{SHOWN}/{BIG}"}).json()
    assert one["entry"]["kind"] == "file" and one["entry"]["size"] == files[BIG].size
    assert one["entries"] == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{SHOWN}/nothing-here", 404),
        (f"{SHOWN}/../{SHOWN}/README.txt", 400),  # never resolved
        (f"{SHOWN}/blobs", 400),  # a directory is no file to download
        (BIG, 400),  # several volumes hold it: name the volume
    ],
)
def test_bad_paths_are_refused_as_json(api: Api, path: str, status: int) -> None:
    got = api.call("GET", "/backups/1/download", "read", params={"path": path})
    assert got.status_code == status, got.text
    assert got.json()["error"]["status"] == status


def test_search_diff_and_history_come_from_the_file_catalog(api: Api) -> None:
    hits = api.call("GET", "/files/search", "read", params={"pattern": "blob-5.bin"}).json()
    assert {h["backup_id"] for h in hits} == {1, 2}
    diff = api.call("GET", "/files/diff", "read", params={"a": "1", "b": "2"}).json()
    assert diff["a"]["backup_id"] == 1 and diff["b"]["backup_id"] == 2
    assert all(v["status"] in ("identical", "compared") for v in diff["volumes"])
    history = api.call("GET", "/files/history", "read", params={"path": "/README.txt"}).json()
    assert history["events"] and {e["change"] for e in history["events"]} == {"appeared"}
