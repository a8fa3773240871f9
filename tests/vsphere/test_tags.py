"""Tags through the production protocol: vmware-vcenter bindings (JSON-RPC at /api)."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from com.vmware.cis.tagging_client import CategoryModel
from com.vmware.vapi.std.errors_client import AlreadyExists, NotFound, Unauthenticated
from com.vmware.vapi.std_client import DynamicID
from vmware.vapi.vsphere.client import VsphereClient, create_vsphere_client

from testbed.vsphere.bed import VsphereBed

pytestmark = pytest.mark.vsphere


def client(bed: VsphereBed, password: str | None = None) -> Any:
    return create_vsphere_client(server=bed.host, username=bed.user,
                                 password=password or bed.password, session=bed.http_session())


def legacy_attached(bed: VsphereBed, tag_id: str) -> list[dict[str, str]]:
    """What vcsim's own legacy /rest routes say is attached to the tag."""
    http = bed.http_session()
    base = f"https://{bed.host}/rest/com/vmware/cis"
    sid = http.post(f"{base}/session", auth=(bed.user, bed.password), timeout=10).json()["value"]
    resp = http.post(f"{base}/tagging/tag-association/id:{tag_id}",
                     params={"~action": "list-attached-objects"}, json={},
                     headers={"vmware-api-session-id": sid}, timeout=10)
    value: list[dict[str, str]] = resp.json()["value"] or []
    return value


def test_tags_round_trip_through_the_sdk(vsphere_bed: VsphereBed) -> None:
    c = client(vsphere_bed)
    spec = c.tagging.Category.CreateSpec(name="vmaccel-policy", description="backup policy",
                                         cardinality=CategoryModel.Cardinality.MULTIPLE,
                                         associable_types=set())
    category = c.tagging.Category.create(spec)
    assert category in c.tagging.Category.list()
    assert c.tagging.Category.get(category).name == "vmaccel-policy"
    with pytest.raises(AlreadyExists):
        c.tagging.Category.create(spec)
    gold = c.tagging.Tag.create(c.tagging.Tag.CreateSpec(name="gold", description="",
                                                         category_id=category))
    assert c.tagging.Tag.get(gold).category_id == category
    assert c.tagging.Tag.list_tags_for_category(category) == [gold]

    vm1, vm2 = (DynamicID(type="VirtualMachine", id=i) for i in ("vm-57", "vm-60"))
    c.tagging.TagAssociation.attach(gold, vm1)
    assert c.tagging.TagAssociation.list_attached_objects(gold) == [vm1]
    by_object = c.tagging.TagAssociation.list_attached_tags_on_objects([vm1, vm2])
    assert {o.object_id.id: o.tag_ids for o in by_object} == {"vm-57": [gold], "vm-60": []}
    assert legacy_attached(vsphere_bed, gold) == [{"type": "VirtualMachine", "id": "vm-57"}]

    c.tagging.TagAssociation.detach(gold, vm1)
    assert c.tagging.TagAssociation.list_attached_objects(gold) == []
    with pytest.raises(NotFound):
        c.tagging.Tag.get("urn:vmomi:InventoryServiceTag:missing:GLOBAL")


def test_wrong_password_is_unauthenticated(vsphere_bed: VsphereBed,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The refused client is half-built (no stub factory): vAPI's VsphereClient.__del__ then
    # recurses through ApiClient.__getattr__ and, when the GC runs it later, aborts the
    # interpreter (stack overflow). Collect it here with a harmless __del__.
    monkeypatch.setattr(VsphereClient, "__del__", lambda self: None)
    with pytest.raises(Unauthenticated):
        client(vsphere_bed, password="wrong")
    gc.collect()
