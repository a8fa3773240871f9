"""vSphere tags through the vSphere Automation SDK (vAPI JSON-RPC at ``/api``).

``CATEGORY:TAG`` names are resolved to tag ids, then to the VMs they are attached to with
batched ``list_attached_objects_on_tags`` calls (a few vCenters fail very large batches).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import requests
from com.vmware.vapi.std.errors_client import Error as VapiError
from com.vmware.vapi.std.errors_client import Unauthenticated
from vmware.vapi.vsphere.client import VsphereClient, create_vsphere_client

from vmaccel.plugin.vcenter.models import Endpoint, TagCategory, TagInfo
from vmaccel.plugin.vcenter.tls import requests_session
from vmaccel.vocabulary.errors import (
    CertificateMismatch,
    ConnectionFailed,
    LoginFailed,
    NotFound,
    UsageError,
    VCenterError,
)

logger = logging.getLogger(__name__)

BATCH = 100


def parse_tag(spec: str) -> tuple[str, str]:
    """``CATEGORY:TAG`` -> (category, tag)."""
    category, sep, tag = spec.partition(":")
    if not sep or not category or not tag:
        raise UsageError(f"tag {spec!r} is not CATEGORY:TAG")
    return category, tag


class TagDirectory:
    """A logged-in vAPI client for tag lookups."""

    def __init__(self, endpoint: Endpoint) -> None:
        session = requests_session(endpoint.trust)
        try:
            self._client: VsphereClient = create_vsphere_client(
                server=endpoint.host,
                username=endpoint.user,
                password=endpoint.password,
                session=session,
            )
        except Unauthenticated:
            raise LoginFailed(
                f"vCenter {endpoint.host} refused the tagging login of {endpoint.user!r}"
            ) from None
        except requests.exceptions.SSLError as exc:
            if "Fingerprints did not match" in str(exc):
                raise CertificateMismatch(
                    f"the certificate of {endpoint.host} does not match the pinned thumbprint "
                    f"{endpoint.trust.thumbprint}; if it was renewed on purpose, add the vCenter "
                    "again"
                ) from None
            raise ConnectionFailed(
                f"TLS with the vSphere API of {endpoint.host} failed: {exc}"
            ) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(
                f"cannot reach the vSphere API of {endpoint.host}: {exc}"
            ) from exc

    def tag_ids(self, specs: Iterable[str]) -> dict[str, str]:
        """``CATEGORY:TAG`` -> tag id; unknown names raise NotFound naming them."""
        wanted = {parse_tag(s): s for s in specs}
        tagging = self._client.tagging
        try:
            categories = {tagging.Category.get(c).name: c for c in tagging.Category.list()}
            found: dict[str, str] = {}
            for (cat, tag), spec in wanted.items():
                if cat not in categories:
                    raise NotFound(f"tag category {cat!r} does not exist in vCenter")
                for tid in tagging.Tag.list_tags_for_category(categories[cat]):
                    if tagging.Tag.get(tid).name == tag:
                        found[spec] = tid
                        break
                else:
                    raise NotFound(f"tag {tag!r} does not exist in category {cat!r}")
        except VapiError as exc:
            raise VCenterError(f"tag lookup failed: {exc}") from exc
        return found

    def categories(self) -> tuple[TagCategory, ...]:
        """Every tag category with its tags, both sorted by name (one vAPI call per category
        and per tag: vCenter has no bulk read)."""
        tagging = self._client.tagging
        found: list[TagCategory] = []
        try:
            for cid in tagging.Category.list():
                cat = tagging.Category.get(cid)
                tags = [tagging.Tag.get(t) for t in tagging.Tag.list_tags_for_category(cid)]
                infos = [TagInfo(t.id, t.name, t.description or "") for t in tags]
                kinds = tuple(sorted(cat.associable_types or ()))
                about, cardinality = cat.description or "", str(cat.cardinality)
                ordered = tuple(sorted(infos, key=lambda t: t.name))
                found.append(TagCategory(cid, cat.name, about, cardinality, kinds, ordered))
        except VapiError as exc:
            raise VCenterError(f"listing tag categories failed: {exc}") from exc
        return tuple(sorted(found, key=lambda c: c.name))

    def tagged_vms(self, tag_ids: Sequence[str]) -> set[str]:
        """Morefs of the VMs carrying any of ``tag_ids``."""
        vms: set[str] = set()
        assoc = self._client.tagging.TagAssociation
        for start in range(0, len(tag_ids), BATCH):
            try:
                batch = assoc.list_attached_objects_on_tags(list(tag_ids[start : start + BATCH]))
            except VapiError as exc:
                raise VCenterError(f"listing tagged objects failed: {exc}") from exc
            for entry in batch:
                vms.update(o.id for o in entry.object_ids if o.type == "VirtualMachine")
        return vms
