"""Key Retrieval (TS-0003 8.8.2.8): read outside the write transaction, group-committed audit,
retrieval cache bounds (local invalidation, TTL across instances, expiry)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _sql_spy import SQLSpy
from _mafhelp import ADMIN, AE1, AE2, AE3, MAF, FakeClock, connected, kmid, make_service, make_store, run, running

from m2msec.maf import MAFResponseError
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    DeregistrationRequest,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRetrievalRequest,
    MAFError,
    Procedure,
)
from m2msec.maf.service import MAFPeer, MAFService
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import AuditCommitError, Store


def peer(cid: str) -> MAFPeer:
    return MAFPeer("km", cid, f"11-{kmid(cid)}", kmid=kmid(cid))


def no_exporter() -> tuple[bytes, bytes]:
    raise AssertionError("no exporter")


def setup(svc: MAFService, clock: FakeClock, key: bytes) -> tuple[str, dict[str, str]]:
    """AE1, AE2 registered; AE1 registers ``key`` for target AE2; returns (RelativeKeyID, reg IDs)."""
    regs = {}
    for cid in (AE1, AE2):
        rsp = svc.run(Procedure.CLIENT_REGISTRATION, peer(cid),
                      ClientRegistrationRequest(MAF, clock.now + timedelta(days=1), ADMIN), no_exporter)
        regs[cid] = rsp.maf_client_reg_id
    rsp = svc.run(Procedure.KEY_REGISTRATION, peer(AE1),
                  KeyRegistrationRequest(MAF, clock.now + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                         target_ids=(AE2,), key_value=key), no_exporter)
    return rsp.relative_key_id, regs


def retrieve(svc: MAFService, rel: str, cid: str = AE2) -> Any:
    return svc.run(Procedure.KEY_RETRIEVAL, peer(cid), KeyRetrievalRequest(rel), no_exporter)


def retrievals(store: Store) -> list[tuple[str, str]]:
    return [(a.subject, a.outcome) for a in store.list_audit(limit=None, newest_first=False)
            if a.action == "key_retrieval"]


@pytest.fixture()
def env(tmp_path: Path):
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    yield tmp_path, clock, store
    store.close()


def test_retrieval_reads_without_write_lock_and_audits_each_disclosure(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(0))  # no cache: every read hits the store
    key = os.urandom(32)
    rel, _ = setup(svc, clock, key)
    with SQLSpy(store) as spy:
        assert retrieve(svc, rel).key_value == key
    # the reads are single statements in autocommit mode (each its own read transaction, no
    # lock); only the audit batch took the write lock, after the reads
    assert spy.sql.count("BEGIN IMMEDIATE") == 1 and "BEGIN" not in spy.sql
    first_write = spy.sql.index("BEGIN IMMEDIATE")
    # deferred sync (audit_sync_interval, default 1 s): that one commit does not fsync, and the
    # connection is back to synchronous = FULL before anything else may use it
    assert spy.sql[first_write - 1] == "PRAGMA synchronous = NORMAL"
    assert all(s.lstrip().startswith("SELECT") for s in spy.sql[:first_write - 1])
    assert spy.sql[first_write + 1].startswith("INSERT INTO m2msec_audit") and spy.sql[first_write + 2] == "COMMIT"
    assert spy.sql[first_write + 3:] == ["PRAGMA synchronous = FULL"]
    assert spy.selects() == 2  # Key Registration joined with its key value; the Target's registration
    assert retrievals(store) == [(AE2, "ok")]


def test_cache_hit_is_audited_and_skips_the_store_reads(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(seconds=60))
    key = os.urandom(32)
    rel, _ = setup(svc, clock, key)
    assert retrieve(svc, rel).key_value == key
    with SQLSpy(store) as spy:
        for _ in range(3):
            assert retrieve(svc, rel).key_value == key
    # SQLite: a hit reads only the change sequence (one primary-key SELECT, profile F10), not
    # the Key Registration, its key value or the registration
    selects = [s for s in spy.sql if s.lstrip().startswith("SELECT")]
    assert len(selects) == 3 and all("m2msec.notify" in s and "JOIN" not in s for s in selects)
    assert retrievals(store) == [(AE2, "ok")] * 4  # every disclosure, also from the cache


def test_cache_never_serves_past_expiry(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(seconds=60))
    rel, _ = setup(svc, clock, os.urandom(32))
    retrieve(svc, rel)
    clock.advance(hours=1)  # the key registration expires exactly now
    with pytest.raises(MAFError) as ei:
        retrieve(svc, rel)
    assert ei.value.rsc is RSC.NOT_FOUND
    assert retrievals(store)[-1] == (AE2, f"refused {int(RSC.NOT_FOUND)}")


def test_cache_not_used_for_another_target(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(seconds=60))
    rel, _ = setup(svc, clock, os.urandom(32))
    retrieve(svc, rel)
    with pytest.raises(MAFError) as ei:
        retrieve(svc, rel, AE3)
    assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE


def test_local_deregistration_empties_the_cache_at_once(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(seconds=60))
    rel, regs = setup(svc, clock, os.urandom(32))
    retrieve(svc, rel)
    svc.run(Procedure.KEY_DEREGISTRATION, peer(AE1), KeyDeregistrationRequest(MAF, rel), no_exporter)
    with pytest.raises(MAFError) as ei:
        retrieve(svc, rel)
    assert ei.value.rsc is RSC.NOT_FOUND
    # revoke_key (admin) and client de-registration do too
    rel2 = svc.run(Procedure.KEY_REGISTRATION, peer(AE1),
                   KeyRegistrationRequest(MAF, clock.now + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                          target_ids=(AE2,), key_value=os.urandom(32)), no_exporter).relative_key_id
    retrieve(svc, rel2)
    assert svc.revoke_key(rel2)
    with pytest.raises(MAFError):
        retrieve(svc, rel2)
    rel3 = svc.run(Procedure.KEY_REGISTRATION, peer(AE1),
                   KeyRegistrationRequest(MAF, clock.now + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                          target_ids=(AE2,), key_value=os.urandom(32)), no_exporter).relative_key_id
    retrieve(svc, rel3)
    svc.run(Procedure.DEREGISTRATION, peer(AE2), DeregistrationRequest(MAF, regs[AE2]), no_exporter)
    with pytest.raises(MAFError) as ei:
        retrieve(svc, rel3)
    assert ei.value.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED


def test_other_instance_stops_serving_a_revoked_key_within_the_ttl(env) -> None:
    tmp, clock, store = env
    ttl = 0.3
    a = make_service(store, clock, key_cache_ttl=timedelta(seconds=ttl))
    store_b = make_store(tmp / "maf.db", clock)
    try:
        b = make_service(store_b, clock, provision=False, key_cache_ttl=timedelta(seconds=ttl))
        key = os.urandom(32)
        rel, _ = setup(a, clock, key)
        assert retrieve(b, rel).key_value == key
        a.revoke_key(rel)
        t0 = time.monotonic()
        served_after = 0.0
        while True:
            try:
                retrieve(b, rel)
                served_after = time.monotonic() - t0
            except MAFError as exc:
                assert exc.rsc is RSC.NOT_FOUND
                break
            assert time.monotonic() - t0 < 5 * ttl, "revoked key still served long after the TTL"
            time.sleep(0.02)
        assert served_after <= ttl
        # every answer B gave from its cache after the revocation is in the audit trail
        oks = [o for s, o in retrievals(store) if o == "ok"]
        assert len(oks) >= 1
    finally:
        store_b.close()


def test_failed_audit_commit_fails_the_retrieval(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(seconds=60))
    rel, _ = setup(svc, clock, os.urandom(32))
    retrieve(svc, rel)  # cached: the failure must come from the audit, not a read
    with SQLSpy(store) as spy:
        spy.fail_audit = True
        with pytest.raises(AuditCommitError):
            retrieve(svc, rel)
    assert retrievals(store) == [(AE2, "ok")]


def test_failed_audit_commit_over_the_server_sends_no_key(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock)

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2:
            for c in (c1, c2):
                await c.register(clock.now + timedelta(days=1))
            reg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            with SQLSpy(store) as spy:
                spy.fail_audit = True
                with pytest.raises(MAFResponseError) as ei:
                    await c2.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.INTERNAL_SERVER_ERROR
            assert (await c2.retrieve_key(reg.key_id)).key == reg.key

    run(main)
    assert retrievals(store) == [(AE2, "ok")]


def test_concurrent_retrievals_over_the_server_are_all_audited(env) -> None:
    _, clock, store = env
    svc = make_service(store, clock, key_cache_ttl=timedelta(0))
    n_clients, per = 6, 10

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            async with connected(srv.port, AE2) as c2:
                await c2.register(clock.now + timedelta(days=1))
            keys = []
            for _ in range(3):
                await c1.connect()  # one exporter key per session
                keys.append(await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1)))
            clients = [connected(srv.port, AE2) for _ in range(n_clients)]
            cs = [await cm.__aenter__() for cm in clients]
            try:
                async def worker(c: Any, i: int) -> None:
                    for j in range(per):
                        k = keys[(i + j) % len(keys)]
                        assert (await c.retrieve_key(k.key_id)).key == k.key

                await asyncio.gather(*(worker(c, i) for i, c in enumerate(cs)))
            finally:
                for cm in clients:
                    await cm.__aexit__(None, None, None)

    run(main)
    assert retrievals(store) == [(AE2, "ok")] * (n_clients * per)
    assert svc.audit.records >= n_clients * per
