"""Concurrent procedures on one Key Registration and the MAF-wide quota (TS-0003 8.8.2.7,
8.8.2.9, 8.8.2.10; ``max_keys_total``, profile F14).

Review points checked here, on SQLite and PostgreSQL with two service instances on one
database and held transactions:

* lock order: Key Registration Update, Key De-Registration and ``revoke_key`` on one key take
  its rows in one order (``maf.keyreg`` first), so they never deadlock; a deadlock or
  serialization failure PostgreSQL reports anyway is answered 4105 "concurrent change" (never
  5000), nothing written;
* a key de-registered (or revoked) twice at once frees its slot once (the second sees it gone);
* the one-time count of keys registered before the MAF-wide quota and a concurrent
  de-registration on another instance: the de-registration waits for the count's commit and
  then frees the slot (no leaked slot);
* the "full" note: a refusal at the limit is answered without reading every shard again while
  the note holds (until the earliest expiry, at most ``total_full_hold``), cleared by a
  de-registration, revoke or update in this process.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import pytest
from _mafhelp import ADMIN, AE1, AE2, AE3, AE4, KEK, MAF, FakeClock, make_service

from m2msec.errors import M2MSecError
from m2msec.maf import service as service_module
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    MAFError,
    Procedure,
)
from m2msec.maf.service import NS, MAFPeer, MAFService, _Expiries
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import Store, StoreError, open_store
from m2msec.store.store import Transaction

HOUR = timedelta(hours=1)
CLIENTS = (AE1, AE2, AE3, AE4)


def peer(cid: str) -> MAFPeer:
    return MAFPeer("km", cid, f"11-{cid}", kmid=None)


def no_exporter() -> tuple[bytes, bytes]:
    raise AssertionError("no exporter")


def register_clients(svc: MAFService, clock: FakeClock) -> None:
    for cid in CLIENTS:
        svc.run(Procedure.CLIENT_REGISTRATION, peer(cid),
                ClientRegistrationRequest(MAF, clock.now + timedelta(days=1), ADMIN), no_exporter)


def register_key(svc: MAFService, clock: FakeClock, cid: str = AE1, life: timedelta = HOUR) -> str:
    rsp = svc.run(Procedure.KEY_REGISTRATION, peer(cid),
                  KeyRegistrationRequest(MAF, clock.now + life, ADMIN, SUID.MAF_ESPRIM, target_ids=(AE2,),
                                         key_value=os.urandom(32)), no_exporter)
    return str(rsp.relative_key_id)


def update(svc: MAFService, clock: FakeClock, rel: str, life: timedelta, cid: str = AE1) -> Any:
    return svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(cid),
                   KeyRegistrationUpdateRequest(MAF, rel, expiration_time=clock.now + life), no_exporter)


def dereg(svc: MAFService, rel: str, cid: str = AE1) -> Any:
    return svc.run(Procedure.KEY_DEREGISTRATION, peer(cid), KeyDeregistrationRequest(MAF, rel), no_exporter)


def counted(store: Store) -> int:
    return sum(len(_Expiries.of(r.doc)) for r in store.list_records(NS.QUOTA_TOTAL))


def consistent(store: Store) -> None:
    """The shards and the client records count exactly the live Key Registrations, with their
    expiries; every live registration has its key value."""
    regs = store.list_records(NS.KEY_REG)
    want = sorted(f"{service_module._epoch_us(r.expires_at):014x}" for r in regs)
    have = sorted(e for r in store.list_records(NS.QUOTA_TOTAL)
                  for e in (r.doc["exp"][i:i + 14] for i in range(0, len(r.doc["exp"]), 14)))
    assert have == want
    slots = sorted(s for r in store.list_records(NS.QUOTA)
                   for s in (r.doc["slots"][i:i + 46] for i in range(0, len(r.doc["slots"]), 46)))
    assert slots == sorted(f"{service_module._epoch_us(r.expires_at):014x}{r.rec_id}" for r in regs)
    assert sorted(c.cred_id for c in store.list_credentials(NS.KEY)) == sorted(r.rec_id for r in regs)
    for r in regs:
        assert store.get_credential(NS.KEY, r.rec_id).expires_at == r.expires_at


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        fn()
        return "ok"
    except M2MSecError as exc:
        return exc


def rsc_of(result: Any) -> Any:
    return "ok" if result == "ok" else int(result.rsc)


class Held:
    """A transaction on another thread that has written some rows and waits for :meth:`release`
    before it commits: every other transaction that needs one of those rows (PostgreSQL) or the
    write lock (SQLite) waits for it."""

    def __init__(self, store: Store, body: Callable[[Transaction], None]) -> None:
        self.ready = threading.Event()
        self._go = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with store.transaction() as tx:
                    body(tx)
                    self.ready.set()
                    assert self._go.wait(30)
            except BaseException as exc:  # noqa: BLE001 - checked by the test
                self.error = exc
                self.ready.set()

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        assert self.ready.wait(30) and self.error is None, self.error

    def release(self) -> None:
        self._go.set()
        self._t.join(30)


def touch(ns: str, rec_id: str) -> Callable[[Transaction], None]:
    """A body for :class:`Held`: rewrite one record as it is (takes its row lock, bumps its version)."""
    def body(tx: Transaction) -> None:
        rec = tx.get_record(ns, rec_id)
        tx.update_record(ns, rec_id, rec.doc, expected_version=rec.version)
    return body


def lock_waiters(url: str | None) -> int:
    """PostgreSQL: sessions of this database waiting for a lock."""
    if url is None:
        return 0
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0


def wait_waiters(url: str | None, n: int) -> None:
    if url is None:  # SQLite: the threads wait for the write lock; give them time to get there
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 20
    while lock_waiters(url) < n:
        assert time.monotonic() < deadline, f"fewer than {n} sessions waiting for a lock"
        time.sleep(0.02)


class Threads:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        t = threading.Thread(target=lambda: self.results.__setitem__(name, outcome(fn)), daemon=True)
        t.start()
        self._threads.append(t)

    def join(self) -> dict[str, Any]:
        for t in self._threads:
            t.join(60)
            assert not t.is_alive()
        return self.results


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimpleNamespace]:
    clock = FakeClock()
    if request.param == "sqlite":
        url, pg = f"sqlite:///{tmp_path / 'maf.db'}", None
    else:
        url = pg = request.getfixturevalue("pg_server").create_database()
    sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, max_keys_total=512, key_cache_ttl=timedelta(0))
    b = make_service(sb, clock, provision=False, max_keys_total=512, key_cache_ttl=timedelta(0))
    register_clients(a, clock)
    try:
        yield SimpleNamespace(a=a, b=b, sa=sa, sb=sb, clock=clock, pg=pg)
    finally:
        sb.close()
        sa.close()


class PauseAtAudit:
    """Holds the first transaction on ``store`` that writes an audit record at that INSERT
    (after its other writes, before its commit) until :attr:`release` is set."""

    def __init__(self, store: Store) -> None:
        self.backend = store._backend
        self.orig = self.backend.execute
        self.reached = threading.Event()
        self.release = threading.Event()

    def __enter__(self) -> Self:
        def spy(conn: Any, sql: str, params: Any = ()) -> Any:
            if sql.startswith("INSERT INTO m2msec_audit") and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(20)
            return self.orig(conn, sql, params)

        self.backend.execute = spy  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.execute = self.orig  # type: ignore[method-assign]
        self.release.set()


# ------------------------------------------------------------------ lock order


@pytest.mark.parametrize("other", ["deregistration", "revoke"])
def test_an_update_and_a_deregistration_of_one_key_do_not_deadlock(two: SimpleNamespace, other: str) -> None:
    """Instance B updates the key's expiry while instance A de-registers (or revokes) it; a held
    transaction on the client's quota record makes both reach the rows they share at once.
    Before one lock order, the update held the key value and waited for the Key Registration the
    de-registration held, which waited for the key value: PostgreSQL aborted one with 5000."""
    t = two
    rel = register_key(t.a, t.clock)
    held = Held(t.sa, touch(NS.QUOTA, AE1))
    th = Threads()
    th.start("update", lambda: update(t.b, t.clock, rel, 2 * HOUR))
    wait_waiters(t.pg, 1)
    th.start(other, (lambda: dereg(t.a, rel)) if other == "deregistration" else (lambda: t.a.revoke_key(rel)))
    wait_waiters(t.pg, 2)
    held.release()
    res = th.join()
    codes = {k: rsc_of(v) for k, v in res.items()}
    assert 5000 not in codes.values(), res
    assert codes["update"] in ("ok", 4004, 4105) and codes[other] in ("ok", 4004, 4105), res
    assert "ok" in codes.values(), res
    for k, v in res.items():
        if v != "ok":
            assert isinstance(v, MAFError) and "concurrent change" in str(v) or v.rsc == RSC.NOT_FOUND, (k, v)
    consistent(t.sa)
    gone = t.sa.find_record(NS.KEY_REG, rel) is None
    assert gone == (codes[other] == "ok")
    assert t.a.key_total() == (0 if gone else 1)


@pytest.mark.postgres
def test_postgresql_a_deadlock_is_answered_4105_and_nothing_is_written(pg_server: Any, tmp_path: Path) -> None:
    """Whatever lock cycle PostgreSQL breaks (here one made on purpose with a held transaction
    that takes the shard first and then wants the Key Registration), the aborted procedure's
    caller gets 4105 "concurrent change", audited, and its changes are rolled back.  The cycle:
    a held transaction takes the key's shard, the update (holding the key value) waits for it,
    then the held transaction wants the key value; PostgreSQL aborts the update (it waited
    first, so its deadlock check runs first)."""
    clock = FakeClock()
    url = pg_server.create_database()
    store = open_store(url, KEK, clock=clock)
    try:
        svc = make_service(store, clock, max_keys_total=512, key_cache_ttl=timedelta(0))
        register_clients(svc, clock)
        rel = register_key(svc, clock)
        shard = str(store.get_record(NS.KEY_REG, rel).doc["quotaShard"])
        before = store.get_record(NS.KEY_REG, rel)
        locked, go = threading.Event(), threading.Event()

        def cycle(tx: Transaction) -> None:
            touch(NS.QUOTA_TOTAL, shard)(tx)  # the shard row first ...
            locked.set()
            go.wait(30)
            cred = tx.get_credential(NS.KEY, rel)  # ... then the key value the update holds
            tx.put_credential(NS.KEY, rel, cred.secret, metadata=cred.metadata, expires_at=cred.expires_at)

        holder = threading.Thread(target=lambda: _hold(store, cycle), daemon=True)
        holder.start()
        assert locked.wait(20)
        th = Threads()
        th.start("update", lambda: update(svc, clock, rel, 2 * HOUR))
        wait_waiters(url, 1)  # the update holds the key value and waits for the shard
        go.set()
        res = th.join()
        holder.join(30)
        err = res["update"]
        assert isinstance(err, MAFError) and err.rsc is RSC.CONFLICT, err
        assert "concurrent change" in str(err)
        after = store.get_record(NS.KEY_REG, rel)
        assert after.expires_at == before.expires_at  # the update left nothing behind
        consistent(store)
        last = next(e for e in store.list_audit(actor="maf", limit=5) if e.action == "key_registration_update")
        assert last.outcome == "refused 4105"
    finally:
        store.close()


def _hold(store: Store, body: Callable[[Transaction], None]) -> None:
    try:
        with store.transaction() as tx:
            body(tx)
    except StoreError:
        pass  # the deadlock victim may be this one: the test checks the procedure's answer


# ------------------------------------------------------------------ one key, two removals


@pytest.mark.parametrize("first,second", [("deregistration", "deregistration"), ("deregistration", "revoke"),
                                          ("revoke", "revoke"), ("update", "revoke")])
def test_a_key_removed_twice_at_once_frees_one_slot(two: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                     first: str, second: str) -> None:
    """Two keys with one expiry counted in one shard; the first is removed twice at once (two
    instances) - the shard must still count the second key (entries with one expiry are
    interchangeable, so a second removal would free the other key's slot)."""
    t = two
    ids = iter([bytes(16), bytes(15) + b"\x01"])  # RelativeKeyIDs of shard 0 (2 slots each at 512)
    monkeypatch.setattr(service_module, "secrets",
                        SimpleNamespace(token_bytes=lambda _n: next(ids), token_hex=service_module.secrets.token_hex))
    k1 = register_key(t.a, t.clock)
    k2 = register_key(t.a, t.clock)
    recs = [t.sa.get_record(NS.KEY_REG, k) for k in (k1, k2)]
    assert recs[0].expires_at == recs[1].expires_at and {r.doc["quotaShard"] for r in recs} == {0}

    def op(name: str, svc: MAFService) -> Callable[[], Any]:
        if name == "deregistration":
            return lambda: dereg(svc, k1)
        if name == "revoke":
            return lambda: svc.revoke_key(k1)
        return lambda: update(svc, t.clock, k1, 2 * HOUR)

    held = Held(t.sa, touch(NS.QUOTA, AE1))
    th = Threads()
    th.start("first", op(first, t.a))
    wait_waiters(t.pg, 1)
    th.start("second", op(second, t.b))
    wait_waiters(t.pg, 2)
    held.release()
    res = th.join()
    codes = [rsc_of(res["first"]), rsc_of(res["second"])]
    assert 5000 not in codes and set(codes) <= {"ok", 4004, 4105}, res
    assert t.sa.find_record(NS.KEY_REG, k1) is None or first == "update"
    consistent(t.sa)
    assert t.a.key_total() == len(t.sa.list_records(NS.KEY_REG))


def test_many_concurrent_updates_removals_and_registrations_stay_consistent(two: SimpleNamespace) -> None:
    """Four threads over two instances run updates, de-registrations, revokes and registrations
    on a few shared keys: every answer is ok, 4004, 4105 or 4103, never 5000, and afterwards the
    shards and client records count exactly the live keys."""
    t = two
    t.a.max_keys_total = t.b.max_keys_total = 12
    keys = [register_key(t.a, t.clock, AE1) for _ in range(6)]
    lock = threading.Lock()
    codes: list[Any] = []
    errors: list[Any] = []

    def worker(seed: int, svc: MAFService) -> None:
        rnd = random.Random(seed)
        for _ in range(25):
            with lock:
                rel = rnd.choice(keys)
            op = rnd.choice(["update", "update", "dereg", "revoke", "register"])
            if op == "update":
                life = timedelta(minutes=rnd.randint(1, 120))
                r = outcome(lambda rel=rel, life=life: update(svc, t.clock, rel, life))
            elif op == "dereg":
                r = outcome(lambda rel=rel: dereg(svc, rel))
            elif op == "revoke":
                r = outcome(lambda rel=rel: svc.revoke_key(rel))
            else:
                try:
                    new = register_key(svc, t.clock, AE1, timedelta(minutes=rnd.randint(1, 120)))
                    with lock:
                        keys.append(new)
                    r = "ok"
                except M2MSecError as exc:
                    r = exc
            with lock:
                codes.append(rsc_of(r))
                if rsc_of(r) not in ("ok", 4004, 4105, 4103):
                    errors.append(r)

    threads = [threading.Thread(target=worker, args=(i, svc)) for i, svc in enumerate((t.a, t.b, t.a, t.b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    assert len(codes) == 100
    consistent(t.sa)
    assert t.a.key_total() == len(t.sa.list_records(NS.KEY_REG)) <= 12


# ------------------------------------------------------------------ the one-time count


def _forget_total(store: Store) -> None:
    """What an m2msec without the MAF-wide quota left behind: no shards, no marker, no quotaShard."""
    with store.transaction() as tx:
        for r in tx.list_records(NS.QUOTA_TOTAL):
            tx.delete_record(NS.QUOTA_TOTAL, r.rec_id)
        tx.delete_record(NS.QUOTA_META, "tracked-total")
        for r in tx.list_records(NS.KEY_REG):
            doc = {k: v for k, v in r.doc.items() if k != "quotaShard"}
            tx.update_record(NS.KEY_REG, r.rec_id, doc, expected_version=r.version)


@pytest.mark.parametrize("removal", ["deregistration", "revoke"])
def test_a_removal_during_the_one_time_count_frees_its_slot(two: SimpleNamespace, removal: str) -> None:
    """Instance A's first registration counts the old keys and is held before its commit;
    instance B de-registers (revokes) one of those keys meanwhile.  B waits for A's count to
    commit (it needs the ``tracked-total`` marker A inserted) and then removes the key's entry:
    afterwards the shards count exactly the live keys (no slot leaked until expiry)."""
    t = two
    old = [register_key(t.a, t.clock, cid) for cid in (AE1, AE2, AE3)]
    _forget_total(t.sa)
    a = make_service(t.sa, t.clock, provision=False, max_keys_total=512, key_cache_ttl=timedelta(0))
    b = make_service(t.sb, t.clock, provision=False, max_keys_total=512, key_cache_ttl=timedelta(0))
    with PauseAtAudit(t.sa) as pause:
        th = Threads()
        th.start("count", lambda: register_key(a, t.clock, AE4))
        assert pause.reached.wait(20)  # A counted the old keys and holds its transaction
        th.start(removal, (lambda: dereg(b, old[0], AE1)) if removal == "deregistration"
                 else (lambda: b.revoke_key(old[0])))
        time.sleep(0.5)
        assert th._threads[1].is_alive()  # PostgreSQL: on the marker A inserted; SQLite: the write lock
        pause.release.set()
        res = th.join()
    assert res == {"count": "ok", removal: "ok"}, res
    consistent(t.sa)
    assert a.key_total() == 3 == len(t.sa.list_records(NS.KEY_REG))


# ------------------------------------------------------------------ the store's answer to an aborted transaction


@pytest.mark.postgres
def test_postgresql_store_reports_a_deadlock_as_transaction_conflict(pg_server: Any) -> None:
    """Two store transactions that take two records in opposite orders: PostgreSQL aborts one,
    the store raises :class:`TransactionConflict` (4105, not a VersionConflict: the transaction
    is over) and the other commits."""
    from m2msec.store import TransactionConflict, VersionConflict

    store = open_store(pg_server.create_database(), KEK)
    try:
        for r in ("r1", "r2"):
            store.put_record("t.race", r, {"n": 0})
        first = threading.Barrier(2, timeout=20)
        errors: dict[str, BaseException] = {}

        def worker(name: str, order: tuple[str, str]) -> None:
            try:
                with store.transaction() as tx:
                    touch("t.race", order[0])(tx)
                    first.wait()
                    touch("t.race", order[1])(tx)
            except StoreError as exc:
                errors[name] = exc

        ts = [threading.Thread(target=worker, args=(n, o)) for n, o in (("x", ("r1", "r2")), ("y", ("r2", "r1")))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert len(errors) == 1, errors
        err = next(iter(errors.values()))
        assert isinstance(err, TransactionConflict) and not isinstance(err, VersionConflict)
        assert err.rsc is RSC.CONFLICT and "40P01" in str(err)
        assert sorted(store.get_record("t.race", r).version for r in ("r1", "r2")) == [2, 2]  # one commit
    finally:
        store.close()


def test_postgresql_serialization_failure_maps_to_transaction_conflict() -> None:
    psycopg = pytest.importorskip("psycopg")
    from m2msec.store import TransactionConflict
    from m2msec.store._backends import PostgresBackend

    b = PostgresBackend("postgresql://127.0.0.1:1/none")
    for cls, state in ((psycopg.errors.SerializationFailure, "40001"), (psycopg.errors.DeadlockDetected, "40P01")):
        err = b.wrap(cls("could not serialize access"))
        assert isinstance(err, TransactionConflict) and err.rsc is RSC.CONFLICT and state in str(err)
    other = b.wrap(psycopg.errors.UniqueViolation("duplicate key"))
    assert type(other) is StoreError and other.rsc is RSC.INTERNAL_SERVER_ERROR
