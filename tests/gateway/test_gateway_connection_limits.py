"""The gateway's plain listener limits ([gateway] max_connections / max_connections_per_ip): a
real Gateway in front of a recording CSE endpoint resets a connection over the per-source limit
before reading a byte, while requests on the admitted connections and from another source
(127.0.0.2) still reach the CSE; closing connections frees their slots."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from _conn_reset import wait_until, was_reset
from _saef_support import CSE_ID, CSE_NAME, SP_ID, RecordingCSE, empty_receiver
from _saef_support import run as saef_run

from m2msec.gateway.server import Gateway
from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.endpoint import AEEndpoint

RETRIEVE = {"X-M2M-Origin": "CAdmin", "X-M2M-RI": "r1", "X-M2M-RVI": "3", "Accept": "application/json"}


async def _wait_open(gw: Gateway, n: int) -> None:
    await wait_until(lambda: gw.connections.open == n, f"{n} open connections")


def test_plain_listener_resets_connections_over_the_per_ip_limit() -> None:
    async def go() -> None:
        cse = RecordingCSE()
        async with AEEndpoint(cse) as ep:
            gw = Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(), sp_id=SP_ID,
                         limits=ConnectionLimits(10, 2))
            async with gw:
                idle: list[Any] = [await asyncio.open_connection(gw.host, gw.port) for _ in range(2)]
                await _wait_open(gw, 2)
                r3, w3 = await asyncio.open_connection(gw.host, gw.port)
                assert await was_reset(r3)  # the third from 127.0.0.1: reset, nothing read
                w3.close()
                assert gw.connections.refused_per_source == 1
                # an admitted connection is served: a request on it reaches the CSE
                idle[0][1].write(f"GET /{CSE_NAME} HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: CAdmin\r\n"
                                 "X-M2M-RI: r1\r\nX-M2M-RVI: 3\r\n\r\n".encode())
                status = await asyncio.wait_for(idle[0][0].readline(), 5)
                assert status.startswith(b"HTTP/1.1 200")
                # another source gets in while 127.0.0.1 is at its limit
                transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
                async with httpx.AsyncClient(transport=transport) as client:
                    rsp = await client.get(f"{gw.url}/{CSE_NAME}", headers=RETRIEVE)
                assert rsp.status_code == 200 and rsp.headers["x-m2m-rsc"] == "2000"
                assert len(cse.seen) == 2
                for _r, w in idle:
                    w.close()
                await _wait_open(gw, 0)
                async with httpx.AsyncClient() as client:  # 127.0.0.1 again, its slots freed
                    rsp = await client.get(f"{gw.url}/{CSE_NAME}", headers=RETRIEVE)
                assert rsp.status_code == 200

    saef_run(go, 20)
