"""The SAEF listener's connection limits ([saef] max_connections / max_connections_per_ip): a
real SAEFHTTPServer (TLS-PSK, TS-0013 TD_M2M_SE_01 key) resets a connection over the per-source
limit before the handshake, records nothing for it, and keeps serving associations."""

from __future__ import annotations

import asyncio

from _conn_reset import was_reset
from _saefhelp import IN_ID, SP_ID, run

from m2msec.net.connlimits import ConnectionLimits
from m2msec.onem2m.enums import Operation
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.saef import (
    InMemoryKpsaDirectory,
    KpsaEntry,
    PeerKind,
    SecurityContext,
    psk_client,
    psk_server,
)
from m2msec.saef.http import SAEFHTTPClient, SAEFHTTPServer

TD_ID = "test@onem2m.com"
TD_AE = "/id-in/Ctd01"


async def _ok(req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
    return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi=req.rvi)


def test_saef_listener_resets_connections_over_the_per_ip_limit() -> None:
    kpsa = KpsaEntry.from_text(TD_ID, "123456")
    server_ep = psk_server(InMemoryKpsaDirectory([KpsaEntry(TD_ID, kpsa.kpsa, peer_id=TD_AE, peer_kind=PeerKind.AE)]),
                           id_b=IN_ID)
    client_ep = psk_client(kpsa, id_b=IN_ID, id_a=TD_AE)

    async def go() -> None:
        async with SAEFHTTPServer(server_ep, _ok, sp_id=SP_ID, limits=ConnectionLimits(10, 2)) as srv:
            host, port = srv.address
            idle_r, idle_w = await asyncio.open_connection(host, port)  # admitted, no TLS yet
            async with await SAEFHTTPClient.connect(client_ep, host, port) as cli:  # the second slot
                r, w = await asyncio.open_connection(host, port)  # a third: reset
                assert await was_reset(r)
                w.close()
                assert srv.connections.refused_per_source == 1
                assert srv.handshake_errors == []  # nothing recorded for the reset connection
                rsp = await cli.send(RequestPrimitive(op=Operation.RETRIEVE, to="/id-in/cse-in", fr=TD_AE,
                                                      rqi="r1", rvi="3"))
                assert rsp.rsc is RSC.OK  # the association is served
            idle_w.close()

    run(go)
