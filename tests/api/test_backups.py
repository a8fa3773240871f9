"""VMs and backups over HTTPS: paging, order, filters, the same records as the CLI's."""

from __future__ import annotations

from tests.api.conftest import VM, Api
from vmaccel.service import backups


def test_vms_and_their_restore_points(api: Api) -> None:
    (vm,) = api.call("GET", "/vms", "read").json()
    assert vm["vm"] == VM and vm["restore_points"] == 2 and vm["latest_id"] == 2
    assert vm["first"] <= vm["latest"]
    page = api.call("GET", f"/vms/{VM}/restore-points", "read", params={"limit": 1}).json()
    assert page["total"] == 2 and [b["id"] for b in page["items"]] == [2]
    assert api.call("GET", "/vms/nobody/restore-points", "read").json()["total"] == 0


def test_backups_paged_filtered_and_as_the_cli_shows_them(api: Api) -> None:
    newest = api.call("GET", "/backups", "read").json()
    assert newest["total"] == 2 and [b["id"] for b in newest["items"]] == [2, 1]
    cli = [b.to_dict() for b in backups.list_backups(api.ctx)]
    assert list(reversed(newest["items"])) == cli  # the same documents as `backups list --json`
    oldest = api.call("GET", "/backups", "read", params={"order": "oldest", "offset": 1}).json()
    assert [b["id"] for b in oldest["items"]] == [2]
    first = newest["items"][1]["started"]
    later = api.call("GET", "/backups", "read", params={"since": first + 1e-3}).json()
    assert [b["id"] for b in later["items"]] == [2]
    before = api.call("GET", "/backups", "read", params={"until": first + 1e-3}).json()
    assert [b["id"] for b in before["items"]] == [1]
    by_verdict = api.call("GET", "/backups", "read", params={"verdict": "suspicious"}).json()
    assert by_verdict["total"] == 0
    clean = api.call("GET", "/backups", "read", params={"clean": True}).json()
    assert clean["total"] == 2
    shown = api.call("GET", f"/backups/{VM}@latest", "read").json()
    assert shown == newest["items"][0]


def test_bad_paging_is_refused(api: Api) -> None:
    for params in ({"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"order": "sideways"}):
        got = api.call("GET", "/backups", "read", params=params)
        assert got.status_code == 422, params
        assert got.json()["error"]["type"] == "ValidationError"
    bad_ref = api.call("GET", "/backups/vm1@yesterday-ish", "read")
    assert bad_ref.status_code == 400 and bad_ref.json()["error"]["type"] == "UsageError"
