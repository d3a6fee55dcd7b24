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

import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import pytest
from _mafhelp import AE1, AE2, AE3, AE4, KEK, MAF, FakeClock, make_service
from _quota_support import (
    BACKENDS,
    HOUR,
    PauseAtAudit,
    assert_service_refuses,
    deregister_key,
    forget_total,
    lock_waiters,
    no_exporter,
    peer,
    register_clients,
    register_key,
    two_instances,
)

from m2msec.errors import M2MSecError
from m2msec.maf import service as service_module
from m2msec.maf.protocol import (
    KeyRegistrationUpdateRequest,
    MAFError,
    Procedure,
)
from m2msec.maf.service import NS, KeyTotalExceeded, MAFService
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import Store, StoreError, open_store
from m2msec.store.store import Transaction


def update(svc: MAFService, clock: FakeClock, rel: str, life: timedelta, cid: str = AE1) -> Any:
    return svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(cid),
                   KeyRegistrationUpdateRequest(MAF, rel, expiration_time=clock.now + life), no_exporter)


def consistent(store: Store) -> None:
    """The shards and the client records count exactly the live Key Registrations, with their
    expiries; every live registration has its key value."""
    regs = store.list_records(NS.KEY_REG)
    now = f"{service_module._epoch_us(store._clock()):014x}"  # expired entries are dropped lazily
    want = sorted(f"{service_module._epoch_us(r.expires_at):014x}" for r in regs)
    have = sorted(e for r in store.list_records(NS.QUOTA_TOTAL)
                  for e in (r.doc["exp"][i:i + 14] for i in range(0, len(r.doc["exp"]), 14)) if e > now)
    assert have == want
    slots = sorted(s for r in store.list_records(NS.QUOTA)
                   for s in (r.doc["slots"][i:i + 46] for i in range(0, len(r.doc["slots"]), 46)) if s[:14] > now)
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


@pytest.fixture(params=BACKENDS)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimpleNamespace]:
    with two_instances(request, tmp_path, max_keys_total=512) as t:
        yield t


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
    th.start(other, (lambda: deregister_key(t.a, rel)) if other == "deregistration" else (lambda: t.a.revoke_key(rel)))
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
            return lambda: deregister_key(svc, k1)
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
                r = outcome(lambda rel=rel: deregister_key(svc, rel))
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


@pytest.mark.parametrize("removal", ["deregistration", "revoke"])
def test_a_removal_during_the_one_time_count_frees_its_slot(two: SimpleNamespace, removal: str) -> None:
    """Instance A's first registration counts the old keys and is held before its commit;
    instance B de-registers (revokes) one of those keys meanwhile.  B waits for A's count to
    commit (it needs the ``tracked-total`` marker A inserted) and then removes the key's entry:
    afterwards the shards count exactly the live keys (no slot leaked until expiry)."""
    t = two
    old = [register_key(t.a, t.clock, cid) for cid in (AE1, AE2, AE3)]
    forget_total(t.sa)
    a = make_service(t.sa, t.clock, provision=False, max_keys_total=512, key_cache_ttl=timedelta(0))
    b = make_service(t.sb, t.clock, provision=False, max_keys_total=512, key_cache_ttl=timedelta(0))
    with PauseAtAudit(t.sa) as pause:
        th = Threads()
        th.start("count", lambda: register_key(a, t.clock, AE4))
        assert pause.reached.wait(20)  # A counted the old keys and holds its transaction
        th.start(removal, (lambda: deregister_key(b, old[0], AE1)) if removal == "deregistration"
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


# ------------------------------------------------------------------ refusals at the limit: the "full" note


class ShardReads:
    """Counts the store statements that read ``maf.quotatotal`` (observes the real store)."""

    def __init__(self, store: Store) -> None:
        self.backend = store._backend
        self.orig = self.backend.execute
        self.n = 0

    def __enter__(self) -> Self:
        def spy(conn: Any, sql: str, params: Any = ()) -> Any:
            if sql.startswith("SELECT") and "m2msec_records" in sql and NS.QUOTA_TOTAL in tuple(params):
                self.n += 1
            return self.orig(conn, sql, params)

        self.backend.execute = spy  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.execute = self.orig  # type: ignore[method-assign]


@pytest.fixture()
def full(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """One instance, ``max_keys_total`` 3, full: AE1 holds a 10-second key, AE2 and AE3 hour keys."""
    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KEK, clock=clock)
    svc = make_service(store, clock, max_keys_total=3, total_full_hold=timedelta(seconds=60))
    register_clients(svc, clock)
    keys = [register_key(svc, clock, AE1, timedelta(seconds=10)), register_key(svc, clock, AE2),
            register_key(svc, clock, AE3)]
    try:
        yield SimpleNamespace(svc=svc, store=store, clock=clock, keys=keys)
    finally:
        store.close()


def test_a_refusal_at_the_limit_notes_it_and_the_next_ones_read_no_shard(full: SimpleNamespace) -> None:
    f = full
    with ShardReads(f.store) as reads:
        with pytest.raises(KeyTotalExceeded, match="holds 3 live"):
            register_key(f.svc, f.clock, AE4)
        assert reads.n >= 2  # the first shard, then all of them
        first = reads.n
        for _ in range(5):
            with pytest.raises(KeyTotalExceeded, match="max_keys_total = 3") as ei:
                register_key(f.svc, f.clock, AE4)
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert reads.n == first  # answered from the note
    assert f.svc.total_full_hits == 5
    refusals = [e for e in f.store.list_audit(actor="maf", limit=6) if e.outcome == "refused 4103"]
    assert len(refusals) == 6 and all("max_keys_total" in e.details["reason"] for e in refusals)
    assert len(f.store.list_records(NS.KEY_ID)) == 3 and f.svc.key_total() == 3  # nothing written
    consistent(f.store)


def test_the_client_quota_is_still_checked_before_the_note(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KEK, clock=clock)
    try:
        svc = make_service(store, clock, max_keys_total=2, max_keys_per_client=2)
        register_clients(svc, clock)
        register_key(svc, clock, AE1)
        register_key(svc, clock, AE1)
        with pytest.raises(KeyTotalExceeded):
            register_key(svc, clock, AE2)  # the note is taken
        with pytest.raises(Exception) as ei:
            register_key(svc, clock, AE1)
        assert not isinstance(ei.value, KeyTotalExceeded) and "max_keys_per_client" in str(ei.value)
    finally:
        store.close()


@pytest.mark.parametrize("change", ["deregistration", "revoke", "update"])
def test_a_local_removal_or_update_ends_the_note(full: SimpleNamespace, change: str) -> None:
    f = full
    with pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)
    if change == "deregistration":
        deregister_key(f.svc, f.keys[1], AE2)
    elif change == "revoke":
        assert f.svc.revoke_key(f.keys[1])
    else:  # shortened to one second: the slot is free once it expires
        update(f.svc, f.clock, f.keys[1], timedelta(seconds=1), AE2)
        f.clock.advance(seconds=1)
    with ShardReads(f.store) as reads:
        register_key(f.svc, f.clock, AE4)  # at once, not after total_full_hold (60 s here)
        assert reads.n >= 1
    assert f.svc.total_full_hits == 0
    with pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)  # full again
    consistent(f.store)


def test_a_refused_update_ends_the_note_too(full: SimpleNamespace) -> None:
    """A change that did not commit frees nothing, but ends the note all the same (conservative)."""
    f = full
    with pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)
    with pytest.raises(MAFError):
        update(f.svc, f.clock, f.keys[1], HOUR, AE3)  # not AE3's key: 4103
    with ShardReads(f.store) as reads, pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)
    assert reads.n >= 2 and f.svc.total_full_hits == 0


def test_the_note_ends_at_the_earliest_expiry(full: SimpleNamespace) -> None:
    f = full
    with pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)
    f.clock.advance(seconds=9, microseconds=999_999)
    with pytest.raises(KeyTotalExceeded):
        register_key(f.svc, f.clock, AE4)
    assert f.svc.total_full_hits == 1
    f.clock.advance(microseconds=1)  # AE1's key expired: its slot is free although the hold (60 s) is not over
    register_key(f.svc, f.clock, AE4)
    assert f.svc.key_total() == 3


def test_a_zero_hold_reads_the_shards_every_time(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KEK, clock=clock)
    try:
        svc = make_service(store, clock, max_keys_total=1, total_full_hold=timedelta(0))
        register_clients(svc, clock)
        register_key(svc, clock, AE1)
        with ShardReads(store) as reads:
            for _ in range(3):
                with pytest.raises(KeyTotalExceeded, match="holds 1 live"):
                    register_key(svc, clock, AE2)
        assert reads.n >= 6 and svc.total_full_hits == 0
    finally:
        store.close()


@pytest.mark.parametrize("bad", [timedelta(seconds=-1), timedelta(seconds=61), 1.0, None])
def test_the_service_refuses_a_bad_hold(tmp_path: Path, bad: Any) -> None:
    assert_service_refuses(tmp_path, total_full_hold=bad)


def test_another_instance_freeing_a_slot_is_seen_within_the_hold(two: SimpleNamespace) -> None:
    """Instance A noted "full"; instance B de-registers a key.  A refuses for at most
    ``total_full_hold`` (0.4 s here, real time), then admits exactly one key - never more than
    the limit."""
    t = two
    for svc in (t.a, t.b):
        svc.max_keys_total = 2
    a = make_service(t.sa, t.clock, provision=False, max_keys_total=2, key_cache_ttl=timedelta(0),
                     total_full_hold=timedelta(seconds=0.4))
    k1 = register_key(a, t.clock, AE1)
    register_key(a, t.clock, AE2)
    with pytest.raises(KeyTotalExceeded):
        register_key(a, t.clock, AE3)
    deregister_key(t.b, k1, AE1)  # on the other instance: A's note does not know
    freed = time.monotonic()
    admitted_after = None
    while time.monotonic() - freed < 5:
        try:
            register_key(a, t.clock, AE3)
            admitted_after = time.monotonic() - freed
            break
        except KeyTotalExceeded:
            time.sleep(0.02)
    assert admitted_after is not None and admitted_after <= 0.4 + 0.3, admitted_after
    assert a.total_full_hits >= 1
    with pytest.raises(KeyTotalExceeded):
        register_key(t.b, t.clock, AE4)
    with pytest.raises(KeyTotalExceeded):
        register_key(a, t.clock, AE4)
    consistent(t.sa)
    assert a.key_total() == 2


@pytest.mark.postgres
def test_postgresql_a_full_read_that_overlaps_a_local_removal_takes_no_note(pg_server: Any) -> None:
    """A registration reads every shard (all full) and is held right after that read; a
    de-registration on the same instance commits meanwhile.  The registration is refused (what
    it read was full) but must not note "full": the next registration reads again and is
    admitted at once."""
    clock = FakeClock()
    url = pg_server.create_database()
    store = open_store(url, KEK, clock=clock)
    try:
        svc = make_service(store, clock, max_keys_total=2, key_cache_ttl=timedelta(0),
                           total_full_hold=timedelta(seconds=60))
        register_clients(svc, clock)
        k1 = register_key(svc, clock, AE1)
        register_key(svc, clock, AE2)
        backend, orig = store._backend, store._backend.execute
        after_read, go = threading.Event(), threading.Event()

        def spy(conn: Any, sql: str, params: Any = ()) -> Any:
            res = orig(conn, sql, params)
            if ("ORDER BY rec_id" in sql and NS.QUOTA_TOTAL in tuple(params)
                    and threading.current_thread().name == "full-read"):
                after_read.set()
                assert go.wait(20)
            return res

        backend.execute = spy  # type: ignore[method-assign]
        try:
            th = Threads()
            t = threading.Thread(target=lambda: th.results.__setitem__("r", outcome(
                lambda: register_key(svc, clock, AE3))), name="full-read", daemon=True)
            t.start()
            assert after_read.wait(20)
            deregister_key(svc, k1, AE1)  # commits while the registration is held after its full read
            go.set()
            t.join(20)
        finally:
            backend.execute = orig  # type: ignore[method-assign]
        assert isinstance(th.results["r"], KeyTotalExceeded)
        register_key(svc, clock, AE4)  # read again: the freed slot
        assert svc.total_full_hits == 0
        consistent(store)
    finally:
        store.close()
