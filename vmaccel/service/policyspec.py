"""A policy: which VMs, when, how, kept how long, and who hears about it. Frozen; validated.

The stored and declarative form is a flat JSON/TOML table with the field names of
:class:`Policy` (``docs/policies.md`` lists them); :meth:`Policy.from_dict` validates it and
refuses unknown keys, so a typo in a policy file is an error, not a silently ignored line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vmaccel.service.limits import VMS_AT_ONCE
from vmaccel.service.schedule import Window, check_cron, zone
from vmaccel.vocabulary.errors import UsageError

VERIFICATIONS = ("none", "sampled", "full")
EVENTS = ("failure", "warning", "always", "digest", "stale", "unprotected")
TAG_MATCHES = ("any", "all")
KEEPS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@dataclass(frozen=True)
class Policy:
    """One backup policy.

    Selection: VMs carrying ``tags`` (``CATEGORY:TAG``; ``tag_match`` any or all of them), in
    ``folders`` (and their subfolders) or whose name matches one of ``vm_patterns`` (fnmatch)
    — any of the three —, minus ``exclude_vms`` (patterns) and the ``exclude_disks``
    (``VM:DISK``). Time: ``schedule`` (cron, 5 or 6 fields) in ``timezone``; VM backups start
    only inside ``window`` (``HH:MM-HH:MM``, None: always). ``rescan_days``: a VM whose last
    full read or rescan is older gets a rescan (0: never). Retention: the ``keep_*`` counts
    (all 0: prune keeps everything of this policy's VMs). ``parallel``: VMs at once;
    ``retries`` more attempts for a failed VM, ``retry_delay`` seconds apart, inside the
    window. ``verification`` after the run: none, sampled or full. ``notify_channels`` (names
    of channels the notifier knows) hear of ``notify_events``.
    """

    name: str
    vcenter: str
    tags: tuple[str, ...] = ()
    tag_match: str = "any"
    folders: tuple[str, ...] = ()
    vm_patterns: tuple[str, ...] = ()
    exclude_vms: tuple[str, ...] = ()
    exclude_disks: tuple[str, ...] = ()
    schedule: str = "0 22 * * *"
    timezone: str = "UTC"
    window: str | None = None
    rescan_days: int = 0
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    keep_yearly: int = 0
    transport: str = "auto"
    datastore_paths: tuple[str, ...] = ()
    quiesce: bool = True
    parallel: int = VMS_AT_ONCE
    retries: int = 2
    retry_delay: float = 300.0
    verification: str = "none"
    notify_channels: tuple[str, ...] = ()
    notify_events: tuple[str, ...] = ("failure",)
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.vcenter:
            raise UsageError(f"policy {self.name}: name a vCenter")
        if not (self.tags or self.folders or self.vm_patterns):
            raise UsageError(f"policy {self.name}: select VMs by tags, folders or vm_patterns")
        for tag in self.tags:
            cat, sep, name = tag.partition(":")
            if not (sep and cat and name):
                raise UsageError(f"policy {self.name}: tag {tag!r} is not CATEGORY:TAG")
        _one_of(self, "tag_match", TAG_MATCHES)
        _one_of(self, "verification", VERIFICATIONS)
        for event in self.notify_events:
            if event not in EVENTS:
                raise UsageError(f"policy {self.name}: event {event!r} is not one of {EVENTS}")
        check_cron(self.schedule)
        zone(self.timezone)
        if self.window is not None:
            Window.parse(self.window)
        for name in ("rescan_days", "retries", *KEEPS):
            if getattr(self, name) < 0:
                raise UsageError(f"policy {self.name}: {name} must be >= 0")
        if self.parallel < 1:
            raise UsageError(f"policy {self.name}: parallel must be >= 1")
        if self.retry_delay < 0:
            raise UsageError(f"policy {self.name}: retry_delay must be >= 0 seconds")

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form (tuples as lists); ``from_dict(to_dict())`` is the identity."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Policy:
        """Validate a flat table (unknown keys, wrong types and bad values raise
        :class:`UsageError`); omitted fields take their defaults."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        label = doc.get("name", "?")
        if unknown:
            raise UsageError(f"policy {label}: unknown field(s) {', '.join(unknown)}")
        values = {k: _coerce(label, k, known[k].type, v) for k, v in doc.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # a required field missing
            raise UsageError(f"policy {label}: {exc}") from exc

    def changed(self, changes: Mapping[str, Any]) -> Policy:
        """This policy with ``changes`` applied (validated as :meth:`from_dict`); the name
        cannot change."""
        if "name" in changes and changes["name"] != self.name:
            raise UsageError("a policy cannot be renamed: add the new one and remove the old")
        merged = {**self.to_dict(), **changes}
        return Policy.from_dict(merged)

    def retention_counts(self) -> dict[str, int]:
        """The ``keep_*`` counts by rule name (last, hourly, ...)."""
        return {k.removeprefix("keep_"): getattr(self, k) for k in KEEPS}

    def with_defaults(self) -> Policy:
        return replace(self)


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"policy name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")


def _one_of(p: Policy, field: str, allowed: tuple[str, ...]) -> None:
    if getattr(p, field) not in allowed:
        raise UsageError(f"policy {p.name}: {field} must be one of {', '.join(allowed)}")


def _coerce(label: str, key: str, kind: Any, value: Any) -> Any:
    """``value`` as the field's type (``kind`` is the annotation text), or UsageError."""
    text = str(kind)
    bad = UsageError(f"policy {label}: {key} = {value!r} is not a valid {text}")
    if text.startswith("tuple"):
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if text == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if text == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if text == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if text == "str | None":
        if value is not None and not isinstance(value, str):
            raise bad
        return value or None
    if not isinstance(value, str):
        raise bad
    return value
