"""Retrieval cache invalidation across MAF instances (TS-0003 8.8.2.8; profile F10).

Two MAF instances on one database, each with a 30 s retrieval cache (so that a refusal cannot
come from the TTL): a change through instance A (Key De-Registration 8.8.2.10, Client
De-Registration 8.8.2.6, Key Registration Update 8.8.2.9 removing the target, admin revoke)
stops instance B from serving its cached answer at once.  PostgreSQL: B learns it by a NOTIFY
on its listener session; while that session is down B serves no hits.  SQLite: B checks the
change sequence on every hit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _sql_spy import SQLSpy
from _mafhelp import ADMIN, AE1, AE2, AE3, KEK, MAF, FakeClock, connected, kmid, make_service, make_store, run, running

from m2msec.maf import MAFResponseError
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    DeregistrationRequest,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationUpdateRequest,
    KeyRetrievalRequest,
    MAFError,
    Procedure,
    RegistrationUpdateRequest,
)
from m2msec.maf.service import MAFPeer, MAFService, SessionEnded
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.store import open_store

TTL = timedelta(seconds=30)


def peer(cid: str) -> MAFPeer:
    return MAFPeer("km", cid, f"11-{cid}", kmid=None)


def no_exporter() -> tuple[bytes, bytes]:
    raise AssertionError("no exporter")


class Pair:
    """Instances A and B, their stores (one database) and the clock."""

    def __init__(self, a: MAFService, b: MAFService, clock: FakeClock, url: str) -> None:
        self.a, self.b, self.clock, self.url = a, b, clock, url

    def register_clients(self) -> dict[str, str]:
        return {cid: self.a.run(Procedure.CLIENT_REGISTRATION, peer(cid),
                                ClientRegistrationRequest(MAF, self.clock.now + timedelta(days=1), ADMIN),
                                no_exporter).maf_client_reg_id for cid in (AE1, AE2, AE3)}

    def register_key(self, targets: tuple[str, ...] = (AE2,)) -> tuple[str, bytes]:
        key = os.urandom(32)
        rsp = self.a.run(Procedure.KEY_REGISTRATION, peer(AE1),
                         KeyRegistrationRequest(MAF, self.clock.now + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                                target_ids=targets, key_value=key), no_exporter)
        return rsp.relative_key_id, key


def retrieve(svc: MAFService, rel: str, cid: str = AE2) -> Any:
    return svc.run(Procedure.KEY_RETRIEVAL, peer(cid), KeyRetrievalRequest(rel), no_exporter)


def refused_within(fn: Callable[[], Any], limit: float) -> tuple[float, MAFError]:
    """Call ``fn`` until it raises MAFError; (seconds until then, the error).  Fails after ``limit``."""
    t0 = time.monotonic()
    while True:
        try:
            fn()
        except MAFError as exc:
            return time.monotonic() - t0, exc
        assert time.monotonic() - t0 < limit, f"still served {limit} s after the change (TTL {TTL})"
        time.sleep(0.001)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    clock = FakeClock()
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'maf.db'}"
        sa, sb = make_store(tmp_path / "maf.db", clock), make_store(tmp_path / "maf.db", clock)
    else:
        url = request.getfixturevalue("pg_server").create_database()
        sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, key_cache_ttl=TTL)
    b = make_service(sb, clock, provision=False, key_cache_ttl=TTL)
    try:
        assert b.wait_cache_ready(10)
        yield Pair(a, b, clock, url)
    finally:
        sb.close()
        sa.close()


def cached_on_b(p: Pair, rel: str, key: bytes, cid: str = AE2) -> None:
    """B reads the key once (a miss) and then serves it from its cache (no Key Registration read)."""
    assert retrieve(p.b, rel, cid).key_value == key
    with SQLSpy(p.b.store) as spy:
        assert retrieve(p.b, rel, cid).key_value == key
    if p.b.store.can_listen:
        assert spy.reads() == []  # PostgreSQL: a hit is no store round trip
    else:
        assert len(spy.reads()) == 1 and "m2msec.notify" in spy.reads()[0]  # SQLite: the sequence only


def test_key_deregistration_through_a_stops_b_at_once(pair: Pair) -> None:
    pair.register_clients()
    rel, key = pair.register_key()
    cached_on_b(pair, rel, key)
    pair.a.run(Procedure.KEY_DEREGISTRATION, peer(AE1), KeyDeregistrationRequest(MAF, rel), no_exporter)
    took, exc = refused_within(lambda: retrieve(pair.b, rel), 1.0)
    assert exc.rsc is RSC.NOT_FOUND
    if not pair.b.store.can_listen:
        assert took < 0.05  # SQLite: the very next retrieval (no asynchronous delivery)
    # the refusal is not cached and B's other keys are still served (from the store, then cached)
    rel2, key2 = pair.register_key()
    cached_on_b(pair, rel2, key2)


def test_client_deregistration_through_a_stops_b_at_once(pair: Pair) -> None:
    regs = pair.register_clients()
    rel, key = pair.register_key()
    cached_on_b(pair, rel, key)
    pair.a.run(Procedure.DEREGISTRATION, peer(AE2), DeregistrationRequest(MAF, regs[AE2]), no_exporter)
    _, exc = refused_within(lambda: retrieve(pair.b, rel), 1.0)
    assert exc.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED


def test_registration_update_removing_the_target_stops_b_at_once(pair: Pair) -> None:
    pair.register_clients()
    rel, key = pair.register_key((AE2,))
    cached_on_b(pair, rel, key)
    pair.a.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1),
               KeyRegistrationUpdateRequest(MAF, rel, target_ids=(AE3,)), no_exporter)
    _, exc = refused_within(lambda: retrieve(pair.b, rel), 1.0)
    assert exc.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert retrieve(pair.b, rel, AE3).key_value == key  # the new target gets it


def test_client_registration_update_shortening_expiry_reaches_b(pair: Pair) -> None:
    regs = pair.register_clients()
    rel, key = pair.register_key()
    cached_on_b(pair, rel, key)
    pair.a.run(Procedure.REGISTRATION_UPDATE, peer(AE2),
               RegistrationUpdateRequest(MAF, regs[AE2], expiration_time=pair.clock.now + timedelta(seconds=10)),
               no_exporter)
    # B must have dropped the cached registration expiry (a day away): once the clock passes the new
    # expiry, B refuses although its cache entry is far younger than the TTL
    deadline = time.monotonic() + 1.0
    while pair.b.store.can_listen and pair.b.cache_notifications == 0:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    pair.clock.advance(seconds=11)
    with pytest.raises(MAFError) as ei:
        retrieve(pair.b, rel)
    assert ei.value.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED


def test_admin_revoke_through_a_stops_b_at_once(pair: Pair) -> None:
    pair.register_clients()
    rel, key = pair.register_key()
    cached_on_b(pair, rel, key)
    assert pair.a.revoke_key(rel)
    _, exc = refused_within(lambda: retrieve(pair.b, rel), 1.0)
    assert exc.rsc is RSC.NOT_FOUND


def test_additions_through_a_keep_b_cache(pair: Pair) -> None:
    """Key/Client Registration only add to what a retrieval may return: B keeps its cache."""
    pair.register_clients()
    rel, key = pair.register_key()
    cached_on_b(pair, rel, key)
    pair.register_key()
    pair.a.run(Procedure.CLIENT_REGISTRATION, peer(AE1),
               ClientRegistrationRequest(MAF, pair.clock.now + timedelta(days=1), "other.example.com"), no_exporter)
    time.sleep(0.05)
    with SQLSpy(pair.b.store) as spy:
        assert retrieve(pair.b, rel).key_value == key
    assert not any("JOIN" in s for s in spy.reads())  # still a hit


@pytest.mark.postgres
def test_listener_loss_means_no_hits_until_reconnected(pg_server: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    url = pg_server.create_database()
    sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, key_cache_ttl=TTL)
    b = make_service(sb, clock, provision=False, key_cache_ttl=TTL)
    p = Pair(a, b, clock, url)
    dbname = url.rsplit("/", 1)[1]
    admin = psycopg.connect(pg_server.admin_dsn, autocommit=True)
    try:
        assert b.wait_cache_ready(10)
        p.register_clients()
        rel, key = p.register_key()
        rel2, key2 = p.register_key()
        cached_on_b(p, rel, key)
        cached_on_b(p, rel2, key2)
        # cut B's listener off and keep it off: no new connections to this database for a while
        admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                               "application_name = 'm2msec-listen' AND datname = %s", (dbname,)).fetchall()
        assert len(killed) == 1
        deadline = time.monotonic() + 5
        while b.wait_cache_ready(0):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        # listener down: every retrieval reads the store (over B's pooled connections)
        for _ in range(2):
            with SQLSpy(sb) as spy:
                assert retrieve(b, rel).key_value == key
            assert any("JOIN" in s for s in spy.reads())
        # a de-registration whose notification B cannot receive is still honoured at once
        a.run(Procedure.KEY_DEREGISTRATION, peer(AE1), KeyDeregistrationRequest(MAF, rel), no_exporter)
        with pytest.raises(MAFError) as ei:
            retrieve(b, rel)
        assert ei.value.rsc is RSC.NOT_FOUND
        time.sleep(0.3)
        assert not b.wait_cache_ready(0)  # still cut off (reconnect attempts are refused)
        admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        assert b.wait_cache_ready(15)  # reconnected (backoff)
        cached_on_b(p, rel2, key2)  # hits again, after a fresh read (the cache was emptied)
    finally:
        admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        admin.close()
        sb.close()
        sa.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_servers_deregistration_over_the_wire(backend: str, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    """Real MAF servers A and B (run_async path): B serves a cached key, A's client de-registers
    it, B's client is refused well inside the 30 s TTL."""
    clock = FakeClock()
    if backend == "sqlite":
        sa, sb = make_store(tmp_path / "maf.db", clock), make_store(tmp_path / "maf.db", clock)
    else:
        url = request.getfixturevalue("pg_server").create_database()
        sa, sb = open_store(url, KEK, clock=clock), open_store(url, KEK, clock=clock)
    a = make_service(sa, clock, key_cache_ttl=TTL)
    b = make_service(sb, clock, provision=False, key_cache_ttl=TTL)
    took: list[float] = []

    async def main() -> None:
        async with running(a) as s1, running(b) as s2:
            assert b.wait_cache_ready(10)
            async with connected(s1.port, AE1) as c1, connected(s2.port, AE2) as c2:
                await c1.register(clock.now + timedelta(days=1))
                await c2.register(clock.now + timedelta(days=1))
                reg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
                assert (await c2.retrieve_key(reg.key_id)).key == reg.key
                with SQLSpy(sb) as spy:
                    assert (await c2.retrieve_key(reg.key_id)).key == reg.key
                assert not any("JOIN" in s for s in spy.reads())  # served from B's cache
                await c1.deregister_key(reg.key_id)
                t0 = time.monotonic()
                while True:
                    try:
                        await c2.retrieve_key(reg.key_id)
                    except MAFResponseError as exc:
                        assert exc.rsc is RSC.NOT_FOUND
                        break
                    assert time.monotonic() - t0 < 1.0, "B still serves the de-registered key"
                took.append(time.monotonic() - t0)

    try:
        run(main)
    finally:
        sb.close()
        sa.close()
    assert took and took[0] < 1.0


# ------------------------------------------------------------------ real processes: serve --workers 2


def _serve_config(tmp: Path, store_url: str, ttl_s: float) -> Path:
    from m2msec.store import KeyEncryptionKey

    KeyEncryptionKey.generate().write_file(tmp / "kek.hex", overwrite=True)
    cfg = tmp / "maf.toml"
    cfg.write_text(f'fqdn = "{MAF}"\nstore = "{store_url}"\nkek_file = "kek.hex"\nkey_cache_ttl_s = {ttl_s}\n'
                   f'[[admin]]\nfqdn = "{ADMIN}"\n', encoding="utf-8")
    return cfg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs Linux SO_REUSEPORT")
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_serve_workers_stop_serving_a_deregistered_key_at_once(backend: str, request: pytest.FixtureRequest,
                                                               tmp_path: Path) -> None:
    """``maf serve --workers 2`` (two processes, key_cache_ttl_s = 30): every target connection,
    whichever process holds it, has the key cached; after the Key De-Registration each of them is
    refused well inside the TTL (SQLite: on its first try)."""
    import asyncio
    from datetime import UTC, datetime

    from _mafserve import MAFServe
    from typer.testing import CliRunner

    from m2msec.maf import MAFClient, MAFClientConfig
    from m2msec.maf.cli import app
    from m2msec.tls.engine import PSKCredentials

    url = (f"sqlite:///{tmp_path / 'maf.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_server").create_database())
    cfg = _serve_config(tmp_path, url, 30)
    kms = {AE1: bytes([0x11]) * 32, AE2: bytes([0x22]) * 32}
    for cid, km in kms.items():
        kid = f"{cid.rsplit('/', 1)[1].lower()}@{MAF}"
        r = CliRunner().invoke(app, ["add-client", "-c", str(cfg), "--client-id", cid, "--kmid", kid,
                                     "--km-hex", km.hex()])
        assert r.exit_code == 0, r.output

    def client(port: int, cid: str) -> MAFClient:
        kid = f"{cid.rsplit('/', 1)[1].lower()}@{MAF}"
        return MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", port, psk=PSKCredentials(kid.encode(), kms[cid]),
                                         timeout=10.0))

    srv = MAFServe(cfg, "--workers", "2")
    waits: list[float] = []
    try:
        async def main() -> None:
            now = datetime.now(UTC)
            src = client(srv.port, AE1)
            targets: list[MAFClient] = []
            async with src:
                await src.register(now + timedelta(days=1))
                key = await src.register_key(SUID.MAF_ESPRIM, [AE2], now + timedelta(hours=1))
                try:
                    for i in range(12):  # fresh connections: the kernel spreads them over both processes
                        c = client(srv.port, AE2)
                        await c.connect()
                        targets.append(c)
                        if i == 0:
                            await c.register(now + timedelta(days=1))
                    for _ in range(2):  # read, then (cache warm in the process holding it) a hit
                        for c in targets:
                            assert (await c.retrieve_key(key.key_id)).key == key.key
                    await src.deregister_key(key.key_id)
                    for c in targets:
                        t0 = time.monotonic()
                        while True:
                            try:
                                await c.retrieve_key(key.key_id)
                            except MAFResponseError as exc:
                                assert exc.rsc is RSC.NOT_FOUND
                                break
                            assert backend == "postgresql", "SQLite: served once after the de-registration"
                            assert time.monotonic() - t0 < 1.0, "a worker still serves the de-registered key"
                            await asyncio.sleep(0.001)
                        waits.append(time.monotonic() - t0)
                finally:
                    for c in targets:
                        await c.aclose()

        asyncio.run(asyncio.wait_for(main(), 60))
        assert len(waits) == 12 and max(waits) < 1.0
        assert "Traceback" not in srv.stderr()
    finally:
        srv.stop()


def test_key_cache_ttl_config(tmp_path: Path) -> None:
    from m2msec.errors import ParseError
    from m2msec.maf.server import build_server, load_config

    url = f"sqlite:///{tmp_path / 'maf.db'}"
    assert load_config(_serve_config(tmp_path, url, 2.5)).key_cache_ttl == timedelta(seconds=2.5)
    cfg = load_config(_serve_config(tmp_path, url, 0))
    store = make_store(tmp_path / "maf.db", FakeClock())
    try:
        svc = build_server(cfg, store, clock=FakeClock()).service
        assert svc.key_cache_ttl == timedelta(0) and svc.cache_invalidation == "off" and not svc.wait_cache_ready(0)
    finally:
        store.close()
    for bad in ("-1", "nan", "86401", '"soon"'):
        (tmp_path / "bad.toml").write_text(f'fqdn = "{MAF}"\nstore = "{url}"\nkey_cache_ttl_s = {bad}\n',
                                           encoding="utf-8")
        with pytest.raises(ParseError, match="key_cache_ttl_s|could not convert"):
            load_config(tmp_path / "bad.toml")
    plain = tmp_path / "plain.toml"
    plain.write_text(f'fqdn = "{MAF}"\nstore = "{url}"\n', encoding="utf-8")
    assert load_config(plain).key_cache_ttl == timedelta(seconds=1)  # the default


@pytest.mark.postgres
def test_notification_payloads_on_the_wire(pg_server: Any) -> None:
    """An independent LISTEN session sees one notification per change procedure (JSON payload)
    and none for the procedures that only add or read."""
    import json

    clock = FakeClock()
    url = pg_server.create_database()
    store = open_store(url, KEK, clock=clock)
    a = make_service(store, clock, key_cache_ttl=TTL)
    p = Pair(a, a, clock, url)
    obs = psycopg.connect(url, autocommit=True)
    try:
        obs.execute("LISTEN m2msec_maf_retrieval")
        regs = p.register_clients()
        rel, _ = p.register_key()
        retrieve(a, rel)
        a.run(Procedure.KEY_REGISTRATION_UPDATE, peer(AE1), KeyRegistrationUpdateRequest(MAF, rel, target_ids=(AE3,)),
              no_exporter)
        a.run(Procedure.KEY_DEREGISTRATION, peer(AE1), KeyDeregistrationRequest(MAF, rel), no_exporter)
        a.run(Procedure.DEREGISTRATION, peer(AE2), DeregistrationRequest(MAF, regs[AE2]), no_exporter)
        rel2, _ = p.register_key((AE3,))
        a.revoke_key(rel2)
        with pytest.raises(MAFError):  # a refused change commits nothing and notifies nothing
            a.run(Procedure.KEY_DEREGISTRATION, peer(AE2), KeyDeregistrationRequest(MAF, rel2), no_exporter)
        got = [json.loads(n.payload) for n in obs.notifies(timeout=1.0, stop_after=5)]
        got += [json.loads(n.payload) for n in obs.notifies(timeout=0.3)]  # nothing more
    finally:
        obs.close()
        store.close()
    assert got == [
        {"procedure": "key_registration_update", "subject": AE1, "relativeKeyID": rel},
        {"procedure": "key_deregistration", "subject": AE1, "relativeKeyID": rel},
        {"procedure": "deregistration", "subject": AE2, "mafClientRegID": regs[AE2]},
        {"procedure": "revoke-key", "subject": rel2, "relativeKeyID": rel2},
    ]


def test_remove_client_through_a_ends_its_sessions_on_b(pair: Pair) -> None:
    """``maf remove-client`` run against instance A: a session of the removed Target on instance
    B (a peer from a MAF Handshake) gets SessionEnded at its next Key Retrieval, although B had the
    key cached, and at its next other procedure; a session of another client is untouched."""
    pair.register_clients()
    rel, key = pair.register_key((AE2,))
    cached_on_b(pair, rel, key)
    session = MAFPeer("km", AE2, f"11-{kmid(AE2)}", kmid=kmid(AE2), handshake=True)
    assert pair.b.run(Procedure.KEY_RETRIEVAL, session, KeyRetrievalRequest(rel), no_exporter).key_value == key
    assert pair.a.remove_client(AE2)["registrations"] == 1
    _, err = refused_within(
        lambda: pair.b.run(Procedure.KEY_RETRIEVAL, session, KeyRetrievalRequest(rel), no_exporter), 3.0)
    assert isinstance(err, SessionEnded) and err.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED
    with pytest.raises(SessionEnded):
        pair.b.run(Procedure.CLIENT_REGISTRATION, session,
                   ClientRegistrationRequest(MAF, pair.clock.now + timedelta(days=1), ADMIN), no_exporter)
    other = MAFPeer("km", AE1, f"11-{kmid(AE1)}", kmid=kmid(AE1), handshake=True)
    rsp = pair.b.run(Procedure.KEY_REGISTRATION, other,
                     KeyRegistrationRequest(MAF, pair.clock.now + timedelta(hours=1), ADMIN, SUID.MAF_ESPRIM,
                                            target_ids=(AE3,), key_value=os.urandom(32)), no_exporter)
    assert rsp.relative_key_id
