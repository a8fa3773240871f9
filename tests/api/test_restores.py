"""Restores through the API: tasks with progress watched as server-sent events, results
equal to the guest's files, the CLI's rules for targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from testbed.guestimages.model import GuestImage
from tests.api.conftest import Api


def _events(api: Api, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a task's stream, until the server ends it (the task finished)."""
    got = api.call("GET", f"/restores/{task_id}/events", "read", stream=True)
    assert got.status_code == 200
    assert got.headers["Content-Type"].startswith("text/event-stream")
    out, kind = [], ""
    for line in got.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((kind, json.loads(line.removeprefix("data: "))))
    return out


def test_a_folder_restored_through_the_api_equals_the_guest_folder(
    api: Api, gpt_image: GuestImage, tmp_path: Path
) -> None:
    to = tmp_path / "restored"
    started = api.call(
        "POST",
        "/restores/files",
        "restore",
        json={"backup": "vm1@latest", "paths": ["p1/logs"], "to": str(to)},
    )
    assert started.status_code == 202
    task = started.json()
    assert task["state"] in ("queued", "running") and task["kind"] == "restore-files"
    events = _events(api, task["id"])
    final = events[-1][1]
    assert final["state"] == "succeeded", final
    assert final["result"]["failed"] == [] and final["result"]["files"] > 0
    want = {
        p: f
        for p, f in gpt_image.volume("esp").files.items()
        if p.startswith("logs/") and f.kind == "file"
    }
    assert want
    for path, expect in want.items():
        data = (to / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == expect.sha256, path
    shown = api.call("GET", f"/restores/{task['id']}", "read").json()
    assert shown == final


def test_a_disk_restore_reports_progress(api: Api, gpt_image: GuestImage, tmp_path: Path) -> None:
    to = tmp_path / "disk0.raw"
    started = api.call(
        "POST", "/restores/disk", "restore", json={"backup": "1", "disk": "disk0", "to": str(to)}
    )
    assert started.status_code == 202
    events = _events(api, started.json()["id"])
    states = [e["state"] for _, e in events]
    assert states[-1] == "succeeded", events[-1]
    done = [e["done"] for _, e in events]
    assert done == sorted(done) and done[-1] == gpt_image.size == events[-1][1]["total"]
    assert to.stat().st_size == gpt_image.size
    # The first MiB holds the partition table: the restored bytes are the image's.
    with gpt_image.path.open("rb") as src, to.open("rb") as dst:
        assert src.read(1 << 20) == dst.read(1 << 20)


def test_targets_follow_the_cli_rules(api: Api, tmp_path: Path) -> None:
    relative = api.call(
        "POST",
        "/restores/disk",
        "restore",
        json={"backup": "1", "disk": "disk0", "to": "relative/disk.raw"},
    )
    assert relative.status_code == 400
    assert "absolute" in relative.json()["error"]["message"]
    # An existing file is replaced only when asked: the task fails, the file stays.
    existing = tmp_path / "keep.raw"
    existing.write_bytes(b"mine")
    started = api.call(
        "POST",
        "/restores/disk",
        "restore",
        json={"backup": "1", "disk": "disk0", "to": str(existing)},
    ).json()
    final = _events(api, started["id"])[-1][1]
    assert final["state"] == "failed" and final["error"]["status"] == 409, final
    assert existing.read_bytes() == b"mine"
    # Guest paths that climb are refused before anything is written.
    climbing = api.call(
        "POST",
        "/restores/files",
        "restore",
        json={"backup": "1", "paths": ["p1/../p2"], "to": str(tmp_path / "x")},
    )
    final = _events(api, climbing.json()["id"])[-1][1]
    assert final["state"] == "failed" and final["error"]["type"] == "UsageError"
    assert not (tmp_path / "x").exists()
    unknown = api.call("GET", "/restores/no-such-task", "read")
    assert unknown.status_code == 404
