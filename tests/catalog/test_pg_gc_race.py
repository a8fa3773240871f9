"""gc racing backups on a shared PostgreSQL catalog, randomised: per seed, a random number of
machines (one directory, or two sharing an S3 bucket), writers whose images mix random
pieces of a common pool (so they deduplicate against each other and against garbage that
pruning just left behind) with fresh data, started at random moments while gc runs from
random directories with random pauses. Whatever the interleaving: every backup committed
before or during the race restores byte for byte and ``verify --full`` passes."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.catalog.pgserver import PostgresServer, pg, postgres  # noqa: F401 - fixtures
from tests.catalog.standalone import Cli, random_image
from tests.catalog.test_pg_repository import VMACCEL, _backup

MIB = 1024 * 1024
POOL = 6  # pieces of 1 MiB the images share


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _image(rng: random.Random, pool: list[bytes], path: Path, seed: int) -> bytes:
    """Random pieces of the pool (some repeated) plus 1 MiB of fresh data, in random order."""
    pieces = [rng.choice(pool) for _ in range(rng.randint(2, 4))]
    pieces.append(random_image(path.with_suffix(".fresh"), MIB, seed=seed))
    rng.shuffle(pieces)
    data = b"".join(pieces)
    path.write_bytes(data)
    return data


def _gc_loop(dirs: list[Path], rng: random.Random, stop: threading.Event, runs: list[int]) -> None:
    while not stop.is_set():
        gc = subprocess.run([str(VMACCEL), "gc", "--repo", rng.choice(dirs), "--grace", "0",
                             "--lock-wait", "60"], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
        assert gc.returncode == 0, gc.stderr
        runs.append(1)
        time.sleep(rng.uniform(0, 0.3))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_gc_during_random_backups_never_removes_a_needed_chunk(
    pg: PostgresServer,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    seed: int,
) -> None:
    rng = random.Random(seed)
    machines = 1 + seed % 2
    dirs = [tmp_path / f"machine{n}" for n in range(machines)]
    store: tuple[str, ...] = ()
    if machines > 1:
        s3 = request.getfixturevalue("s3")
        store = ("--store", f"s3://{s3.bucket()}/race", "--endpoint", s3.endpoint)
    cli.ok("repo", "init", "--repo", dirs[0], "--catalog", pg.database(), *store)
    for other in dirs[1:]:
        other.mkdir()
        for name in ("store.json", "catalog.json"):  # joining: the two files, nothing else
            (other / name).write_bytes((dirs[0] / name).read_bytes())
    pool = [random_image(tmp_path / f"pool{i}", MIB, seed=seed * 100 + i) for i in range(POOL)]
    kept: dict[int, bytes] = {}  # committed before the race; then "gone"'s first backup
    for n, name in enumerate(("kept", "gone", "gone")):  # is pruned into garbage
        path = tmp_path / f"before{n}.img"
        data = _image(rng, pool, path, seed * 10 + n)
        kept[cli.backup(dirs[n % machines], path, name)] = data
    cli.ok("prune", "--repo", dirs[0], "--keep-last", "1")
    del kept[min(k for k in kept if k != min(kept))]  # the first backup of "gone"
    stop, runs = threading.Event(), []
    gc = threading.Thread(target=_gc_loop, args=(dirs, rng, stop, runs))
    gc.start()
    racers, images = [], {}
    try:
        for n in range(rng.randint(2, 3)):
            time.sleep(rng.uniform(0, 0.5))
            name = f"racer{n}"
            images[name] = _image(rng, pool, tmp_path / f"{name}.img", seed * 10 + 5 + n)
            racers.append(_backup(rng.choice(dirs), tmp_path / f"{name}.img", name))
        results = [r.communicate(timeout=300) for r in racers]
    finally:
        stop.set()
        gc.join()
    assert runs, "gc never ran during the race"
    for (_, err), racer in zip(results, racers, strict=True):
        assert racer.returncode == 0, err
    ids = {name: int(json.loads(out)["vms"][0]["backup_id"])
           for name, (out, _) in zip(images, results, strict=True)}  # fmt: skip
    cli.ok("gc", "--repo", dirs[-1], "--grace", "0")
    for name, backup_id in ids.items():
        assert cli.restored(rng.choice(dirs), backup_id, tmp_path / f"{name}.out") == images[name]
    for backup_id, data in kept.items():
        assert cli.restored(dirs[0], backup_id, tmp_path / f"kept{backup_id}.out") == data
    cli.ok("verify", "--repo", dirs[-1], "--full")
