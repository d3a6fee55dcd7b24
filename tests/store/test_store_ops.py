"""Store operations, the same suite on SQLite and PostgreSQL (real databases, injected clock)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.store import (
    DuplicateError,
    InvalidValue,
    KeyEncryptionKey,
    NotFound,
    Store,
    StoreError,
    VersionConflict,
    open_store,
)
from m2msec.errors import UnknownKeyError


# -- credentials -----------------------------------------------------------------------------
def test_credential_round_trip(store: Store, clock) -> None:
    exp = clock.now + timedelta(hours=1)
    md = {"suid": 21, "owner": "C-AE1", "targets": ["a", "b"], "nested": {"x": None}}
    c = store.put_credential("mef.ke", "0a0b@mef.example.com", b"\x00\xffkey", metadata=md, expires_at=exp)
    assert c.secret == b"\x00\xffkey"
    got = store.get_credential("mef.ke", "0a0b@mef.example.com")
    assert got.secret == b"\x00\xffkey" and got.metadata == md
    assert got.created_at == clock.now and got.expires_at == exp
    assert got.created_at.tzinfo is not None
    assert "key" not in repr(got) and "hidden" in repr(got)


def test_credential_unicode_ids(store: Store) -> None:
    store.put_credential("ns/é", "ïd 1@x", b"v")
    assert store.get_credential("ns/é", "ïd 1@x").secret == b"v"
    with pytest.raises(NotFound):
        store.get_credential("ns/e", "ïd 1@x")


def test_credential_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as ei:
        store.get_credential("ns", "nope")
    assert ei.value.rsc == ResponseStatusCode.NOT_FOUND
    assert isinstance(ei.value, UnknownKeyError) and isinstance(ei.value, StoreError)
    assert store.find_credential("ns", "nope") is None


def test_credential_put_replaces_unless_if_absent(store: Store) -> None:
    store.put_credential("ns", "a", b"one")
    store.put_credential("ns", "a", b"two")
    assert store.get_credential("ns", "a").secret == b"two"
    with pytest.raises(DuplicateError) as ei:
        store.put_credential("ns", "a", b"three", if_absent=True)
    assert ei.value.rsc == ResponseStatusCode.CONFLICT and "ns/a" in str(ei.value)
    assert store.get_credential("ns", "a").secret == b"two"


def test_credential_expiry_with_injected_clock(store: Store, clock) -> None:
    store.put_credential("ns", "k", b"v", expires_at=clock.now + timedelta(seconds=10))
    clock.advance(seconds=9)
    assert store.get_credential("ns", "k").secret == b"v"
    assert [c.cred_id for c in store.list_credentials("ns")] == ["k"]
    clock.advance(seconds=1)  # expires_at == now: expired
    with pytest.raises(NotFound):
        store.get_credential("ns", "k")
    with pytest.raises(NotFound):
        store.take_credential("ns", "k")
    assert store.list_credentials("ns") == []
    assert store.delete_credential("ns", "k") is False
    # an expired identifier may be taken again with if_absent
    store.put_credential("ns", "k2", b"v", expires_at=clock.now + timedelta(seconds=1))
    clock.advance(seconds=2)
    store.put_credential("ns", "k2", b"new", if_absent=True)
    assert store.get_credential("ns", "k2").secret == b"new"


def test_record_with_credential_one_statement(store: Store, clock) -> None:
    """A record and the credential it describes, read together; None if either is gone."""
    store.put_record("reg", "k1", {"a": 1}, expires_at=clock.now + timedelta(seconds=10))
    store.put_credential("key", "k1", b"secret-1", expires_at=clock.now + timedelta(seconds=5))
    store.put_record("reg", "k2", {"a": 2})  # no credential
    store.put_credential("key", "k3", b"secret-3")  # no record
    rec, cred = store.find_record_with_credential("reg", "key", "k1")
    assert (rec.namespace, rec.rec_id, rec.doc, rec.version) == ("reg", "k1", {"a": 1}, 1)
    assert (cred.namespace, cred.cred_id, cred.secret) == ("key", "k1", b"secret-1")
    assert rec.expires_at == clock.now + timedelta(seconds=10) and cred.expires_at == clock.now + timedelta(seconds=5)
    assert store.find_record_with_credential("reg", "key", "k2") is None
    assert store.find_record_with_credential("reg", "key", "k3") is None
    assert store.find_record_with_credential("reg", "other", "k1") is None  # the credential namespace counts
    with store.transaction() as tx:  # the same inside a transaction (and it sees its own writes)
        tx.put_credential("key", "k2", b"secret-2")
        assert tx.find_record_with_credential("reg", "key", "k2")[1].secret == b"secret-2"
    clock.advance(seconds=5)  # the credential expires first
    assert store.find_record_with_credential("reg", "key", "k1") is None
    assert store.find_record("reg", "k1") is not None


def test_single_statement_reads_take_no_transaction_on_sqlite(store: Store) -> None:
    store.put_record("r", "x", {"v": 1})
    backend = store._backend  # noqa: SLF001 - observation only
    orig, seen = backend.execute, []
    backend.execute = lambda conn, sql, params=(): seen.append(sql) or orig(conn, sql, params)  # type: ignore[method-assign]
    try:
        assert store.get_record("r", "x").doc == {"v": 1}
        with store.snapshot() as snap:  # a snapshot of several reads still is one transaction
            snap.get_record("r", "x")
    finally:
        backend.execute = orig  # type: ignore[method-assign]
    if store.backend_name == "sqlite":
        assert seen[0].lstrip().startswith("SELECT") and seen[1] == "BEGIN" and seen[-1] == "COMMIT"
    with store.transaction():
        with pytest.raises(StoreError, match="open transaction"):
            store.get_record("r", "x")


def test_credential_take_and_delete(store: Store) -> None:
    store.put_credential("tok", "t1", b"token")
    assert store.take_credential("tok", "t1").secret == b"token"
    with pytest.raises(NotFound):
        store.take_credential("tok", "t1")
    store.put_credential("tok", "t2", b"x")
    assert store.delete_credential("tok", "t2") is True
    assert store.delete_credential("tok", "t2") is False


def test_list_credentials_filter_and_limit(store: Store) -> None:
    for i in range(5):
        store.put_credential("maf.key", f"k{i}", bytes([i]), metadata={"suid": 32 + i % 2, "owner": "o"})
    store.put_credential("other", "k9", b"z", metadata={"suid": 32})
    assert [c.cred_id for c in store.list_credentials("maf.key")] == ["k0", "k1", "k2", "k3", "k4"]
    assert [c.cred_id for c in store.list_credentials("maf.key", where={"suid": 33})] == ["k1", "k3"]
    assert [c.secret for c in store.list_credentials("maf.key", where={"suid": 32}, limit=2)] == [b"\x00", b"\x02"]
    assert store.list_credentials("maf.key", where={"suid": "32"}) == []  # strict JSON equality
    assert store.list_credentials("maf.key", where={"missing": None}) == []


def test_purge_expired(store: Store, clock) -> None:
    store.put_credential("ns", "old", b"x", expires_at=clock.now + timedelta(seconds=1))
    store.put_credential("ns", "keep", b"x")
    store.put_record("ns", "old", {}, expires_at=clock.now + timedelta(seconds=1))
    store.put_record("ns", "keep", {}, expires_at=clock.now + timedelta(days=1))
    assert store.purge_expired() == 0
    clock.advance(seconds=5)
    assert store.purge_expired() == 2
    assert store.purge_expired() == 0
    assert store.get_credential("ns", "keep") and store.get_record("ns", "keep")


# -- records ---------------------------------------------------------------------------------
def test_record_round_trip_and_versions(store: Store, clock) -> None:
    doc = {"esri": "r1", "esrv": "AAECAw==", "esrx": "20300101T120000", "esks": [1], "espa": [10, 11, 12]}
    r = store.put_record("esprim.rand", "r1", doc)
    assert r.version == 1 and r.doc == doc
    got = store.get_record("esprim.rand", "r1")
    assert got.doc == doc and got.version == 1 and got.created_at == clock.now
    clock.advance(seconds=1)
    r2 = store.put_record("esprim.rand", "r1", {"v": 2})
    assert r2.version == 2 and r2.created_at == r.created_at
    assert store.get_record("esprim.rand", "r1").updated_at == clock.now


def test_record_json_values(store: Store) -> None:
    for i, doc in enumerate([[1, 2], "text", 3, None, True, {"ü": ["x", {"y": 1.5}]}]):
        store.put_record("j", str(i), doc)
        assert store.get_record("j", str(i)).doc == doc


@pytest.mark.parametrize("bad", [b"bytes", {"k": b"x"}, float("nan"), {1: {"a": object()}}, "nul\x00"])
def test_record_rejects_non_json(store: Store, bad: object) -> None:
    with pytest.raises(InvalidValue):
        store.put_record("j", "bad", bad)
    assert store.find_record("j", "bad") is None


def test_record_if_absent(store: Store, clock) -> None:
    store.put_record("reg", "C1", {"a": 1}, if_absent=True)
    with pytest.raises(DuplicateError):
        store.put_record("reg", "C1", {"a": 2}, if_absent=True)
    assert store.get_record("reg", "C1").doc == {"a": 1}


def test_record_compare_and_set(store: Store, clock) -> None:
    store.put_record("reg", "C1", {"n": 0})
    r = store.update_record("reg", "C1", {"n": 1}, expected_version=1)
    assert r.version == 2 and r.doc == {"n": 1}
    with pytest.raises(VersionConflict) as ei:
        store.update_record("reg", "C1", {"n": 99}, expected_version=1)
    assert ei.value.rsc == ResponseStatusCode.CONFLICT and "version 2" in str(ei.value)
    assert store.get_record("reg", "C1").doc == {"n": 1}
    with pytest.raises(NotFound):
        store.update_record("reg", "nope", {}, expected_version=1)
    # expires_at: unchanged by default, settable, clearable
    exp = clock.now + timedelta(minutes=5)
    r = store.update_record("reg", "C1", {"n": 2}, expected_version=2, expires_at=exp)
    assert r.expires_at == exp
    r = store.update_record("reg", "C1", {"n": 3}, expected_version=3)
    assert store.get_record("reg", "C1").expires_at == exp
    r = store.update_record("reg", "C1", {"n": 4}, expected_version=4, expires_at=None)
    assert store.get_record("reg", "C1").expires_at is None


def test_record_version_never_reused_after_expiry(store: Store, clock) -> None:
    store.put_record("r", "x", {"g": 1}, expires_at=clock.now + timedelta(seconds=1))
    clock.advance(seconds=2)
    with pytest.raises(NotFound):
        store.update_record("r", "x", {}, expected_version=1)
    r = store.put_record("r", "x", {"g": 2}, if_absent=True)
    assert r.version == 2  # a stale CAS on version 1 cannot succeed against the new record
    with pytest.raises(VersionConflict):
        store.update_record("r", "x", {}, expected_version=1)
    assert r.created_at == clock.now


def test_record_take_delete(store: Store) -> None:
    store.put_record("tok", "t", {"suid": 21})
    assert store.take_record("tok", "t").doc == {"suid": 21}
    with pytest.raises(NotFound):
        store.take_record("tok", "t")
    store.put_record("tok", "u", {})
    store.update_record("tok", "u", {"x": 1}, expected_version=1)
    with pytest.raises(VersionConflict):
        store.delete_record("tok", "u", expected_version=1)
    assert store.delete_record("tok", "u", expected_version=2) is True
    assert store.delete_record("tok", "u", expected_version=2) is False
    assert store.delete_record("tok", "u") is False


def test_list_records(store: Store, clock) -> None:
    store.put_record("reg", "b", {"role": "ae", "n": 1})
    store.put_record("reg", "a", {"role": "cse"})
    store.put_record("reg", "c", {"role": "ae"}, expires_at=clock.now + timedelta(seconds=1))
    store.put_record("reg", "d", ["not", "a", "mapping"])
    assert [r.rec_id for r in store.list_records("reg")] == ["a", "b", "c", "d"]
    assert [r.rec_id for r in store.list_records("reg", where={"role": "ae"})] == ["b", "c"]
    assert [r.rec_id for r in store.list_records("reg", where={"role": "ae"}, limit=1)] == ["b"]
    clock.advance(seconds=1)
    assert [r.rec_id for r in store.list_records("reg", where={"role": "ae"})] == ["b"]


@pytest.mark.parametrize(("ns", "rid"), [("", "x"), ("ns", ""), ("n\x00s", "x"), ("ns", "a\x00")])
def test_bad_identifiers_rejected(store: Store, ns: str, rid: str) -> None:
    with pytest.raises(InvalidValue) as ei:
        store.put_record(ns, rid, {})
    assert ei.value.rsc == ResponseStatusCode.BAD_REQUEST
    with pytest.raises(InvalidValue):
        store.put_credential(ns, rid, b"x")


def test_naive_datetime_rejected(store: Store) -> None:
    with pytest.raises(InvalidValue, match="aware"):
        store.put_record("ns", "x", {}, expires_at=datetime(2030, 1, 1))


def test_non_bytes_secret_rejected(store: Store) -> None:
    with pytest.raises(InvalidValue):
        store.put_credential("ns", "x", "a string")  # type: ignore[arg-type]


# -- audit -----------------------------------------------------------------------------------
def test_audit_append_and_list(store: Store, clock) -> None:
    e1 = store.append_audit("mef-1", "enrol", "C-AE1", "ok", {"suid": 21, "targets": ["maf.example"]})
    clock.advance(seconds=1)
    e2 = store.append_audit("mef-2", "fetch", "C-AE2", "denied", {"reason": "not authorised"})
    assert e2.seq > e1.seq
    newest = store.list_audit()
    assert [e.seq for e in newest] == [e2.seq, e1.seq]
    assert newest[1].details == {"suid": 21, "targets": ["maf.example"]} and newest[1].ts == e1.ts
    assert [e.actor for e in store.list_audit(newest_first=False)] == ["mef-1", "mef-2"]
    assert [e.seq for e in store.list_audit(limit=1)] == [e2.seq]
    assert [e.subject for e in store.list_audit(actor="mef-2")] == ["C-AE2"]
    assert [e.seq for e in store.list_audit(after_seq=e1.seq)] == [e2.seq]


@pytest.mark.parametrize(
    "details",
    [{"key": b"\x01\x02"}, {"a": [1, {"b": bytearray(b"x")}]}, {"m": memoryview(b"x")}, {"o": object()}, {"t": {2: 1}}],
)
def test_audit_refuses_bytes_and_non_json(store: Store, details: dict) -> None:
    with pytest.raises(InvalidValue):
        store.append_audit("a", "b", "c", "d", details)
    assert store.list_audit() == []


def test_audit_is_append_only_in_the_database(store: Store) -> None:
    store.append_audit("a", "b", "c", "ok")
    with store._conn(write=True) as conn, pytest.raises(StoreError, match="append-only"):
        store._backend.execute(conn, "UPDATE m2msec_audit SET outcome = 'forged'")
    with store._conn(write=True) as conn, pytest.raises(StoreError, match="append-only"):
        store._backend.execute(conn, "DELETE FROM m2msec_audit")
    assert [e.outcome for e in store.list_audit()] == ["ok"]


# -- transactions ----------------------------------------------------------------------------
def test_transaction_commits_together(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_credential("mef.ke", "k", b"ke")
        tx.put_record("mef.reg", "k", {"state": "enrolled"})
        tx.append_audit("mef", "enrol", "k", "ok")
        assert tx.get_record("mef.reg", "k").version == 1  # reads its own writes
    assert store.get_credential("mef.ke", "k").secret == b"ke"
    assert store.get_record("mef.reg", "k").doc == {"state": "enrolled"}
    assert len(store.list_audit()) == 1


def test_transaction_rolls_back_on_exception(store: Store) -> None:
    store.put_record("tok", "t", {"single": "use"})
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.take_record("tok", "t")
            tx.put_credential("mef.ke", "k", b"ke")
            tx.put_record("mef.reg", "k", {})
            tx.append_audit("mef", "enrol", "k", "ok")
            raise RuntimeError("boom")
    assert store.get_record("tok", "t").doc == {"single": "use"}
    assert store.find_credential("mef.ke", "k") is None
    assert store.find_record("mef.reg", "k") is None
    assert store.list_audit() == []


def test_transaction_store_error_inside_rolls_back(store: Store) -> None:
    store.put_record("reg", "x", {})
    with pytest.raises(DuplicateError):
        with store.transaction() as tx:
            tx.put_record("reg", "y", {})
            tx.put_record("reg", "x", {}, if_absent=True)
    assert store.find_record("reg", "y") is None


def test_transaction_can_continue_after_caught_duplicate(store: Store) -> None:
    store.put_record("reg", "x", {})
    with store.transaction() as tx:
        with pytest.raises(DuplicateError):
            tx.put_record("reg", "x", {}, if_absent=True)
        tx.put_record("reg", "z", {})
    assert store.get_record("reg", "z").version == 1


def test_store_call_inside_transaction_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="transaction object"):
        with store.transaction() as tx:
            tx.put_record("reg", "a", {})
            store.get_record("reg", "a")
    with pytest.raises(StoreError, match="transaction object"):
        with store.transaction():
            with store.transaction():
                pass
    assert store.find_record("reg", "a") is None


def test_transaction_object_unusable_after_block(store: Store) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="finished"):
        tx.put_record("reg", "a", {})


# -- schema, opening, instances ---------------------------------------------------------------
def test_schema_idempotent(store_url: str, kek: KeyEncryptionKey) -> None:
    with open_store(store_url, kek) as s1:
        s1.put_credential("ns", "a", b"x")
    with open_store(store_url, kek) as s2:
        s2.init_schema()
        assert s2.schema_version() == 1
        assert s2.get_credential("ns", "a").secret == b"x"


def test_newer_schema_refused(store: Store, store_url: str, kek: KeyEncryptionKey) -> None:
    with store._conn(write=True) as conn:
        store._backend.execute(conn, "UPDATE m2msec_schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        open_store(store_url, kek)


def test_open_without_schema_when_not_creating(new_url: Callable[[], str]) -> None:
    with pytest.raises(StoreError, match="schema is missing"):
        open_store(new_url(), create_schema=False)


def test_store_without_kek_keeps_records_but_refuses_credentials(store_url: str) -> None:
    with open_store(store_url) as s:
        s.put_record("ns", "r", {})
        with pytest.raises(StoreError, match="without a key-encryption key"):
            s.put_credential("ns", "c", b"x")


def test_two_instances_see_each_others_writes(store_url: str, kek: KeyEncryptionKey, clock) -> None:
    a = open_store(store_url, kek, clock=clock)
    b = open_store(store_url, kek, clock=clock)
    try:
        a.put_credential("maf.key", "k1", b"shared", metadata={"owner": "a"})
        assert b.get_credential("maf.key", "k1").secret == b"shared"
        b.put_record("esprim.rand", "r", {"esrv": "x"})
        r = a.update_record("esprim.rand", "r", {"esrv": "y"}, expected_version=1)
        with pytest.raises(VersionConflict):
            b.update_record("esprim.rand", "r", {"esrv": "z"}, expected_version=1)
        assert b.take_record("esprim.rand", "r").version == r.version
        with pytest.raises(NotFound):
            a.take_record("esprim.rand", "r")
        a.append_audit("a", "x", "s", "ok")
        assert len(b.list_audit()) == 1
    finally:
        a.close()
        b.close()


def test_closed_store_refuses(store_url: str, kek: KeyEncryptionKey) -> None:
    s = open_store(store_url, kek)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get_record("ns", "x")


def test_bad_urls() -> None:
    for url in ("mysql://x", "sqlite://", "sqlite:///:memory:", "sqlite:///no/such/dir/x.db", "nothing"):
        with pytest.raises(StoreError):
            open_store(url)


@pytest.mark.postgres
def test_pg_unreachable_is_store_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError, match="cannot connect") as ei:
        open_store(f"postgresql://nobody:pw-secret@127.0.0.1:{port}/db?connect_timeout=2")
    assert "pw-secret" not in str(ei.value)


# -- concurrency (threads; processes in test_store_processes.py) -------------------------------
N_THREADS = 8


def _race(fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(N_THREADS)
    results: list[object] = [None] * N_THREADS

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_take_exactly_one_wins(store_url: str, kek: KeyEncryptionKey) -> None:
    stores = [open_store(store_url, kek) for _ in range(2)]  # two "instances"
    try:
        for round_ in range(3):
            stores[0].put_credential("tok", f"t{round_}", b"one-time")
            stores[0].put_record("tok", f"r{round_}", {"n": round_})
            res = _race(lambda i: stores[i % 2].take_credential("tok", f"t{round_}"))
            wins = [r for r in res if not isinstance(r, Exception)]
            assert len(wins) == 1 and wins[0].secret == b"one-time"  # type: ignore[union-attr]
            assert all(isinstance(r, NotFound) for r in res if isinstance(r, Exception)), res
            res = _race(lambda i: stores[i % 2].take_record("tok", f"r{round_}"))
            assert sum(not isinstance(r, Exception) for r in res) == 1
            assert all(isinstance(r, NotFound) for r in res if isinstance(r, Exception)), res
    finally:
        for s in stores:
            s.close()


def test_concurrent_if_absent_exactly_one_wins(store_url: str, kek: KeyEncryptionKey) -> None:
    stores = [open_store(store_url, kek) for _ in range(2)]
    try:
        res = _race(lambda i: stores[i % 2].put_credential("id", "never-reused", bytes([i]), if_absent=True))
        wins = [r for r in res if not isinstance(r, Exception)]
        assert len(wins) == 1
        assert all(isinstance(r, DuplicateError) for r in res if isinstance(r, Exception)), res
        assert stores[1].get_credential("id", "never-reused").secret == wins[0].secret  # type: ignore[union-attr]
    finally:
        for s in stores:
            s.close()


def test_concurrent_compare_and_set_loses_no_update(store_url: str, kek: KeyEncryptionKey) -> None:
    stores = [open_store(store_url, kek) for _ in range(2)]
    stores[0].put_record("ctr", "c", {"n": 0})
    per_thread = 5

    def bump(i: int) -> int:
        s = stores[i % 2]
        conflicts = 0
        for _ in range(per_thread):
            while True:
                r = s.get_record("ctr", "c")
                try:
                    s.update_record("ctr", "c", {"n": r.doc["n"] + 1}, expected_version=r.version)
                    break
                except VersionConflict:
                    conflicts += 1
        return conflicts

    try:
        res = _race(bump)
        assert not any(isinstance(r, Exception) for r in res), res
        final = stores[1].get_record("ctr", "c")
        assert final.doc == {"n": N_THREADS * per_thread}
        assert final.version == 1 + N_THREADS * per_thread
    finally:
        for s in stores:
            s.close()


def test_concurrent_open_creates_schema_once(new_url: Callable[[], str], kek: KeyEncryptionKey) -> None:
    url = new_url()
    res = _race(lambda i: open_store(url, kek))
    assert not any(isinstance(r, Exception) for r in res), res
    try:
        res[0].put_record("ns", "x", {})  # type: ignore[union-attr]
        assert all(s.schema_version() == 1 for s in res)  # type: ignore[union-attr]
        assert res[-1].get_record("ns", "x").version == 1  # type: ignore[union-attr]
    finally:
        for s in res:
            s.close()  # type: ignore[union-attr]
