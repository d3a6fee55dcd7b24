"""MAF-wide Key Registration quota ``max_keys_total`` (TS-0003 8.8.2.7 step 5 authorization; profile F13).

Three levels: the shard record's packed expiry multiset against a Counter model and the
capacity split; the service (refusal audited and rolled back, de-registration, revoke, expiry
and update, the per-client quota checked first, the one-time count of keys registered before
the MAF-wide quota existed, configuration bounds); two service instances on one SQLite file
and on one PostgreSQL database (held transactions interleaved for the last slot, a free-for-all
of threads that must stop at exactly the limit, and - PostgreSQL - a registration that is not
held up by another instance's uncommitted one); and real MAF servers over TLS-PSK (the refusal
on the wire, ``maf.toml``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _mafhelp import (
    ADMIN,
    AE1,
    AE2,
    AE3,
    AE4,
    KEK,
    MAF,
    FakeClock,
    connected,
    make_service,
    make_store,
    run,
    running,
)
from _quota_support import (
    BACKENDS,
    CLIENTS,
    HOUR,
    PauseAtAudit,
    assert_service_refuses,
    counted,
    forget_total,
    maf_toml,
    no_exporter,
    peer,
    register_clients,
    register_key,
    two_instances,
)
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import ParseError
from m2msec.maf import MAFResponseError
from m2msec.maf import service as service_module
from m2msec.maf.protocol import (
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    Procedure,
    encode_body,
)
from m2msec.maf.server import load_config
from m2msec.maf.service import (
    MAX_KEYS_TOTAL_DEFAULT,
    NS,
    TOTAL_SHARDS,
    KeyQuotaExceeded,
    KeyTotalExceeded,
    MAFService,
    _Expiries,
)
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import Store, StoreError, open_store


def rows(store: Store) -> dict[str, int]:
    return {ns: len(store.list_records(ns)) for ns in (NS.KEY_REG, NS.KEY_ID)} | {
        "keys": len(store.list_credentials(NS.KEY))}


# ------------------------------------------------------------------ the shard record, the split


def test_expiries_known_entries() -> None:
    e = _Expiries("")
    for t in (0x20, 0x10, 0x10):
        e.put(t)
    assert e.text == "00000000000010" "00000000000010" "00000000000020" and len(e) == 3
    assert e.doc() == {"exp": e.text}
    assert e.remove(0x10) is True and e.text == "00000000000010" "00000000000020"
    assert e.remove(0x11) is False and len(e) == 2
    e.drop_expired(0x10)  # an entry whose expiry is "now" has expired
    assert e.text == "00000000000020"
    e.drop_expired(0x1F)
    assert len(e) == 1


@pytest.mark.parametrize("text", ["x", "0" * 13, 7])
def test_expiries_refuse_a_malformed_record(text: Any) -> None:
    with pytest.raises(StoreError, match="maf.quotatotal"):
        _Expiries.of({"exp": text})
    with pytest.raises(ValueError):
        _Expiries("").put(-1)
    with pytest.raises(ValueError):
        _Expiries("").put(16 ** 14)


@given(st.lists(st.tuples(st.sampled_from(["put", "remove", "drop"]), st.integers(0, 40)), max_size=80))
def test_expiries_behave_like_a_multiset(ops: list[tuple[str, int]]) -> None:
    e, model = _Expiries(""), Counter[int]()
    for op, t in ops:
        if op == "put":
            e.put(t)
            model[t] += 1
        elif op == "remove":
            assert e.remove(t) is (model[t] > 0)
            if model[t]:
                model[t] -= 1
        else:
            e.drop_expired(t)
            model = Counter({k: v for k, v in model.items() if k > t})
        entries = [e.text[i:i + 14] for i in range(0, len(e.text), 14)]
        assert entries == sorted(entries)
        assert Counter(int(x, 16) for x in entries) == +model


@pytest.mark.parametrize("limit", [1, 3, 255, 256, 257, 1000, MAX_KEYS_TOTAL_DEFAULT, 10_000_000])
def test_shard_capacities_add_up_to_the_limit(tmp_path: Path, limit: int) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        svc = make_service(store, clock, provision=False, max_keys_total=limit)
        caps = [svc._shard_capacity(i) for i in range(TOTAL_SHARDS)]
        assert sum(caps) == limit and max(caps) - min(caps) <= 1
        assert all(c >= 1 for c in caps[:min(limit, TOTAL_SHARDS)])  # the shards searched
    finally:
        store.close()


# ------------------------------------------------------------------ the service (one instance)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[FakeClock, Store, MAFService]]:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock, max_keys_per_client=10, max_keys_total=3)
    register_clients(svc, clock)
    yield clock, store, svc
    store.close()


def test_the_limit_holds_across_clients_and_the_refusal_is_audited_and_rolled_back(env) -> None:
    clock, store, svc = env
    rels = [register_key(svc, clock, cid) for cid in (AE1, AE2, AE3)]
    assert svc.key_total() == 3 and counted(store) == 3
    before = rows(store)
    with pytest.raises(KeyTotalExceeded) as ei:
        register_key(svc, clock, AE4)  # a client that holds no key at all
    assert isinstance(ei.value, KeyQuotaExceeded)
    assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and ei.value.rsc.http_status == 403
    assert "max_keys_total = 3" in str(ei.value) and "holds 3 live" in str(ei.value)
    assert rows(store) == before and counted(store) == 3  # nothing written, not even the RelativeKeyID
    last = store.list_audit(actor="maf", limit=1)[0]
    assert (last.action, last.subject, last.outcome) == ("key_registration", AE4, "refused 4103")
    assert "max_keys_total" in last.details["reason"]
    # each key records the shard that counts it
    shards = {store.get_record(NS.KEY_REG, r).doc["quotaShard"] for r in rels}
    assert shards <= {0, 1, 2} and len(shards) == 3  # three shards of one slot each


def test_deregistration_and_revoke_free_a_slot_at_once(env) -> None:
    clock, store, svc = env
    rels = [register_key(svc, clock, cid) for cid in (AE1, AE2, AE3)]
    svc.run(Procedure.KEY_DEREGISTRATION, peer(AE2), KeyDeregistrationRequest(MAF, rels[1]), no_exporter)
    assert svc.key_total() == 2
    register_key(svc, clock, AE4)
    with pytest.raises(KeyTotalExceeded):
        register_key(svc, clock, AE4)
    assert svc.revoke_key(rels[0]) is True
    assert svc.key_total() == 2
    register_key(svc, clock, AE4)
    with pytest.raises(KeyTotalExceeded):
        register_key(svc, clock, AE1)
    assert counted(store) == 3


def test_an_expired_registration_stops_counting_at_its_expiry(env) -> None:
    clock, store, svc = env
    register_key(svc, clock, AE1, life=timedelta(seconds=10))
    register_key(svc, clock, AE2)
    register_key(svc, clock, AE3)
    clock.advance(seconds=9, microseconds=999_999)
    with pytest.raises(KeyTotalExceeded):
        register_key(svc, clock, AE4)
    clock.advance(microseconds=1)
    assert svc.key_total() == 2
    register_key(svc, clock, AE4)
    assert svc.key_total() == 3 and counted(store) == 3  # the expired entry was dropped from its shard


def test_a_registration_update_moves_the_expiry_that_counts(env) -> None:
    clock, store, svc = env
    short = register_key(svc, clock, AE1, life=timedelta(seconds=10))
    register_key(svc, clock, AE2)
    register_key(svc, clock, AE3)
    svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1),
            KeyRegistrationUpdateRequest(MAF, short, expiration_time=clock.now + HOUR), no_exporter)
    clock.advance(seconds=11)
    with pytest.raises(KeyTotalExceeded):  # the extended key still counts
        register_key(svc, clock, AE4)
    assert svc.key_total() == 3
    # shortened again: it stops counting at the new expiry
    svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1),
            KeyRegistrationUpdateRequest(MAF, short, expiration_time=clock.now + timedelta(seconds=5)), no_exporter)
    clock.advance(seconds=5)
    register_key(svc, clock, AE4)
    assert counted(store) == 3


def test_the_client_quota_is_checked_first(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        svc = make_service(store, clock, max_keys_per_client=2, max_keys_total=2)
        register_clients(svc, clock)
        register_key(svc, clock, AE1)
        register_key(svc, clock, AE1)
        with pytest.raises(KeyQuotaExceeded) as ei:
            register_key(svc, clock, AE1)  # over both: the client's own limit is what it is told
        assert not isinstance(ei.value, KeyTotalExceeded) and "max_keys_per_client" in str(ei.value)
        with pytest.raises(KeyTotalExceeded):
            register_key(svc, clock, AE2)
    finally:
        store.close()


def test_keys_registered_before_the_total_existed_are_counted(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        old = make_service(store, clock, max_keys_total=100)
        register_clients(old, clock)
        pre = [register_key(old, clock, cid) for cid in (AE1, AE2, AE3)]
        register_key(old, clock, AE4, life=timedelta(seconds=5))  # expires before the upgrade
        forget_total(store)
        clock.advance(seconds=6)
        svc = make_service(store, clock, provision=False, max_keys_total=4)
        assert svc.key_total() == 0  # not counted yet
        register_key(svc, clock, AE4)  # counts the three live old keys, then this one
        assert svc.key_total() == 4
        with pytest.raises(KeyTotalExceeded):
            register_key(svc, clock, AE4)
        # an old key (no quotaShard: counted in its home shard) frees its slot when de-registered
        svc.run(Procedure.KEY_DEREGISTRATION, peer(AE1), KeyDeregistrationRequest(MAF, pre[0]), no_exporter)
        assert svc.key_total() == 3
        register_key(svc, clock, AE4)
        assert store.find_record(NS.QUOTA_META, "tracked-total") is not None
    finally:
        store.close()


def test_a_refused_first_registration_does_not_mark_the_total_built(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        old = make_service(store, clock)
        register_clients(old, clock)
        register_key(old, clock, AE1)
        register_key(old, clock, AE2)
        with store.transaction() as tx:
            for r in tx.list_records(NS.QUOTA_TOTAL):
                tx.delete_record(NS.QUOTA_TOTAL, r.rec_id)
            tx.delete_record(NS.QUOTA_META, "tracked-total")
        svc = make_service(store, clock, provision=False, max_keys_total=2)
        with pytest.raises(KeyTotalExceeded):
            register_key(svc, clock, AE3)
        assert store.find_record(NS.QUOTA_META, "tracked-total") is None and counted(store) == 0
        with pytest.raises(KeyTotalExceeded):
            register_key(svc, clock, AE3)  # counted again from the Key Registrations
    finally:
        store.close()


@pytest.mark.parametrize("bad", [0, -1, 10_000_001, True, 2.5, "10"])
def test_the_service_refuses_a_bad_total(tmp_path: Path, bad: Any) -> None:
    assert_service_refuses(tmp_path, max_keys_total=bad)


def test_load_config_reads_max_keys_total(tmp_path: Path) -> None:
    assert load_config(maf_toml(tmp_path, "")).max_keys_total == 1_000_000  # absent: the default
    assert load_config(maf_toml(tmp_path, "max_keys_total = 1")).max_keys_total == 1
    assert load_config(maf_toml(tmp_path, "max_keys_total = 10000000")).max_keys_total == 10_000_000
    for bad in ("0", "-5", "10000001", "true", "2.5", '"10"'):
        with pytest.raises(ParseError, match="max_keys_total"):
            load_config(maf_toml(tmp_path, f"max_keys_total = {bad}"))


# ------------------------------------------------------------------ two instances on one database


@pytest.fixture(params=BACKENDS)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[MAFService, MAFService, FakeClock, str]]:
    with two_instances(request, tmp_path, max_keys_total=3) as t:
        yield t.a, t.b, t.clock, t.url


def _outcome(results: dict[str, Any], name: str, fn: Any) -> None:
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - recorded for the assertions
        results[name] = exc


def test_two_instances_interleaved_for_the_last_slot(two) -> None:
    """A (client AE3) takes the MAF's last slot and is held before its commit; B (client AE4,
    own quota empty) registers meanwhile and is refused once A commits."""
    a, b, clock, _url = two
    register_key(a, clock, AE1)
    register_key(b, clock, AE2)
    results: dict[str, Any] = {}
    with PauseAtAudit(a.store) as pause:
        ta = threading.Thread(target=_outcome, args=(results, "a", lambda: register_key(a, clock, AE3)))
        ta.start()
        assert pause.reached.wait(20)
        tb = threading.Thread(target=_outcome, args=(results, "b", lambda: register_key(b, clock, AE4)))
        tb.start()
        time.sleep(0.3)
        assert tb.is_alive()  # PostgreSQL: on A's shard row; SQLite: on the write lock
        pause.release.set()
        ta.join(20)
        tb.join(20)
    assert isinstance(results["a"], str), results
    assert isinstance(results["b"], KeyTotalExceeded), results
    assert a.key_total() == b.key_total() == 3 and len(a.store.list_records(NS.KEY_REG)) == 3


def test_concurrent_registrations_stop_at_exactly_the_limit(two) -> None:
    """Eight threads, both instances, four clients: 64 attempts for 40 slots (40 shards of one
    slot): exactly 40 win, the other 24 are refused 4103, none gets 4105 (conflicts are retried
    inside the transaction)."""
    a, b, clock, _url = two
    a.max_keys_total = b.max_keys_total = 40
    won: list[str] = []
    lost: list[BaseException] = []
    lock = threading.Lock()

    def worker(svc: MAFService, cid: str) -> None:
        for _ in range(8):
            try:
                rel = register_key(svc, clock, cid)
                with lock:
                    won.append(rel)
            except BaseException as exc:  # noqa: BLE001 - checked below
                with lock:
                    lost.append(exc)

    threads = [threading.Thread(target=worker, args=(svc, cid)) for svc in (a, b) for cid in CLIENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(won) == 40 and len(lost) == 24, (len(won), lost[:3])
    assert all(isinstance(e, KeyTotalExceeded) for e in lost), lost[:3]
    assert a.key_total() == b.key_total() == 40 and len(a.store.list_records(NS.KEY_REG)) == 40
    refusals = [x for x in a.store.list_audit(actor="maf", limit=None) if x.outcome == "refused 4103"]
    assert len(refusals) == 24


@pytest.mark.postgres
def test_postgresql_a_registration_is_not_held_up_by_another_uncommitted_one(
        pg_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MAF-wide count is no global hotspot: while instance A's registration (shard 0) is
    held before its commit, instance B's registration of another client (shard 1) commits."""
    clock = FakeClock()
    url = pg_server.create_database()
    sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    try:
        a = make_service(sa, clock, key_cache_ttl=timedelta(0))
        b = make_service(sb, clock, provision=False, key_cache_ttl=timedelta(0))
        register_clients(a, clock)
        register_key(a, clock, AE3)  # the one-time set-up is done
        ids = iter([bytes(16), bytes.fromhex("00000001") + bytes(12)])  # RelativeKeyIDs: shards 0 and 1
        monkeypatch.setattr(service_module, "secrets",
                            SimpleNamespace(token_bytes=lambda _n: next(ids),
                                            token_hex=service_module.secrets.token_hex))
        results: dict[str, Any] = {}
        with PauseAtAudit(sa) as pause:
            ta = threading.Thread(target=_outcome, args=(results, "a", lambda: register_key(a, clock, AE1)))
            ta.start()
            assert pause.reached.wait(20)
            t0 = time.monotonic()
            _outcome(results, "b", lambda: register_key(b, clock, AE2))
            assert time.monotonic() - t0 < 5 and ta.is_alive()  # B finished while A is still held
            pause.release.set()
            ta.join(20)
        assert results == {"a": "0" * 32, "b": "00000001" + "0" * 24}
        assert sa.get_record(NS.KEY_REG, results["b"]).doc["quotaShard"] == 1
        assert a.key_total() == 3
    finally:
        sb.close()
        sa.close()


# ------------------------------------------------------------------ real MAF servers


def test_server_refuses_over_the_total_with_4103_http_403(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock, max_keys_total=2)

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2:
            await c1.register(clock.now + timedelta(days=1))
            await c2.register(clock.now + timedelta(days=1))
            k1 = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            await c2.register_key(SUID.MAF_ESPRIM, [AE1], clock.now + HOUR, key_value=os.urandom(32))
            req = KeyRegistrationRequest(MAF, clock.now + HOUR, ADMIN, SUID.MAF_ESPRIM, target_ids=(AE1,),
                                         key_value=os.urandom(32))
            status, rsc, body = await c2.raw(Procedure.KEY_REGISTRATION, encode_body(req))
            assert (status, rsc) == (403, 4103) and b"max_keys_total" in body
            with pytest.raises(MAFResponseError) as ei:
                await c2.register_key(SUID.MAF_ESPRIM, [AE1], clock.now + HOUR)  # exporter key: the same
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            await c1.deregister_key(k1.key_id)  # frees a slot for another client, at once
            await c2.register_key(SUID.MAF_ESPRIM, [AE1], clock.now + HOUR, key_value=os.urandom(32))

    try:
        run(main)
        outcomes = [x.outcome for x in store.list_audit(actor="maf", newest_first=False)
                    if x.action == "key_registration"]
        assert outcomes == ["ok", "ok", "refused 4103", "refused 4103", "ok"]
    finally:
        store.close()


def test_two_servers_on_one_store_race_for_the_last_slots(tmp_path: Path) -> None:
    """Two MAF servers on one SQLite file, 12 connections of four clients at once with 2 of 5
    MAF-wide slots taken: exactly 3 win."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'maf.db'}"
    sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, max_keys_total=5)
    b = make_service(sb, clock, provision=False, max_keys_total=5)
    register_clients(a, clock)
    register_key(a, clock, AE1)
    register_key(b, clock, AE2)

    async def one(port: int, cid: str, start: asyncio.Event) -> str | MAFResponseError:
        async with connected(port, cid) as c:
            await start.wait()
            try:
                reg = await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            except MAFResponseError as exc:
                return exc
            return reg.relative_key_id

    async def main() -> list[str | MAFResponseError]:
        async with running(a) as ra, running(b) as rb:
            start = asyncio.Event()
            tasks = [asyncio.create_task(one(port, CLIENTS[i % 4], start))
                     for i, port in enumerate((ra.port, rb.port) * 6)]
            await asyncio.sleep(0.5)
            start.set()
            return await asyncio.gather(*tasks)

    try:
        results = run(main)
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, MAFResponseError)]
        assert len(won) == 3 and len(lost) == 9, results
        assert {e.rsc for e in lost} == {RSC.ORIGINATOR_HAS_NO_PRIVILEGE}
        assert a.key_total() == b.key_total() == 5 and len(sa.list_records(NS.KEY_REG)) == 5
    finally:
        sb.close()
        sa.close()
