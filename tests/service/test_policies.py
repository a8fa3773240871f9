"""vmaccel.service.policies and .policyspec: CRUD with history, declarative apply with its
difference, validation of every field; no vCenter needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.service.context import Context
from vmaccel.service.policies import (
    add_policy,
    apply_policies,
    edit_policy,
    get_policy,
    list_policies,
    load_policy_file,
    policy_history,
    remove_policy,
    run_policy_now,
)
from vmaccel.service.policyspec import Policy
from vmaccel.vocabulary.errors import NotFound, UsageError

GOLD = {"name": "gold", "vcenter": "vc", "tags": ["backup:gold"]}


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    Repository.init(tmp_path / "repo", RepositoryConfig())
    return Context(tmp_path / "repo", config_dir=tmp_path / "config")


def test_add_edit_remove_keep_a_complete_history(ctx: Context) -> None:
    added = add_policy(ctx, Policy.from_dict(GOLD))
    assert added.version == 1 and added.policy.keep_daily == 7  # defaults filled in
    with pytest.raises(UsageError, match="exists"):
        add_policy(ctx, Policy.from_dict(GOLD))
    edited = edit_policy(ctx, "gold", {"retries": 5, "window": "22:00-06:00"}, who="api:ops")
    assert (edited.version, edited.policy.retries, edited.policy.window) == (2, 5, "22:00-06:00")
    assert get_policy(ctx, "gold").policy == edited.policy
    with pytest.raises(UsageError, match="renamed"):
        edit_policy(ctx, "gold", {"name": "silver"})
    with pytest.raises(UsageError, match="retries"):
        edit_policy(ctx, "gold", {"retries": -1})
    assert get_policy(ctx, "gold").version == 2  # a refused edit changes nothing
    remove_policy(ctx, "gold")
    with pytest.raises(NotFound):
        get_policy(ctx, "gold")
    add_policy(ctx, Policy.from_dict(GOLD))  # added again: the count goes on
    history = policy_history(ctx, "gold")
    assert [(c.version, c.action, c.who) for c in history] == [
        (1, "add", "cli"), (2, "edit", "api:ops"), (3, "remove", "cli"), (4, "add", "cli"),
    ]  # fmt: skip
    assert history[1].spec is not None and history[1].spec["retries"] == 5
    assert history[2].spec is None
    with pytest.raises(NotFound):
        policy_history(ctx, "never")


def test_apply_prints_the_difference_first_and_makes_the_catalog_match(
    ctx: Context, tmp_path: Path
) -> None:
    add_policy(ctx, Policy.from_dict(GOLD))
    add_policy(ctx, Policy.from_dict({**GOLD, "name": "old"}))
    file = tmp_path / "policies.toml"
    file.write_text(
        '[[policy]]\nname = "gold"\nvcenter = "vc"\ntags = ["backup:gold"]\nparallel = 4\n\n'
        '[[policy]]\nname = "new"\nvcenter = "vc"\nfolders = ["/DC0/vm/prod"]\n'
        'schedule = "30 1 * * *"\ntimezone = "Europe/Berlin"\n'
    )
    specs = load_policy_file(file)
    dry = apply_policies(ctx, specs, dry_run=True)
    assert [(d.name, d.action) for d in dry.diffs] == [
        ("gold", "edit"), ("new", "add"), ("old", "remove")]  # fmt: skip
    assert [(c.field, c.old, c.new) for c in dry.diffs[0].changes] == [("parallel", 2, 4)]
    assert "~ gold (edit)" in dry.summary() and "would change 3 policies" in dry.summary()
    assert sorted(p.policy.name for p in list_policies(ctx)) == ["gold", "old"]  # untouched
    done = apply_policies(ctx, specs)
    assert done.changed and not apply_policies(ctx, specs).changed  # idempotent
    assert sorted(p.policy.name for p in list_policies(ctx)) == ["gold", "new"]
    assert get_policy(ctx, "gold").policy.parallel == 4
    assert [c.who for c in policy_history(ctx, "old")][-1] == "apply"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": ["nocolon"]}, "CATEGORY:TAG"),
        ({"tags": [], "folders": []}, "select VMs"),
        ({"schedule": "every day"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"window": "25:00-06:00"}, "HH:MM-HH:MM"),
        ({"verification": "most"}, "verification"),
        ({"notify_events": ["sometimes"]}, "event"),
        ({"parallel": 0}, "parallel"),
        ({"retries": "3"}, "retries"),
        ({"colour": "red"}, "unknown field"),
        ({"name": "a b"}, "policy name"),
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Policy.from_dict({**GOLD, **fields})


def test_a_policy_file_must_be_well_formed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[policy]]\nname = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_policy_file(bad)
    twice = tmp_path / "twice.toml"
    twice.write_text('[[policy]]\nname = "a"\nvcenter = "v"\nvm_patterns = "web*"\n' * 2)
    with pytest.raises(UsageError, match="given twice"):
        load_policy_file(twice)


def test_run_now_queues_one_run_at_a_time(ctx: Context) -> None:
    add_policy(ctx, Policy.from_dict(GOLD))
    first = run_policy_now(ctx, "gold")
    assert (first.state, first.trigger) == ("queued", "manual")
    assert run_policy_now(ctx, "gold").id == first.id  # never two runs of a policy at once
    with pytest.raises(NotFound):
        run_policy_now(ctx, "nope")
