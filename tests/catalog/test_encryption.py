"""repokey repositories: round trip, passphrases, keyed chunk ids, no plaintext in packs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.vocabulary.errors import PassphraseError, RepositoryError

BS = 4096
MARKER = b"VMACCEL-SECRET-MARKER-" * 200  # compressible, so a leak would be obvious
RANDOMISH = bytes((i * 7919 + (i >> 5)) % 251 for i in range(BS))


def content() -> bytes:
    block = (MARKER * 2)[:BS]
    return block * 3 + RANDOMISH + bytes(BS) + (b"tail" + MARKER)[:BS]


def make(path: Path, encryption: str, passphrase: str | None = None) -> list[bytes]:
    """A repository with one backup of ``content()``; returns the image's chunk ids."""
    Repository.init(
        path,
        RepositoryConfig(block_size=BS, map_fanout=16, encryption=encryption),
        passphrase=passphrase,
    )
    with Repository.open(path, passphrase=passphrase, write=True) as repo:
        with repo.begin_backup("vm") as bw:
            w = bw.image_writer("d", len(content()))
            w.write(0, content())
            bw.finish_image("d", w)
            row = bw.commit()
        img = repo.image(row, "d")
        return [c for _, c in repo.blockmap.iter_blocks(repo.map_root(img))]


def test_round_trip(tmp_path: Path) -> None:
    make(tmp_path / "r", "repokey", "correct horse")
    key = tmp_path / "r" / "key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "correct horse" not in key.read_text()
    with Repository.open(tmp_path / "r", passphrase=lambda: "correct horse") as repo:
        img = repo.image(repo.backups()[-1], "d")
        with repo.open_image(img) as r:
            assert r.read() == content()


def test_wrong_passphrase(tmp_path: Path) -> None:
    make(tmp_path / "r", "repokey", "right")
    with pytest.raises(PassphraseError, match="wrong passphrase") as info:
        Repository.open(tmp_path / "r", passphrase="wrong")
    assert "VMACCEL_PASSPHRASE" in str(info.value)
    assert isinstance(info.value, PermissionError)
    assert info.value.exit_code == 5


def test_missing_passphrase(tmp_path: Path) -> None:
    make(tmp_path / "r", "repokey", "right")
    with pytest.raises(PassphraseError, match="encrypted"):
        Repository.open(tmp_path / "r")
    with pytest.raises(PassphraseError):
        Repository.init(tmp_path / "r2", RepositoryConfig(encryption="repokey"))


def test_missing_or_damaged_key_file(tmp_path: Path) -> None:
    make(tmp_path / "r", "repokey", "right")
    key = tmp_path / "r" / "key"
    doc = json.loads(key.read_text())
    key.write_text(json.dumps({**doc, "salt": "zz"}))
    with pytest.raises(RepositoryError, match="key file is damaged"):
        Repository.open(tmp_path / "r", passphrase="right")
    key.unlink()
    with pytest.raises(RepositoryError, match="key is missing"):
        Repository.open(tmp_path / "r", passphrase="right")


def test_key_file_is_bound_to_its_repository(tmp_path: Path) -> None:
    make(tmp_path / "a", "repokey", "pw")
    make(tmp_path / "b", "repokey", "pw")
    (tmp_path / "b" / "key").write_bytes((tmp_path / "a" / "key").read_bytes())
    with pytest.raises(PassphraseError):
        Repository.open(tmp_path / "b", passphrase="pw")


def test_chunk_ids_differ_from_unencrypted_repository(tmp_path: Path) -> None:
    plain = make(tmp_path / "plain", "none")
    enc1 = make(tmp_path / "enc1", "repokey", "pw")
    enc2 = make(tmp_path / "enc2", "repokey", "pw")
    assert len(plain) == len(enc1) == 5  # the zero block is a hole
    assert not set(plain) & set(enc1)
    assert not set(enc1) & set(enc2)  # each repository has its own id key
    assert enc1[0] == enc1[1] == enc1[2]  # dedup still works inside one repository


def test_no_plaintext_in_packs_or_manifests(tmp_path: Path) -> None:
    make(tmp_path / "plain", "none")
    make(tmp_path / "enc", "repokey", "pw")

    def stored(repo: Path) -> bytes:
        files = [*(repo / "packs").rglob("*"), *(repo / "backups").iterdir()]
        return b"".join(p.read_bytes() for p in files if p.is_file())

    needle = b"VMACCEL-SECRET-MARKER"
    assert needle in stored(tmp_path / "plain")  # the check below would see a leak
    enc = stored(tmp_path / "enc")
    assert needle not in enc
    assert b"VMACCEL" not in enc
    assert RANDOMISH[:64] not in enc
    assert b'"vm"' not in enc  # the manifest is encrypted too
