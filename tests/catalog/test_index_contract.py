"""The catalog index contract (vmaccel.catalog.index.protocols), run against both engines: the
embedded SQLite index and the PostgreSQL one (a real server, tests/catalog/pgserver.py); then
what PostgreSQL adds for many writers: chunk dedup across connections, serial write
transactions, session advisory locks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.pgserver import PostgresServer, pg, postgres  # noqa: F401 - fixtures
from vmaccel.catalog.index import BackupMeta, BackupRow, CatalogIndex, FileRecord, Index, NewImage
from vmaccel.catalog.index.jobs import DiskTaskRow
from vmaccel.catalog.index.postgres import PgIndex
from vmaccel.catalog.index.records import ImageRow, path_order
from vmaccel.catalog.pack import PackEntry
from vmaccel.vocabulary.errors import IndexMissing, RepositoryLocked


def _entry(n: int, offset: int = 0) -> PackEntry:
    return PackEntry(bytes([n]) * 32, 1, 0, offset, 100 + n, 4096, 0xFFFF_FFF0 + n % 16)


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogIndex]:
    made: CatalogIndex
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg")
        made = PgIndex(server.database(), create=True)
    else:
        made = Index(tmp_path / "index.db", create=True)
    made.migrate()
    assert not made.pending_migrations()
    try:
        yield made
    finally:
        made.close()


def test_chunks_are_stored_once_and_keep_their_first_location(index: CatalogIndex) -> None:
    with index.writing():
        p1 = index.add_pack("p1", 1000, 1.5, [_entry(1), _entry(2, 200)])
        p2 = index.add_pack("p2", 900, 2.5, [_entry(2, 7), _entry(3, 300)])
    assert index.chunk(_entry(2).id).pack == "p1"  # type: ignore[union-attr]
    assert index.chunk(_entry(1).id).crc == 0xFFFF_FFF1  # type: ignore[union-attr]
    ids = {_entry(n).id for n in (1, 2, 3, 4)}
    assert index.existing_chunks(ids) == ids - {_entry(4).id}
    assert index.missing_chunks(ids) == {_entry(4).id}
    assert set(index.chunk_locations(ids)) == ids - {_entry(4).id}
    assert index.chunk_kinds(ids) == {_entry(n).id: 1 for n in (1, 2, 3)}
    assert index.has_chunk(_entry(3).id) and not index.has_chunk(_entry(4).id)
    assert index.chunk_totals() == (3, 101 + 102 + 103, 3 * 4096)
    assert index.chunk_totals_by_kind() == {1: (3, 306, 3 * 4096)}
    assert index.pack_totals() == (2, 1900)
    assert index.pack_usage() == {p1: (2, 203), p2: (1, 103)}
    assert [c.pack for c in index.chunks()] == ["p1", "p1", "p2"]
    assert [p.name for p in index.packs()] == ["p1", "p2"]
    assert index.packs()[0].created == 1.5


def test_condemned_chunks_hide_from_dedup_and_resurrect(index: CatalogIndex) -> None:
    with index.writing():
        p1 = index.add_pack("p1", 1, 1.0, [_entry(1), _entry(2)])
        assert index.condemn_chunks([_entry(1).id, _entry(2).id], 7) == 2
        assert index.condemn_chunks([_entry(1).id], 9) == 0  # condemned already
    assert index.condemned_chunks() == {_entry(1).id: 7, _entry(2).id: 7}
    assert index.existing_chunks([_entry(1).id]) == set() and index.chunk(_entry(1).id)
    with index.writing():
        p2 = index.add_pack("p2", 1, 2.0, [_entry(1, 50)])  # resurrects chunk 1 into p2
        assert index.delete_condemned(p1, [_entry(1).id, _entry(2).id]) == 1
        assert not index.retire_pack(p1) or index.chunks_in_pack(p1) == []
    assert index.chunk(_entry(1).id).pack == "p2"  # type: ignore[union-attr]
    assert index.chunk(_entry(2).id) is None
    with index.writing():
        index.condemn_chunks([_entry(1).id], 11)
        assert index.absolve_since(10) == 1
        index.move_chunks(p1, [_entry(1, 5)], {_entry(1).id: p2})
        index.set_pack_state(p2, "deleting")
        assert index.retire_pack(p2)
    assert index.chunk(_entry(1).id).offset == 5  # type: ignore[union-attr]
    with index.writing():
        index.delete_pack(p1)
    assert index.chunk(_entry(1).id) is None and [p.id for p in index.packs()] == [p2]


def test_backup_pages_and_vm_spans_are_counted_and_sliced_in_sql(index: CatalogIndex) -> None:
    with index.writing():
        for n, (vm, started) in enumerate([("a", 1.0), ("b", 2.0), ("a", 3.0), ("a", 5.0)]):
            index.restore_backup(BackupRow(10 + n, f"u{n}", vm, started, started + 1, "complete",
                                           BackupMeta()))  # fmt: skip
        index.restore_backup(BackupRow(20, "u-run", "a", 9.0, None, "in_progress", BackupMeta()))
    total, rows = index.backup_page(None, None, None, True, 0, 2)
    assert total == 4 and [r.id for r in rows] == [13, 12]
    total, rows = index.backup_page("a", 2.0, 5.0, False, 0, 10)
    assert total == 1 and [r.id for r in rows] == [12]
    total, rows = index.backup_page("a", None, None, False, 1, 10)
    assert total == 3 and [r.id for r in rows] == [12, 13]
    assert index.vm_backup_spans() == [("a", 3, 1.0, 5.0, 13), ("b", 1, 2.0, 2.0, 11)]


def test_backups_and_images_keep_restored_ids(index: CatalogIndex) -> None:
    with index.writing():
        index.restore_backup(BackupRow(40, "u-40", "vm1", 1.0, 2.0, "complete", BackupMeta()))
        index.restore_image(ImageRow(90, 40, "d0", 1 << 20, 65536, 64, 1, b"r", None, "c/1"))
        b = index.add_backup("u-41", "vm1", 3.0, BackupMeta(moref="vm-1"))
        i = index.add_image(b, NewImage("d0", 1 << 20, 65536, 64, 1, b"\x00" * 40, 90, "c/2"))
    assert b > 40 and i > 90
    assert index.backup(b).state == "in_progress"  # type: ignore[union-attr]
    with index.writing():
        index.finish_backup(b, 4.0, BackupMeta(moref="vm-2"))
    assert [r.id for r in index.backups("vm1")] == [40, b]
    assert index.backup_by_uuid("u-41").meta == BackupMeta(moref="vm-2")  # type: ignore[union-attr]
    assert [h.id for h in index.backup_heads()] == [40, b]
    assert index.image(i).parent_id == 90 and index.image(i).root == b"\x00" * 40  # type: ignore[union-attr]
    assert index.backup_totals() == (2, 1, 2, 2 << 20)
    with index.writing():
        index.delete_backup(40)
    assert [r.id for r in index.backups(state=None)] == [b]


def test_leases_are_ordered_and_never_reuse_ids(index: CatalogIndex) -> None:
    assert index.last_lease_id() == 0
    with index.writing():
        first = index.add_lease("a", 1.0, 10, "h1", "backup")
        second = index.add_lease("b", 2.0, 11, "h2", "backup")
    with index.writing():
        index.delete_lease("b")
        third = index.add_lease("c", 3.0, 12, "h3", "backup")
    assert first < second < third == index.last_lease_id()
    assert [(r.name, r.host) for r in index.leases()] == [("a", "h1"), ("c", "h3")]


def test_file_listings_stream_in_path_order(index: CatalogIndex) -> None:
    odd = b"etc/caf\xe9".decode("utf-8", "surrogateescape")  # an undecodable name
    paths = ["etc", "etc/Passwd", odd, "etc/hosts", "etc0", "var/log"]
    with index.writing():
        b = index.add_backup("u", "vm1", 1.0, BackupMeta())
        i = index.add_image(b, NewImage("d0", 1, 1, 1, 0, None))
        lid = index.add_listing(b"digest", [FileRecord(p, "file", 5, 7, 3, 0o644) for p in paths])
        index.attach_listing(i, "p1", "ext4", lid)
        index.finish_backup(b, 2.0, BackupMeta())
    assert index.listing_by_digest(b"digest") == lid and index.listing_size(lid) == 6
    got = [r.path for r in index.listing_entries(lid)]
    assert got == sorted(paths, key=path_order)
    assert [r.path for r in index.listing_entries(lid, "etc")] == [
        p for p in got if p == "etc" or p.startswith("etc/")
    ]
    assert [h.path for h in index.search_files("%passwd", None, 10)] == ["etc/Passwd"]
    versions = index.path_versions(odd, "vm1")
    assert [v.entry.path for v in versions if v.entry] == [odd]
    assert index.image_volumes(i)[0].listing_id == lid == index.listing_of(i, "p1")


def test_policies_jobs_and_tokens(index: CatalogIndex) -> None:
    with index.writing():
        index.put_policy("gold", {"vms": ["a"]}, 1.0, "me")
        index.put_policy("gold", {"vms": ["b"]}, 2.0, "me")
        job = index.add_job("policy", "gold", "schedule", 5.0, 5.5)
        assert index.claim_job(job, "h:1", 6.0) and not index.claim_job(job, "h:2", 6.0)
        index.add_vm_jobs(job, ["a", "b"])
        vm_job = index.vm_jobs(job)[0].id
        assert index.claim_vm_job(vm_job, "h:1", 6.5)
        task = DiskTaskRow(0, vm_job, 1, "d0", "ok", "full", None, 1, 1, 1, 0.5, None, ("w",))
        index.add_disk_tasks([task])
        assert index.add_log(job, None, 7.0, "info", "100% done")
        assert index.end_vm_jobs(job, ("queued",), "cancelled", 8.0) == 1
        index.finish_job(job, "succeeded", 9.0, {"vms": 2})
        token = index.add_token("ci", "read", b"d" * 32, "abcd", 1.0)
        index.revoke_token(token, 2.0)
    assert index.policy("gold").version == 2  # type: ignore[union-attr]
    assert [c.version for c in index.policy_changes("gold")] == [1, 2]
    assert index.job(job).summary == {"vms": 2} and index.last_success("gold") == 9.0  # type: ignore[union-attr]
    assert index.last_due("gold") == 5.0 and index.jobs("gold", ("succeeded",))[0].id == job
    assert [t.warnings for t in index.disk_tasks(job)] == [("w",)]
    assert [r.message for r in index.job_log(job)] == ["100% done"]
    assert index.token_by_digest(b"d" * 32).revoked == 2.0  # type: ignore[union-attr]


def test_a_failed_transaction_leaves_nothing(index: CatalogIndex) -> None:
    with pytest.raises(RuntimeError), index.writing():
        index.add_pack("p1", 1, 1.0, [_entry(1)])
        raise RuntimeError("boom")
    assert index.packs() == [] and index.chunk(_entry(1).id) is None


# -- PostgreSQL: many writers ---------------------------------------------------------------


def test_an_empty_database_is_no_catalog(pg: PostgresServer) -> None:  # noqa: F811
    with pytest.raises(IndexMissing, match="holds no catalog"):
        PgIndex(pg.database())


def test_concurrent_writers_store_each_chunk_once(pg: PostgresServer) -> None:  # noqa: F811
    url = pg.database()
    PgIndex(url, create=True).migrate()
    writers = [PgIndex(url) for _ in range(4)]
    barrier = threading.Barrier(len(writers))

    def write(n: int, index: PgIndex) -> None:
        barrier.wait()
        for k in range(10):  # overlapping: chunk ids 0..49, every writer stores 40 of them
            with index.writing():
                index.add_pack(
                    f"w{n}-{k}", 1, 1.0, [_entry((n * 10 + k * 4 + j) % 50) for j in range(4)]
                )

    threads = [threading.Thread(target=write, args=(n, w)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        chunks = list(writers[0].chunks())
        assert len(chunks) == len({c.id for c in chunks}) == 50
        assert writers[0].pack_totals() == (40, 40)
    finally:
        for w in writers:
            w.close()


def test_session_locks_refuse_a_second_holder_and_die_with_the_session(
    pg: PostgresServer,  # noqa: F811
) -> None:
    url = pg.database()
    one, two = PgIndex(url, create=True), PgIndex(url, create=True)
    try:
        lock = one.session_lock("maintenance", "maintenance run")
        with lock:
            assert two.lock_held("maintenance") and one.lock_held("maintenance")
            with pytest.raises(RepositoryLocked, match="another maintenance run"):
                two.session_lock("maintenance", "maintenance run").acquire()
            with pytest.raises(RepositoryLocked):
                two.session_lock("maintenance", "maintenance run", wait=0.2).acquire()
        assert not two.lock_held("maintenance")
        with two.session_lock("maintenance", "maintenance run"):
            pass
    finally:
        one.close()
        two.close()


def test_console_users_and_sessions(index: CatalogIndex) -> None:
    with index.writing():
        uid = index.add_user("ann", "admin", "scrypt$x", 1.0)
        index.add_session(b"s" * 32, uid, "csrf", 2.0, 9.0)
    session = index.session(b"s" * 32)
    assert session is not None and session.user.name == "ann" and session.expires == 9.0
    with index.writing():
        index.update_user(uid, "viewer", "scrypt$y", 3.0)
    assert index.session(b"s" * 32) is None and [u.role for u in index.users()] == ["viewer"]


def test_accepted_anomaly_patterns(index: CatalogIndex) -> None:
    with index.writing():
        first = index.add_pattern("vm1", 7, 1.0, '[{"kind": "changed"}]')
        second = index.add_pattern("vm2", 9, 2.0, "[]")
    assert [p.id for p in index.patterns()] == [first, second]
    (row,) = index.patterns("vm1")
    assert (row.vm, row.backup_id, row.created, row.findings) == (
        "vm1",
        7,
        1.0,
        '[{"kind": "changed"}]',
    )
    with index.writing():
        assert index.delete_pattern(first) and not index.delete_pattern(first)
    assert [p.id for p in index.patterns()] == [second] and index.patterns("vm1") == []


def test_the_first_report_of_an_attempt_wins(index: CatalogIndex) -> None:
    from vmaccel.catalog.index.reports import ReportRow

    with index.writing():
        assert index.add_report(ReportRow(7, 1, "p1", 10.0, '{"vm": "a"}'))
        assert not index.add_report(ReportRow(7, 1, "p2", 11.0, '{"vm": "b"}'))
        assert index.add_report(ReportRow(7, 2, "p2", 12.0, '{"vm": "c"}'))
    assert index.report(7, 1) == ReportRow(7, 1, "p1", 10.0, '{"vm": "a"}')
    assert index.report(7, 2) is not None and index.report(7, 3) is None


def test_limit_slots_are_counted_across_sessions_and_die_with_them(
    pg: PostgresServer,  # noqa: F811
) -> None:
    from vmaccel.catalog.index.pgslots import PgSlots

    url = pg.database()
    waited: list[int] = []

    def give_up() -> None:
        waited.append(1)
        raise TimeoutError

    two = [PgSlots(url, "datastores/vc", 2, give_up, poll=0.01) for _ in range(3)]
    with two[0].hold(["ds1"]), two[1].hold(["ds1", "ds2"]):
        with pytest.raises(TimeoutError), two[2].hold(["ds1"]):  # both held: a third waits
            pass
        with two[2].hold(["ds2"]):  # ds2 has one holder: a second fits
            pass
    with two[2].hold(["ds1"]):  # the sessions ended, their slots with them
        pass
    assert waited == [1]


def test_a_proxy_name_is_held_by_one_live_proxy(index: CatalogIndex) -> None:
    from vmaccel.catalog.index.proxies import NewProxy, ProxyRow

    a = NewProxy("p1", "host-a", 11, ("ds1", "ds2"), 2, 30.0)
    with index.writing():
        first, added = index.claim_proxy_name(a, 100.0)
    assert added and first == ProxyRow(first.id, "p1", "host-a", 11, ("ds1", "ds2"), 2, None,
                                       30.0, 100.0, 100.0, None)  # fmt: skip
    with index.writing():
        holder, added = index.claim_proxy_name(NewProxy("p1", "host-b", 22, (), 4, 30.0), 120.0)
        assert not added and holder == first  # seen 20 s ago: live, the name is taken
        assert index.touch_proxy(first.id, 125.0, 7)
        assert index.touch_proxy(first.id, 126.0, None)  # the worker id stays
    assert index.proxy(first.id) == ProxyRow(first.id, "p1", "host-a", 11, ("ds1", "ds2"), 2, 7,
                                             30.0, 100.0, 126.0, None)  # fmt: skip
    assert index.clock() > 1.7e9  # the database's time, UNIX seconds
    with index.writing():  # silent for 31 s: the name moves on, the silent row ends
        second, added = index.claim_proxy_name(NewProxy("p1", "host-b", 22, (), 4, 30.0), 157.0)
        assert added and second.id > first.id and second.datastores == ()
        assert not index.touch_proxy(first.id, 158.0, 7)  # stopped rows stay stopped
        other, added = index.claim_proxy_name(NewProxy("p2", "host-c", 33, ("ds3",), 1, 5.0), 158)
        index.stop_proxy(other.id, 160.0)
        index.stop_proxy(other.id, 170.0)  # the first stop time stays
        assert index.touch_proxy(second.id, 159.0, None)
    assert [(p.name, p.host, p.stopped, p.last_seen) for p in index.proxies()] == [
        ("p1", "host-a", 157.0, 126.0),
        ("p1", "host-b", None, 159.0),
        ("p2", "host-c", 160.0, 160.0),
    ]
    with index.writing():
        assert index.drop_proxies(158.0) == 1  # p1 on host-a ended at 157
        assert index.drop_proxies(158.0) == 0
    assert [p.host for p in index.proxies()] == ["host-b", "host-c"]


def test_opening_checks_the_newest_migration_alone_and_still_migrates_an_old_index(
    tmp_path: Path,
) -> None:
    """``NEWEST_MIGRATION`` names the last migration of both dialects, and an index that
    lacks it (here: the last migration's row removed, as an index written before it) is
    reported pending and brought up to date."""
    from vmaccel.catalog.index.connection import NEWEST_MIGRATION
    from vmaccel.catalog.index.pgschema import MIGRATIONS
    from vmaccel.catalog.index.schema import migrations

    assert [m.name for m in migrations._migrations][-1] == NEWEST_MIGRATION
    assert MIGRATIONS[-1][0] == NEWEST_MIGRATION
    index = Index(tmp_path / "index.db", create=True)
    try:
        assert index.pending_migrations()  # a new index: nothing applied yet
        index.migrate()
        assert not index.pending_migrations()
        with index.writing():
            index._conn.execute(
                "DELETE FROM _sqlite_migrations WHERE name = ?", (NEWEST_MIGRATION,)
            )
            index._conn.execute("DROP TABLE proxy")
        assert index.pending_migrations()
        index.migrate()
        assert not index.pending_migrations()
        assert index._conn.execute("SELECT count(*) FROM proxy").fetchone() == (0,)
    finally:
        index.close()
