"""The tag picker of the policy form: the categories and tags of one vCenter, read live
through the service call ``GET /api/v1/vcenters/{name}/tags`` makes, as ticked boxes.

The picker is rendered with the page (no script): its vCenter is the policy's, the one the
page was asked for (``?vcenter=``) or the only one registered. The tags of a policy split
in two: those the vCenter offers are ticked boxes, the others stay in the typed field (a
tag not created yet, a vCenter that cannot be reached). A saved form's tags are the typed
ones followed by the ticked ones, each once (:func:`merged_tags`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmaccel.service import vcenters
from vmaccel.service.context import Context
from vmaccel.service.vcenters import VCenterTags
from vmaccel.vocabulary.errors import VmaccelError

PICKED = "tag_pick"  # the form field of a ticked box


@dataclass(frozen=True)
class TagPicker:
    """What the form shows: ``tags`` of vCenter ``vcenter`` (None when not read: ``error``
    says why, or no vCenter is chosen yet), the ``picked`` specs ticked, the ``typed``
    ones left in the text field, and the registered vCenters to choose from."""

    vcenter: str | None
    tags: VCenterTags | None
    error: str | None
    picked: frozenset[str]
    typed: tuple[str, ...]
    registered: tuple[str, ...]


def tag_picker(ctx: Context, vcenter: str | None, tags: Iterable[str]) -> TagPicker:
    """The picker for a policy of ``vcenter`` (None: the only registered one, if any)
    holding ``tags`` (``CATEGORY:TAG``)."""
    registered = tuple(e.name for e in vcenters.list_vcenters(ctx))
    wanted = list(dict.fromkeys(t for t in tags if t))
    if not vcenter and len(registered) == 1:
        vcenter = registered[0]
    if not vcenter:
        return TagPicker(None, None, None, frozenset(), tuple(wanted), registered)
    try:
        found = vcenters.list_tags(ctx, vcenter)
    except VmaccelError as exc:
        return TagPicker(vcenter, None, str(exc), frozenset(), tuple(wanted), registered)
    offered = set(found.specs())
    picked = frozenset(t for t in wanted if t in offered)
    typed = tuple(t for t in wanted if t not in offered)
    return TagPicker(vcenter, found, None, picked, typed, registered)


def merged_tags(typed: Iterable[str], picked: Iterable[str]) -> list[str]:
    """The typed tags, then the ticked ones, each once, in that order."""
    return list(dict.fromkeys([*typed, *picked]))
