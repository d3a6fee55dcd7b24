"""Secrets at rest: row binding, wrong KEK, KEK rotation, and dumps that hold no key bytes."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from m2msec.store import DecryptionFailure, KekMismatch, KeyEncryptionKey, Store, StoreError, open_store


def _raw_sql(store: Store, sql: str, *params: object) -> list[tuple]:
    with store._conn(write=True) as conn:
        cur = store._backend.execute(conn, sql, params)
        try:
            return list(cur.fetchall())
        except Exception:  # noqa: BLE001 - statement without result rows
            return []


def test_swapped_ciphertexts_fail_naming_the_row(store: Store) -> None:
    store.put_credential("mef.ke", "A", b"secret-of-A" * 2)
    store.put_credential("mef.ke", "B", b"secret-of-B" * 2)
    store.put_credential("maf.key", "A", b"secret-of-maf-A")
    a, b = (_raw_sql(store, "SELECT secret FROM m2msec_credentials WHERE namespace = ? AND cred_id = ?", "mef.ke", x)[0][0]
            for x in ("A", "B"))
    # an attacker with write access to the table swaps the two ciphertexts
    _raw_sql(store, "UPDATE m2msec_credentials SET secret = ? WHERE namespace = ? AND cred_id = ?", bytes(b), "mef.ke", "A")
    _raw_sql(store, "UPDATE m2msec_credentials SET secret = ? WHERE namespace = ? AND cred_id = ?", bytes(a), "mef.ke", "B")
    for cid in ("A", "B"):
        with pytest.raises(DecryptionFailure) as ei:
            store.get_credential("mef.ke", cid)
        assert f"mef.ke/{cid}" in str(ei.value) and not isinstance(ei.value, KekMismatch)
    # moving a ciphertext to another namespace fails too
    _raw_sql(store, "UPDATE m2msec_credentials SET secret = ? WHERE namespace = ? AND cred_id = ?", bytes(a), "maf.key", "A")
    with pytest.raises(DecryptionFailure, match="maf.key/A"):
        store.get_credential("maf.key", "A")
    # a take of a row that does not decrypt does not consume it
    with pytest.raises(DecryptionFailure):
        store.take_credential("mef.ke", "A")
    assert len(_raw_sql(store, "SELECT cred_id FROM m2msec_credentials WHERE namespace = 'mef.ke'")) == 2


def test_wrong_kek_fails_clearly(store_url: str, kek: KeyEncryptionKey) -> None:
    with open_store(store_url, kek) as s:
        s.put_credential("ns", "c", b"top secret")
    other = KeyEncryptionKey.generate()
    with open_store(store_url, other) as s:
        with pytest.raises(KekMismatch) as ei:
            s.get_credential("ns", "c")
        msg = str(ei.value)
        assert kek.kek_id.hex() in msg and other.kek_id.hex() in msg and "ns/c" in msg
        assert kek._key.hex() not in msg and other._key.hex() not in msg
        with pytest.raises(KekMismatch):
            s.list_credentials("ns")
        # records and audit remain usable
        s.put_record("ns", "r", {"ok": True})


def test_rekey(store_url: str, kek: KeyEncryptionKey, clock) -> None:
    new = KeyEncryptionKey.generate()
    with open_store(store_url, kek, clock=clock) as s:
        for i in range(5):
            s.put_credential(f"ns{i % 2}", f"c{i}", os.urandom(32) if i else b"first", metadata={"i": i})
        before = {(c.namespace, c.cred_id): c.secret for ns in ("ns0", "ns1") for c in s.list_credentials(ns)}
        assert s.rekey(kek, new) == 5
        assert s.kek_id == new.kek_id
        assert s.get_credential("ns0", "c0").secret == b"first"
        kek_ids = {r[0] for r in _raw_sql(s, "SELECT kek_id FROM m2msec_credentials")}
        assert kek_ids == {new.kek_id.hex()}
        assert s.rekey(kek, new) == 0  # idempotent re-run
    with open_store(store_url, new, clock=clock) as s:
        after = {(c.namespace, c.cred_id): c.secret for ns in ("ns0", "ns1") for c in s.list_credentials(ns)}
        assert after == before
        assert s.get_credential("ns1", "c1").metadata == {"i": 1}
    with open_store(store_url, kek, clock=clock) as s, pytest.raises(KekMismatch):
        s.get_credential("ns0", "c0")


def test_rekey_aborts_entirely_on_a_foreign_row(store_url: str, kek: KeyEncryptionKey) -> None:
    foreign = KeyEncryptionKey.generate()
    new = KeyEncryptionKey.generate()
    with open_store(store_url, kek) as s:
        s.put_credential("ns", "a", b"a")
        s.put_credential("ns", "b", b"b")
    with open_store(store_url, foreign) as s:
        s.put_credential("ns", "z", b"z")  # sorts last: the first rows were re-encrypted before the abort
    with open_store(store_url, kek) as s:
        with pytest.raises(KekMismatch, match="ns/z"):
            s.rekey(kek, new)
        assert s.kek_id == kek.kek_id
        assert s.get_credential("ns", "a").secret == b"a"  # rolled back: still under the old KEK
        assert {r[0] for r in _raw_sql(s, "SELECT kek_id FROM m2msec_credentials WHERE cred_id <> 'z'")} == {kek.kek_id.hex()}


def test_rekey_with_wrong_old_kek_changes_nothing(store_url: str, kek: KeyEncryptionKey) -> None:
    with open_store(store_url, kek) as s:
        s.put_credential("ns", "a", b"a")
        with pytest.raises(KekMismatch):
            s.rekey(KeyEncryptionKey.generate(), KeyEncryptionKey.generate())
        with pytest.raises(StoreError, match="same"):
            s.rekey(kek, kek)
        assert s.get_credential("ns", "a").secret == b"a"


# -- dumps -----------------------------------------------------------------------------------
def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def _fill(store: Store) -> list[bytes]:
    secrets_ = [os.urandom(32), os.urandom(16), b"KNOWN-PLAINTEXT-SECRET-0123456789", os.urandom(48)]
    for i, sec in enumerate(secrets_):
        store.put_credential("mef.ke", f"k{i}@mef.example.com", sec, metadata={"suid": 21, "owner": f"C-AE{i}"})
    with store.transaction() as tx:
        tx.put_credential("maf.key", "kc@maf", secrets_[0], metadata={"suid": 32})
        tx.append_audit("mef", "enrol", "k0@mef.example.com", "ok", {"suid": 21})
    store.put_credential("tok", "single", secrets_[1])
    store.take_credential("tok", "single")  # deleted rows must not linger either
    return secrets_


def _assert_clean(blob: bytes, secrets_: list[bytes], kek: KeyEncryptionKey, what: str) -> None:
    for sec in [*secrets_, kek._key]:
        for form in _forms(sec):
            assert form not in blob, f"{what} contains a secret ({len(sec)} bytes) in some encoding"


def test_sqlite_files_and_iterdump_hold_no_key_bytes(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    db = tmp_path / "dump.db"
    with open_store(f"sqlite://{db}", kek) as s:
        secrets_ = _fill(s)
        # while the store is open: the main file and the WAL
        raw = db.read_bytes() + (tmp_path / "dump.db-wal").read_bytes()
        assert (tmp_path / "dump.db-wal").stat().st_size > 0
        _assert_clean(raw, secrets_, kek, "sqlite file + WAL")
        assert b"KNOWN" not in raw
        assert b"mef.example.com" in raw  # identifiers are stored in clear: the check reads real content
    conn = sqlite3.connect(db)
    try:
        dump = "\n".join(conn.iterdump()).encode()
    finally:
        conn.close()
    _assert_clean(dump, secrets_, kek, "iterdump")
    assert b"m2msec_credentials" in dump and kek.kek_id.hex().encode() in dump
    _assert_clean(b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file()), secrets_, kek, "db files")


@pytest.mark.postgres
def test_pg_dump_holds_no_key_bytes(pg_server, kek: KeyEncryptionKey) -> None:
    url = pg_server.create_database()
    with open_store(url, kek) as s:
        secrets_ = _fill(s)
    dump = pg_server.pg_dump(url)
    assert b"m2msec_credentials" in dump and b"mef.example.com" in dump
    _assert_clean(dump, secrets_, kek, "pg_dump")
    assert b"KNOWN" not in dump
