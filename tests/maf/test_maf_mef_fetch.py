"""The MAF's Km fetches from the MEF (TS-0003 8.3.2.1, 8.8.2.2 with a KeID) do not stall the MAF.

A MEF that accepts connections and never answers (down, overloaded, or a black hole on the
path) stands in for a slow MEF: real TCP, the MAF's real MEFKeyFetcher with a 2 s timeout.
While clients with made-up KeIDs wait for it, a KmID client on the same MAF is served at
once (before, the fetch ran inside the TLS PSK callback on the listener's event loop and
stopped every session for the MEF's timeout), and the MEF never sees more than
MEF_FETCH_CONCURRENCY requests at a time however many KeID handshakes arrive.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, AE1, MAF, FakeClock, connected, make_service, make_store, run, running

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.mef import FetcherMEFClient
from m2msec.maf.service import MEF_FETCH_CONCURRENCY
from m2msec.mef import MEFKeyFetcher, mef_tls_config
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

MEF_FQDN = "mef.example.com"


class BlackHoleMEF:
    """Accepts TCP connections and never sends a byte; counts how many are open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.max_open = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while await reader.read(4096):
                pass
        finally:
            self.open -= 1
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def test_a_slow_mef_does_not_stall_the_maf_and_gets_bounded_concurrency(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    hole = BlackHoleMEF()

    async def main() -> None:
        port = await hole.start()
        fetcher = MEFKeyFetcher("127.0.0.1", port, mef_tls_config(psk=PSKCredentials(b"maf-psk", b"k" * 32)),
                                target_id=MAF, mef_fqdn=MEF_FQDN, timeout=2.0)
        svc = make_service(store, clock, mef=FetcherMEFClient(fetcher))  # type: ignore[arg-type]
        n = MEF_FETCH_CONCURRENCY + 4
        try:
            async with running(svc) as srv:
                async def keid_client() -> BaseException | None:
                    keid = f"{secrets.token_hex(16)}@{MEF_FQDN}"
                    c = MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                                  psk=PSKCredentials(keid.encode(), b"x" * 32), timeout=9.0))
                    try:
                        async with c:
                            pass
                    except (TLSHandshakeError, OSError, asyncio.TimeoutError) as exc:
                        return exc
                    return None

                waiting = [asyncio.create_task(keid_client()) for _ in range(n)]
                deadline = time.monotonic() + 5
                while hole.open < MEF_FETCH_CONCURRENCY and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert hole.open == MEF_FETCH_CONCURRENCY
                # the MAF answers a KmID client while every MEF slot waits for the black hole
                t0 = time.perf_counter()
                async with connected(srv.port, AE1) as c:
                    reg = await c.register(clock.now + timedelta(days=1))
                elapsed = time.perf_counter() - t0
                assert reg.maf_client_id == AE1
                assert elapsed < 1.0, f"a KmID client waited {elapsed:.2f} s behind the MEF fetches"
                results = await asyncio.gather(*waiting)
                # every made-up KeID failed its handshake, after at most two rounds of MEF timeouts
                assert all(isinstance(r, TLSHandshakeError) for r in results), results
                assert hole.max_open == MEF_FETCH_CONCURRENCY and hole.accepted == n
                assert svc._prefetched and all(v[1] is None for v in svc._prefetched.values())
        finally:
            await hole.close()

    try:
        run(main)
    finally:
        store.close()


@pytest.mark.parametrize("prefetch_only", [True, False])
def test_psk_callback_without_a_prefetch(tmp_path: Path, prefetch_only: bool) -> None:
    """Behind the MAF's listener (prefetch_only) the PSK callback never fetches itself; an
    engine driven outside it (prefetch_only False) still gets Km from the MEF in the callback."""
    from m2msec.maf import InMemoryMEF

    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        mef = InMemoryMEF(MAF)
        keid = "ab" * 16 + "@" + MEF_FQDN
        km = mef.enrol(keid, b"e" * 32)
        svc = make_service(store, clock, mef=mef)
        svc.prefetch_only = prefetch_only
        got = svc.psk_lookup(keid.encode(), None)
        assert got == (None if prefetch_only else km)
        assert mef.calls == ([] if prefetch_only else [keid])
        # a KmID of this MAF is never prefetched; a KeID is, and the callback then reads the result
        assert svc.psk_prefetch(f"ae1@{MAF}".encode()) is None
        assert svc.psk_prefetch(b"not a key id") is None

        async def prefetch() -> None:
            waiting = svc.psk_prefetch(keid.encode())
            assert waiting is not None
            await waiting

        asyncio.run(prefetch())
        assert svc.psk_lookup(keid.encode(), None) == km
    finally:
        store.close()


def test_prefetch_results_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of made-up KeIDs cannot grow the prefetch table beyond PREFETCH_MAX: the oldest go."""
    from m2msec.maf import InMemoryMEF
    from m2msec.maf import service as service_mod

    monkeypatch.setattr(service_mod, "PREFETCH_MAX", 3)
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    try:
        svc = make_service(store, clock, mef=InMemoryMEF(MAF))
        keids = [f"{i:032x}@{MEF_FQDN}" for i in range(5)]

        async def flood() -> None:
            for k in keids:
                waiting = svc.psk_prefetch(k.encode())
                assert waiting is not None
                await waiting

        asyncio.run(flood())
        assert list(svc._prefetched) == keids[2:]
    finally:
        store.close()


def test_a_recheck_pass_asks_a_slow_mef_with_bounded_concurrency(tmp_path: Path) -> None:
    """A re-check pass (profile F16) against a MEF that never answers: at most
    MEF_RECHECK_CONCURRENCY requests at a time, every Km kept (no answer is not a revocation)."""
    from m2msec.maf.service import MEF_RECHECK_CONCURRENCY, NS

    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    hole = BlackHoleMEF()
    n = MEF_RECHECK_CONCURRENCY + 2

    async def main() -> dict[str, int]:
        port = await hole.start()
        fetcher = MEFKeyFetcher("127.0.0.1", port, mef_tls_config(psk=PSKCredentials(b"maf-psk", b"k" * 32)),
                                target_id=MAF, mef_fqdn=MEF_FQDN, timeout=1.0)
        svc = make_service(store, clock, mef=FetcherMEFClient(fetcher))  # type: ignore[arg-type]
        with store.transaction() as tx:
            for i in range(n):
                kmid = f"{i:032x}@{MAF}"
                tx.put_credential(NS.KM, kmid, bytes([i]) * 32,
                                  metadata={"client_id": f"//sp.example.com/Cr{i}", "origin": "mef", "kmid": kmid,
                                            "keid": f"{i:032x}@{MEF_FQDN}"})
        try:
            return await svc.recheck_mef_credentials()
        finally:
            await hole.close()

    try:
        counts = run(main)
        assert counts == {"checked": n, "valid": 0, "revoked": 0, "unreachable": n}
        assert hole.max_open == MEF_RECHECK_CONCURRENCY and hole.accepted == n
        assert len(store.list_credentials(NS.KM, where={"origin": "mef"})) == n
    finally:
        store.close()


def test_concurrent_handshakes_with_one_keid_all_bind(tmp_path: Path) -> None:
    """Several sessions of one device opened at once with the same KeID: each binds to the Km the
    MEF gave (before, the first bind consumed it and the others were closed after their handshake)."""
    from m2msec.maf import InMemoryMEF
    from m2msec.maf.client import MAFResponseError
    from m2msec.onem2m.rsc import ResponseStatusCode as RSC

    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    mef = InMemoryMEF(MAF)
    keid = "11" * 16 + "@" + MEF_FQDN
    km = mef.enrol(keid, b"e" * 32, lifetime=timedelta(days=2), enrolee_id="//sp.example.com/CAER")
    svc = make_service(store, clock, mef=mef)  # type: ignore[arg-type]

    async def main() -> None:
        async with running(svc) as srv:
            clients = [MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                                 psk=PSKCredentials(keid.encode(), km), timeout=5.0))
                       for _ in range(4)]
            await asyncio.gather(*(c.connect() for c in clients))
            results = await asyncio.gather(*(c.register(clock.now + timedelta(days=1)) for c in clients),
                                           return_exceptions=True)
            ok = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, MAFResponseError)]
            assert len(ok) == 1 and len(refused) == 3, results
            assert all(r.rsc is RSC.ORIGINATOR_HAS_ALREADY_REGISTERED for r in refused)
            assert all(c.connected for c in clients)
            for c in clients:
                await c.aclose()
            # a KeID handshake with a wrong Km still fails, whatever was fetched before
            with pytest.raises(TLSHandshakeError):
                async with MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                                     psk=PSKCredentials(keid.encode(), bytes(32)), timeout=5.0)):
                    pass

    try:
        run(main)
    finally:
        store.close()


def test_the_fetcher_itself_bounds_its_requests_to_the_mef() -> None:
    """MEFKeyFetcher (used by the MAF, the gateway's ESPrim keys and its SAEF listener) keeps at
    most ``max_concurrent`` requests in flight per event loop; the rest wait their turn and each
    fails on its own timeout (no connection is opened for them meanwhile)."""
    hole = BlackHoleMEF()

    async def main() -> tuple[int, int, list[BaseException | None]]:
        port = await hole.start()
        fetcher = MEFKeyFetcher("127.0.0.1", port, mef_tls_config(psk=PSKCredentials(b"target", b"k" * 32)),
                                target_id="/id-in", mef_fqdn=MEF_FQDN, timeout=1.0, max_concurrent=3)

        async def one() -> BaseException | None:
            try:
                await fetcher.fetch(f"{secrets.token_hex(16)}@{MEF_FQDN}", 22)
            except Exception as exc:  # noqa: BLE001 - what each caller sees
                return exc
            return None

        try:
            results = await asyncio.gather(*(one() for _ in range(7)))
        finally:
            await hole.close()
        return hole.max_open, hole.accepted, results

    max_open, accepted, results = asyncio.run(asyncio.wait_for(main(), 30))
    assert max_open == 3 and accepted == 7
    assert all(isinstance(r, (OSError, TimeoutError, TLSHandshakeError)) for r in results), results
    with pytest.raises(ValueError):
        MEFKeyFetcher("127.0.0.1", 1, mef_tls_config(psk=PSKCredentials(b"t", b"k" * 32)), target_id="/x",
                      mef_fqdn=MEF_FQDN, max_concurrent=0)
