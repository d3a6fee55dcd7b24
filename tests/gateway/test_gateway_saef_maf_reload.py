"""SIGHUP and ``[saef_maf]``, in process (TS-0003 8.2.2.3, 8.8.2.8): what
:meth:`m2msec.gateway.saef.SAEFListener.reload_async` does with the MAF-based SAEF's MAF Client.

A real :class:`~m2msec.maf.server.MAFServer` runs on the same loop as the listener (built as
``gateway serve`` builds it: :meth:`SAEFListener.for_config` with
:func:`m2msec.gateway.saefmaf.build_directory`).  An unchanged ``[saef_maf]`` (a freshly loaded,
equal configuration) keeps the MAF Client and its cached Kc; a changed one gets a new MAF Client
(Kc retrieved again) and the previous one is retired: its retrieval in flight completes (the
handshake waiting on it gets its answer), then its MAF session is closed; a removed one refuses
KcIDs.  ``require_saef_for`` is swapped together with the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from m2msec.esprim import MemoryReceiverState, ProvisionedKeySource, Receiver
from m2msec.gateway.config import SAEFConfig, SAEFMAFConfig
from m2msec.gateway.saef import SAEFListener
from m2msec.gateway.saefmaf import build_directory
from m2msec.gateway.server import Gateway
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService
from m2msec.maf.client import RegisteredKey
from m2msec.maf.server import MAFServer
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResponsePrimitive,
    ResponseStatusCode,
)
from m2msec.onem2m.enums import SUID
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials, TLSFailureReason, TLSHandshakeError

SP_ID = "//m2m.example.com"
CSE_ID, CSE_NAME = "id-in", "cse-in"
MAF_FQDN, ADMIN = "maf.m2m.example.com", "sp.m2m.example.com"
AE = "Cmaf-reload"
STATIC_KID, STATIC_KPSA = "static-reload@sp.m2m.example.com", os.urandom(32)


def utc_now() -> datetime:
    return datetime.now(UTC)


class CSE:
    async def __call__(self, req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, rvi=req.rvi or "3", pc={"m2m:dbg": req.fr})


@dataclass
class Rig:
    gw: Gateway
    saef: SAEFListener
    config: SAEFConfig
    gw_kmid: str
    gw_km: bytes
    ae_client: MAFClientConfig
    maf_port: int

    def maf_config(self, **changes: Any) -> SAEFMAFConfig:
        """``[saef_maf]`` as load_config reads it: a new object every time (new PSKCredentials)."""
        base = SAEFMAFConfig(MAF_FQDN, ADMIN, "127.0.0.1", self.maf_port,
                             psk=PSKCredentials(self.gw_kmid.encode(), bytes(self.gw_km)), timeout=2.0)
        return dataclasses.replace(base, **changes)

    async def key(self) -> RegisteredKey:
        async with MAFClient(self.ae_client) as c:
            return await c.register_key(SUID.MAF_SAEF, ["/" + CSE_ID], utc_now() + timedelta(hours=1))

    async def retrieve(self, key: RegisteredKey) -> int:
        ep = psk_client(KpsaEntry(key.key_id, key.key), id_b="/" + CSE_ID)
        async with await SAEFHTTPClient.connect(ep, self.saef.host, self.saef.port, timeout=5) as c:
            rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=f"/{CSE_ID}/{CSE_NAME}", fr=AE,
                                                rqi=os.urandom(4).hex(), rvi="3"))
            return int(rsp.rsc)


@asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    gw_kmid, gw_km = f"gw-reload@{MAF_FQDN}", os.urandom(32)
    ae_kmid, ae_km = f"ae-reload@{MAF_FQDN}", os.urandom(32)
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.generate(), clock=utc_now)
    svc = MAFService(store, MAF_FQDN, admins=[AdminConfig(ADMIN)], clock=utc_now)
    svc.add_km_client(gw_kmid, gw_km, client_id="/" + CSE_ID)
    svc.add_km_client(ae_kmid, ae_km, client_id=AE)
    try:
        async with MAFServer(svc) as srv, AEEndpoint(CSE()) as ep:
            ae_client = MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                        psk=PSKCredentials(ae_kmid.encode(), ae_km), timeout=5)
            async with MAFClient(ae_client) as c:
                await c.register(utc_now() + timedelta(days=1))
            receiver = Receiver(keys=ProvisionedKeySource([], clock=utc_now), state=MemoryReceiverState(clock=utc_now),
                                clock=utc_now)
            async with Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=receiver, sp_id=SP_ID,
                               require_saef_for=(AE,)) as gw:
                r = Rig(gw, None, None, gw_kmid, gw_km, ae_client, srv.port)  # type: ignore[arg-type]
                r.config = SAEFConfig(host="127.0.0.1", port=0, psk=(KpsaEntry(STATIC_KID, STATIC_KPSA,
                                                                               peer_id="Cstatic"),),
                                      require_saef_for=(AE,), maf=r.maf_config())
                assert r.config.maf is not None
                maf = build_directory(r.config.maf, cse_id=CSE_ID, sp_id=SP_ID, clock=utc_now)
                r.saef = SAEFListener.for_config(gw, r.config, clock=utc_now, sp_id=SP_ID, maf=maf)
                async with r.saef:
                    yield r
    finally:
        store.close()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(fn(), 30)

    return asyncio.run(main())


async def _settle(r: Rig) -> None:
    """Let the retirements started by a reload finish."""
    if r.saef._retiring:
        await asyncio.gather(*list(r.saef._retiring))


def test_an_unchanged_saef_maf_keeps_the_client_and_its_cached_kc(tmp_path: Path) -> None:
    async def go() -> None:
        async with rig(tmp_path) as r:
            key = await r.key()
            assert await r.retrieve(key) == 2000
            old = r.saef.maf
            assert old is not None and old.retrievals == 1
            same = dataclasses.replace(r.config, maf=r.maf_config(), require_saef_for=("Cother-*",))
            assert same.maf is not r.config.maf and same.maf == r.config.maf
            assert await r.saef.reload_async(same, clock=utc_now) == 1
            assert r.saef.maf is old and not old.retired and r.saef._retiring == {}
            assert await r.retrieve(key) == 2000
            assert old.retrievals == 1  # answered from the cached Kc: the MAF was not asked again
            assert r.gw.require_saef_for == ("Cother-*",)  # swapped with the rest

    run(go)


@pytest.mark.parametrize("change", [{"timeout": 3.0}, {"negative_ttl": 1.0}, {"km": True}])
def test_a_changed_saef_maf_gets_a_new_client_and_the_old_one_is_retired(tmp_path: Path,
                                                                         change: dict[str, Any]) -> None:
    async def go() -> None:
        async with rig(tmp_path) as r:
            key = await r.key()
            assert await r.retrieve(key) == 2000
            old = r.saef.maf
            assert old is not None and old._client.connected  # its MAF session is open
            if change.get("km"):  # another Km for the same KmID: the MAF refuses it (a real credential change)
                new_maf = r.maf_config(psk=PSKCredentials(r.gw_kmid.encode(), os.urandom(32)))
            else:
                new_maf = r.maf_config(**change)
            assert not new_maf.same_settings(r.config.maf)
            await r.saef.reload_async(dataclasses.replace(r.config, maf=new_maf), clock=utc_now)
            new = r.saef.maf
            assert new is not None and new is not old and r.saef.maf_config is new_maf
            assert old.retired
            await _settle(r)
            assert not old._client.connected  # the previous MAF session is closed
            if change.get("km"):  # the new client cannot authenticate: the cached Kc of the old one is gone too
                with pytest.raises(TLSHandshakeError) as ei:
                    await r.retrieve(key)
                assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
            else:
                assert await r.retrieve(key) == 2000
            assert new.retrievals == 1 and old.retrievals == 1  # Kc retrieved again, by the new client

    run(go)


def test_a_removed_saef_maf_refuses_kcids_and_keeps_the_provisioned_bindings(tmp_path: Path) -> None:
    async def go() -> None:
        async with rig(tmp_path) as r:
            key = await r.key()
            assert await r.retrieve(key) == 2000
            old = r.saef.maf
            assert old is not None
            await r.saef.reload_async(dataclasses.replace(r.config, maf=None), clock=utc_now)
            assert r.saef.maf is None and r.saef.maf_config is None and old.retired
            await _settle(r)
            with pytest.raises(TLSHandshakeError) as ei:
                await r.retrieve(key)
            assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
            ep = psk_client(KpsaEntry(STATIC_KID, STATIC_KPSA), id_b="/" + CSE_ID)
            async with await SAEFHTTPClient.connect(ep, r.saef.host, r.saef.port, timeout=5) as c:
                rsp = await c.send(RequestPrimitive(op=Operation.RETRIEVE, to=f"/{CSE_ID}/{CSE_NAME}", fr="Cstatic",
                                                    rqi="s1", rvi="3"))
            assert int(rsp.rsc) == 2000
            # and back: a new MAF Client
            await r.saef.reload_async(r.config, clock=utc_now)
            assert r.saef.maf is not None and r.saef.maf is not old
            assert await r.retrieve(key) == 2000

    run(go)


def test_a_retrieval_in_flight_completes_with_the_retired_client(tmp_path: Path) -> None:
    """Handshakes accepted before the reload hold the previous directory: its retrieval in flight
    is not cancelled by the reload (aclose would cancel it), its answer is cached for the
    handshake's PSK callback, and only then is the MAF session closed."""
    async def go() -> None:
        async with rig(tmp_path) as r:
            key = await r.key()
            old = r.saef.maf
            assert old is not None
            prefetch = asyncio.get_running_loop().create_task(old.prefetch(key.key_id))
            await asyncio.sleep(0)  # the retrieval is in flight
            assert old._inflight
            await r.saef.reload_async(dataclasses.replace(r.config, maf=r.maf_config(timeout=3.0)), clock=utc_now)
            await _settle(r)
            await prefetch
            assert prefetch.exception() is None
            entry = old.lookup(key.key_id)
            assert entry is not None and entry.peer_id == AE and entry.kpsa == key.key
            assert not old._client.connected
            # a late handshake on the retired directory still gets an answer, and no session stays open
            other = await r.key()
            await old.prefetch(other.key_id)
            assert old.lookup(other.key_id) is not None and not old._client.connected

    run(go)
