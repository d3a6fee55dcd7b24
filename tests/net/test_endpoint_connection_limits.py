"""AEEndpoint (an AE's pointOfAccess) bounds its open connections (profile T13): a real
endpoint on 127.0.0.1 resets the connection over the per-source limit before reading a byte,
serves the admitted ones and another source (127.0.0.2), and frees slots as connections close."""

from __future__ import annotations

import asyncio
import functools

import httpx
import pytest
from _conn_reset import wait_until, was_reset

from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import ResponsePrimitive, ResponseStatusCode
from m2msec.tls.aio import start_server as tls_start_server

RETRIEVE = {"X-M2M-Origin": "CAdmin", "X-M2M-RI": "r1", "X-M2M-RVI": "3", "Accept": "application/json"}


async def _ok(req):  # noqa: ANN001, ANN202
    return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi)


def test_endpoint_resets_connections_over_the_per_ip_limit() -> None:
    async def go() -> None:
        async with AEEndpoint(_ok, limits=ConnectionLimits(10, 2)) as ep:
            gate = ep.connections
            assert gate is not None
            idle = [await asyncio.open_connection(ep.host, ep.port) for _ in range(2)]
            await wait_until(lambda: gate.open == 2, "2 open connections")
            r3, w3 = await asyncio.open_connection(ep.host, ep.port)
            assert await was_reset(r3)  # the third from 127.0.0.1: reset, nothing read
            w3.close()
            assert gate.refused_per_source == 1
            # an admitted connection is served
            idle[0][1].write(b"GET /ae HTTP/1.1\r\nHost: ae\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: r1\r\n"
                             b"X-M2M-RVI: 3\r\n\r\n")
            assert (await asyncio.wait_for(idle[0][0].readline(), 5)).startswith(b"HTTP/1.1 200")
            # another source while 127.0.0.1 is at its limit
            transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(transport=transport) as client:
                rsp = await client.get(f"{ep.url}/ae", headers=RETRIEVE)
            assert rsp.status_code == 200 and rsp.headers["x-m2m-rsc"] == "2000"
            for _r, w in idle:
                w.close()
            await wait_until(lambda: gate.open == 0, "slots freed")
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{ep.url}/ae", headers=RETRIEVE)).status_code == 200

    asyncio.run(asyncio.wait_for(go(), 30))


def test_default_limits_apply_and_custom_transport_brings_its_own() -> None:
    ep = AEEndpoint(_ok)
    assert ep.connections is not None and ep.connections.limits == ConnectionLimits.default()
    tls = functools.partial(tls_start_server, config=None)
    assert AEEndpoint(_ok, start_server=tls).connections is None
    with pytest.raises(ValueError, match="custom start_server"):
        AEEndpoint(_ok, start_server=tls, limits=ConnectionLimits(10, 2))
