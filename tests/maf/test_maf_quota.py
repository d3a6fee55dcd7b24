"""Per-client Key Registration quota at the MAF (TS-0003 8.8.2.7 step 5 authorization; profile F13).

Three levels: the quota record's packed slot string against a dict model and known entries;
the service's state machine (quota, de-registration, expiry, update, revoke, the one-time
build of the records of keys registered before quotas existed, the refusal rolled back and
audited, two instances interleaved deterministically on SQLite and PostgreSQL); and real MAF
servers over TLS-PSK (the refusal on the wire, slots freed by de-registration and by expiry,
two instances on one SQLite file and on one PostgreSQL database racing for the last slots,
and ``m2msec maf serve`` reading ``max_keys_per_client`` from ``maf.toml``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _mafhelp import (
    ADMIN,
    AE1,
    AE2,
    AE3,
    KEK,
    KMS,
    MAF,
    FakeClock,
    connected,
    kmid,
    make_service,
    make_store,
    run,
    running,
)
from _mafserve import MAFServe
from _quota_support import (
    BACKENDS,
    HOUR,
    PauseAtAudit,
    assert_service_refuses,
    deregister_key,
    lock_waiters,
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
from m2msec.maf import MAFClient, MAFClientConfig, MAFResponseError
from m2msec.maf.protocol import (
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    Procedure,
    encode_body,
)
from m2msec.maf.server import load_config
from m2msec.maf.service import (
    NS,
    KeyQuotaExceeded,
    MAFService,
    _epoch_us,
    _Slots,
)
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import KeyEncryptionKey, Store, StoreError, open_store
from m2msec.tls.engine import PSKCredentials

CLIENTS3 = (AE1, AE2, AE3)  # the clients these tests register (AE4 stays unregistered)


def live_keys(store: Store, cid: str = AE1) -> list[str]:
    return sorted(r.rec_id for r in store.list_records(NS.KEY_REG, where={"sourceMAFClientID": cid}))


# ------------------------------------------------------------------ the packed slot string


REL_A, REL_B, REL_C = "a" * 32, "0123456789abcdef" * 2, "f" * 32


def test_slots_known_entries() -> None:
    s = _Slots("")
    s.put(REL_A, 0x20)
    s.put(REL_B, 0x10)
    s.put(REL_C, 0x10)
    # 14 hex digits of the expiry (microseconds) + the RelativeKeyID, sorted by expiry then id
    assert s.text == "00000000000010" + REL_B + "00000000000010" + REL_C + "00000000000020" + REL_A
    assert len(s) == 3 and s.doc() == {"slots": s.text}
    s.drop_expired(0x10)  # an entry whose expiry is "now" has expired
    assert s.text == "00000000000020" + REL_A
    s.drop_expired(0x1F)
    assert len(s) == 1
    s.remove(REL_B)  # absent: nothing changes
    assert len(s) == 1
    s.remove(REL_A)
    assert s.text == ""


def test_slots_remove_only_matches_an_aligned_relative_key_id() -> None:
    s = _Slots("")
    exp = int("abcdefabcdefab", 16)
    s.put(REL_A, exp)  # the expiry's hex digits and the id run together: "...abab" + "aaaa..."
    s.put("b" * 32, exp + 1)
    # a RelativeKeyID made of the tail of the expiry and the head of REL_A is not an entry
    s.remove("ab" + "a" * 30)
    assert len(s) == 2
    s.remove("b" * 32)
    assert s.text == f"{exp:014x}" + REL_A


@pytest.mark.parametrize("text", ["x", "0" * 45, 7])
def test_slots_refuse_a_malformed_record(text: Any) -> None:
    with pytest.raises(StoreError):
        _Slots.of({"slots": text})
    with pytest.raises(ValueError):
        _Slots("").put("ab", 1)  # not a 32-digit RelativeKeyID


@given(st.lists(st.tuples(st.sampled_from(["put", "remove", "drop"]), st.integers(0, 7), st.integers(0, 40)),
                max_size=60))
def test_slots_behave_like_a_dict_of_expiries(ops: list[tuple[str, int, int]]) -> None:
    s, model = _Slots(""), {}
    for op, k, t in ops:
        rel = f"{k:032x}"
        if op == "put":
            s.remove(rel)
            s.put(rel, t)
            model[rel] = t
        elif op == "remove":
            s.remove(rel)
            model.pop(rel, None)
        else:
            s.drop_expired(t)
            model = {r: e for r, e in model.items() if e > t}
        assert len(s) == len(model)
        entries = [s.text[i:i + 46] for i in range(0, len(s.text), 46)]
        assert entries == sorted(entries)
        assert {e[14:]: int(e[:14], 16) for e in entries} == model


def test_epoch_microseconds_are_exact() -> None:
    assert _epoch_us(datetime(1970, 1, 1, 0, 0, 1, 7, tzinfo=UTC)) == 1_000_007
    assert _epoch_us(datetime(2030, 1, 1, tzinfo=UTC)) == 1_893_456_000_000_000


# ------------------------------------------------------------------ the service (one instance)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[FakeClock, Store, MAFService]]:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock, max_keys_per_client=3)
    register_clients(svc, clock, *CLIENTS3)
    yield clock, store, svc
    store.close()


def test_quota_is_enforced_per_client_and_the_refusal_is_audited_and_rolled_back(env) -> None:
    clock, store, svc = env
    rels = [register_key(svc, clock) for _ in range(3)]
    assert svc.key_count(AE1) == 3
    before = {ns: len(store.list_records(ns)) for ns in (NS.KEY_REG, NS.KEY_ID)}
    with pytest.raises(KeyQuotaExceeded) as ei:
        register_key(svc, clock)
    assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and ei.value.rsc.http_status == 403
    assert "max_keys_per_client = 3" in str(ei.value)
    # nothing of the refused registration is left (not even its RelativeKeyID reservation)
    assert {ns: len(store.list_records(ns)) for ns in (NS.KEY_REG, NS.KEY_ID)} == before
    assert live_keys(store) == sorted(rels)
    last = store.list_audit(actor="maf", limit=1)[0]
    assert (last.action, last.subject, last.outcome) == ("key_registration", AE1, "refused 4103")
    assert "max_keys_per_client" in last.details["reason"]
    # another client has its own quota
    register_key(svc, clock, AE2)
    assert svc.key_count(AE2) == 1 and svc.key_count(AE3) == 0
    rows = {r["client_id"]: r["live_keys"] for r in svc.list_clients()}
    assert rows[AE1] == 3 and rows[AE2] == 1 and rows[AE3] == 0


def test_deregistration_and_revoke_free_a_slot_at_once(env) -> None:
    clock, _store, svc = env
    rels = [register_key(svc, clock) for _ in range(3)]
    deregister_key(svc, rels[0])
    assert svc.key_count(AE1) == 2
    rels.append(register_key(svc, clock))
    with pytest.raises(KeyQuotaExceeded):
        register_key(svc, clock)
    assert svc.revoke_key(rels[1]) is True
    assert svc.key_count(AE1) == 2
    register_key(svc, clock)
    with pytest.raises(KeyQuotaExceeded):
        register_key(svc, clock)


def test_an_expired_registration_does_not_count(env) -> None:
    clock, store, svc = env
    register_key(svc, clock, life=timedelta(seconds=10))
    register_key(svc, clock, life=HOUR)
    register_key(svc, clock, life=HOUR)
    with pytest.raises(KeyQuotaExceeded):
        register_key(svc, clock)
    clock.advance(seconds=9, microseconds=999_999)  # one microsecond before the expiry: still counted
    with pytest.raises(KeyQuotaExceeded):
        register_key(svc, clock)
    clock.advance(microseconds=1)  # at the expiry: no longer live, no longer counted
    assert svc.key_count(AE1) == 2
    register_key(svc, clock)
    assert svc.key_count(AE1) == 3
    # the expired entry is gone from the record, not just skipped
    assert len(_Slots.of(store.get_record(NS.QUOTA, AE1).doc)) == 3


def test_registration_update_moves_the_expiry_that_counts(env) -> None:
    clock, store, svc = env
    short = register_key(svc, clock, life=timedelta(seconds=10))
    long_ = register_key(svc, clock, life=timedelta(seconds=10))
    register_key(svc, clock, life=HOUR)
    # extend one key, shorten nothing else: after 10 s only the extended one and the hour key count
    svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1),
            KeyRegistrationUpdateRequest(MAF, long_, expiration_time=clock.now + HOUR), no_exporter)
    clock.advance(seconds=11)
    assert svc.key_count(AE1) == 2 and live_keys(store).count(short) == 0
    register_key(svc, clock)
    with pytest.raises(KeyQuotaExceeded):
        register_key(svc, clock)
    # an update that changes only the targets leaves the record alone
    v = store.get_record(NS.QUOTA, AE1).version
    svc.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1),
            KeyRegistrationUpdateRequest(MAF, long_, target_ids=(AE3,)), no_exporter)
    assert store.get_record(NS.QUOTA, AE1).version == v


def test_keys_registered_before_quotas_existed_are_counted(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        old = make_service(store, clock, max_keys_per_client=10)
        register_clients(old, clock, *CLIENTS3)
        # what an m2msec without quotas left behind: Key Registrations, no maf.quota records
        pre = [register_key(old, clock) for _ in range(2)] + [register_key(old, clock, AE2)]
        register_key(old, clock, life=timedelta(seconds=5))  # expires before the upgrade
        with store.transaction() as tx:
            for ns in (NS.QUOTA, NS.QUOTA_META):
                for r in tx.list_records(ns):
                    tx.delete_record(ns, r.rec_id)
        clock.advance(seconds=6)
        svc = make_service(store, clock, provision=False, max_keys_per_client=3)
        assert svc.key_count(AE1) == 0  # not built yet
        register_key(svc, clock)  # builds the records, then counts: 2 old + this one
        assert svc.key_count(AE1) == 3 and svc.key_count(AE2) == 1
        with pytest.raises(KeyQuotaExceeded):
            register_key(svc, clock)
        deregister_key(svc, pre[0])
        register_key(svc, clock)
        assert store.find_record(NS.QUOTA_META, "tracked") is not None
    finally:
        store.close()


def test_a_refused_first_registration_does_not_mark_the_store_built(tmp_path: Path) -> None:
    """The marker and the built records are rolled back with a refusal; the next call builds again."""
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        old = make_service(store, clock)
        register_clients(old, clock, *CLIENTS3)
        for _ in range(2):
            register_key(old, clock)
        with store.transaction() as tx:
            for ns in (NS.QUOTA, NS.QUOTA_META):
                for r in tx.list_records(ns):
                    tx.delete_record(ns, r.rec_id)
        svc = make_service(store, clock, provision=False, max_keys_per_client=2)
        with pytest.raises(KeyQuotaExceeded):
            register_key(svc, clock)
        assert store.find_record(NS.QUOTA_META, "tracked") is None and store.find_record(NS.QUOTA, AE1) is None
        with pytest.raises(KeyQuotaExceeded):
            register_key(svc, clock)  # counted again from the Key Registrations, not from an empty record
        assert len(live_keys(store)) == 2
    finally:
        store.close()


@pytest.mark.parametrize("bad", [0, -1, 100_001, True, 2.5, "10"])
def test_the_service_refuses_a_bad_quota(tmp_path: Path, bad: Any) -> None:
    assert_service_refuses(tmp_path, max_keys_per_client=bad)


def test_load_config_reads_max_keys_per_client(tmp_path: Path) -> None:
    assert load_config(maf_toml(tmp_path, "")).max_keys_per_client == 1000
    assert load_config(maf_toml(tmp_path, "max_keys_per_client = 1")).max_keys_per_client == 1
    assert load_config(maf_toml(tmp_path, "max_keys_per_client = 100000")).max_keys_per_client == 100_000
    for bad in ("0", "-5", "100001", "true", "2.5", '"10"'):
        with pytest.raises(ParseError, match="max_keys_per_client"):
            load_config(maf_toml(tmp_path, f"max_keys_per_client = {bad}"))


# ------------------------------------------------------------------ two instances, interleaved


@pytest.fixture(params=BACKENDS)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[MAFService, MAFService, FakeClock, str]]:
    with two_instances(request, tmp_path, clients=CLIENTS3, max_keys_per_client=3) as t:
        yield t.a, t.b, t.clock, t.url


def test_two_instances_interleaved_for_the_last_slot(two) -> None:
    """A takes the last slot and is held before its commit; B's registration runs meanwhile
    (PostgreSQL: it waits on the quota row; SQLite: on the write lock) and is refused once A
    commits - the slot is not handed out twice."""
    a, b, clock, url = two
    register_key(a, clock)
    register_key(b, clock)
    results: dict[str, Any] = {}

    def reg(name: str, svc: MAFService) -> None:
        try:
            results[name] = register_key(svc, clock)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            results[name] = exc

    with PauseAtAudit(a.store) as pause:
        ta = threading.Thread(target=reg, args=("a", a))
        ta.start()
        assert pause.reached.wait(20)
        tb = threading.Thread(target=reg, args=("b", b))
        tb.start()
        deadline = time.monotonic() + 10
        if url.startswith("postgresql"):
            while not lock_waiters(url):  # B is blocked on A's quota row, not finished
                assert time.monotonic() < deadline and tb.is_alive()
                time.sleep(0.01)
        else:
            time.sleep(0.3)
            assert tb.is_alive()  # B waits for the write lock A holds
        pause.release.set()
        ta.join(20)
        tb.join(20)
    assert isinstance(results["a"], str), results
    assert isinstance(results["b"], KeyQuotaExceeded), results
    assert len(live_keys(a.store)) == 3 and a.key_count(AE1) == b.key_count(AE1) == 3


def test_concurrent_registrations_below_the_quota_all_succeed(two) -> None:
    """Compare-and-set conflicts on the quota record are retried inside the transaction,
    not returned as 4105 to clients that were within their quota."""
    a, b, clock, _url = two
    a.max_keys_per_client = b.max_keys_per_client = 40
    errors: list[BaseException] = []

    def worker(svc: MAFService) -> None:
        try:
            for _ in range(10):
                register_key(svc, clock)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(svc,)) for svc in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(live_keys(a.store)) == 40 and a.key_count(AE1) == 40


# ------------------------------------------------------------------ real MAF servers


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[FakeClock, Store, MAFService]]:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock, max_keys_per_client=2)
    yield clock, store, svc
    store.close()


def test_server_refuses_over_the_quota_with_4103_http_403(served) -> None:
    clock, store, svc = served

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c:
            await c.register(clock.now + timedelta(days=1))
            k1 = await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            req = KeyRegistrationRequest(MAF, clock.now + HOUR, ADMIN, SUID.MAF_ESPRIM, target_ids=(AE2,),
                                         key_value=os.urandom(32))
            status, rsc, body = await c.raw(Procedure.KEY_REGISTRATION, encode_body(req))
            assert (status, rsc) == (403, 4103) and b"max_keys_per_client" in body
            with pytest.raises(MAFResponseError) as ei:
                await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR)  # exporter key: same refusal
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            # de-registration frees the slot at once, on the same connection
            await c.deregister_key(k1.key_id)
            await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            # another client is not affected by AE1's quota
            async with connected(srv.port, AE2) as c2:
                await c2.register(clock.now + timedelta(days=1))
                await c2.register_key(SUID.MAF_ESPRIM, [AE1], clock.now + HOUR, key_value=os.urandom(32))

    run(main)
    outcomes = [a.outcome for a in store.list_audit(actor="maf", newest_first=False) if a.action == "key_registration"]
    assert outcomes == ["ok", "ok", "refused 4103", "refused 4103", "ok", "ok"]


def test_server_expiry_frees_a_slot(served) -> None:
    clock, store, svc = served

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c:
            await c.register(clock.now + timedelta(days=1))
            await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(minutes=5), key_value=os.urandom(32))
            await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            with pytest.raises(MAFResponseError) as ei:
                await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            clock.advance(minutes=5)
            await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            with pytest.raises(MAFResponseError):
                await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))

    run(main)
    assert len(live_keys(store)) == 2


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'maf.db'}"
    return str(request.getfixturevalue("pg_server").create_database())


def test_two_servers_on_one_store_race_for_the_last_slots(store_url: str) -> None:
    """Two MAF servers on one database; 12 connections of one client register at once, half
    through each server, with 2 of 5 slots already taken: exactly 3 win, 9 are refused 4103."""
    clock = FakeClock()
    sa, sb = open_store(store_url, KEK, clock=clock), open_store(store_url, KEK, clock=clock)
    a = make_service(sa, clock, max_keys_per_client=5)
    b = make_service(sb, clock, provision=False, max_keys_per_client=5)
    register_clients(a, clock, AE1)
    register_key(a, clock)
    register_key(b, clock)

    async def one(port: int, start: asyncio.Event) -> str | MAFResponseError:
        async with connected(port, AE1) as c:
            await start.wait()
            try:
                reg = await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + HOUR, key_value=os.urandom(32))
            except MAFResponseError as exc:
                return exc
            return reg.relative_key_id

    async def main() -> list[str | MAFResponseError]:
        async with running(a) as ra, running(b) as rb:
            start = asyncio.Event()
            tasks = [asyncio.create_task(one(port, start)) for port in (ra.port, rb.port) * 6]
            await asyncio.sleep(0.5)  # every connection has done its MAF Handshake
            start.set()
            return await asyncio.gather(*tasks)

    try:
        results = run(main)
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, MAFResponseError)]
        assert len(won) == 3 and len(lost) == 9, results
        assert {e.rsc for e in lost} == {RSC.ORIGINATOR_HAS_NO_PRIVILEGE}
        assert len(live_keys(sa)) == 5 and a.key_count(AE1) == b.key_count(AE1) == 5
        assert set(won) <= set(live_keys(sa))
        refusals = [x for x in sa.list_audit(actor="maf", limit=None) if x.outcome == "refused 4103"]
        assert len(refusals) == 9
    finally:
        sb.close()
        sa.close()


def test_maf_serve_reads_max_keys_per_client(tmp_path: Path) -> None:
    """``m2msec maf serve`` as a process: the quota of maf.toml is the one enforced."""
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "kek.hex")
    cfg = tmp_path / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
                   f'max_keys_per_client = 2\n[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", kek)
    MAFService(store, MAF, admins=[], clock=lambda: datetime.now(UTC)).add_km_client(kmid(AE1), KMS[AE1],
                                                                                       client_id=AE1)
    store.close()
    srv = MAFServe(cfg)
    try:
        async def main() -> list[int]:
            now = datetime.now(UTC)
            c = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", srv.port,
                                          psk=PSKCredentials(kmid(AE1).encode(), KMS[AE1]), timeout=10.0))
            async with c:
                await c.register(now + timedelta(days=1))
                codes = []
                for _ in range(3):
                    try:
                        await c.register_key(SUID.MAF_ESPRIM, [AE2], now + HOUR, key_value=os.urandom(32))
                        codes.append(2001)
                    except MAFResponseError as exc:
                        codes.append(int(exc.rsc))
                return codes

        assert run(main) == [2001, 2001, 4103]
    finally:
        srv.stop()
