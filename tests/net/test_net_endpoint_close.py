"""Closing an AE endpoint while a keep-alive connection is open ends that connection
quietly: no 'Exception in callback' error logged by asyncio."""

from __future__ import annotations

import asyncio
import logging

import pytest

from m2msec.net.client import AsyncOneM2MClient
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC


async def _handler(req: RequestPrimitive) -> ResponsePrimitive:
    return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3")


def test_close_with_open_keepalive_connection_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        endpoint = await AEEndpoint(_handler).start()
        client = AsyncOneM2MClient(endpoint.url, "Cae-close")
        await client.__aenter__()
        rsp = await client.send(RequestPrimitive(op=Operation.RETRIEVE, to="/id-in/x", fr="Cae-close", rqi="r1", rvi="3"))
        assert rsp.rsc == RSC.OK
        await endpoint.close()  # the client's keep-alive connection is still open
        await asyncio.sleep(0.05)
        await client.__aexit__(None, None, None)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
