"""The signed-object HTTP servers (CRLs, OCSP: m2msec.net.plainhttp) limit their open connections:
with a real CRLHTTPServer on 127.0.0.1, an idle connection fills a source's share, the next one
from there is reset before a byte is read, another source (127.0.0.2) still fetches the CRL,
and the slot is free again once the idle connection closed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from _conn_reset import wait_until, was_reset
from cryptography import x509

from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.plainhttp import DEFAULT_LIMITS
from m2msec.pki import DevCA
from m2msec.pki.crl_http import CRLHTTPServer


def test_crl_server_resets_connections_over_the_per_ip_limit() -> None:
    now = datetime.now(UTC)
    ca = DevCA.create("CRL limits SP", now=now)

    async def go() -> None:
        async with CRLHTTPServer({"root": lambda: ca.issue_crl(now=now, signer="root")},
                                 limits=ConnectionLimits(4, 1)) as srv:
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", srv.port)
            await wait_until(lambda: srv.connections.open == 1, "the idle connection to be admitted")
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            assert await was_reset(r)
            w.close()
            assert srv.connections.refused_per_source == 1
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as c:
                rsp = await c.get(srv.url("root"))
            assert rsp.status_code == 200
            assert x509.load_der_x509_crl(rsp.content).issuer == ca.trust_anchor.subject
            idle_w.close()
            await wait_until(lambda: srv.connections.open == 0, "the slots to be freed")
            async with httpx.AsyncClient() as c:
                assert (await c.get(srv.url("root"))).status_code == 200

    asyncio.run(asyncio.wait_for(go(), 20))


def test_default_limits_of_the_signed_object_servers() -> None:
    assert DEFAULT_LIMITS.max_per_source == 32 and 16 <= DEFAULT_LIMITS.max_connections <= 256
    srv = CRLHTTPServer({})
    assert srv.connections.limits == DEFAULT_LIMITS
