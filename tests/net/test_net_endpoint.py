"""The AE endpoint (h11 server) and its dispatcher over real sockets on 127.0.0.1, plain TCP and TLS-PSK."""

from __future__ import annotations

import asyncio
import functools
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from m2msec.errors import M2MSecError, ParseError
from m2msec.net.client import AsyncOneM2MClient, StreamOneM2MClient
from m2msec.net.endpoint import AEEndpoint, EndpointThread, NotifyDispatcher, current_connection
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    SecurityInfo,
    new_receiver_rand_object,
)
from m2msec.tls import PSKCredentials, Role, TLSConfig, Transport
from m2msec.tls.aio import open_connection, start_server

JWE = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aXZpdml2aXZpdg.Y2lwaGVy.dGFndGFndGFndGFn"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def ero_seci() -> SecurityInfo:
    expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=5)
    return SecurityInfo.rand_object_response(new_receiver_rand_object(expiry=expiry))


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, RequestPrimitive, SecurityInfo | None]] = []
        self.ero = ero_seci()

    async def rand(self, req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        self.seen.append(("rand", req, seci))
        return ResponsePrimitive.with_security_info(req, self.ero)

    async def esprim(self, req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        self.seen.append(("esprim", req, seci))
        return ResponsePrimitive.with_security_info(req, SecurityInfo.esprim(JWE))

    async def escertke(self, req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        self.seen.append(("escertke", req, seci))
        return ResponsePrimitive.with_security_info(req, SecurityInfo.escertke(b"flight-2"))

    async def sgn(self, req: RequestPrimitive) -> ResponsePrimitive:
        self.seen.append(("sgn", req, None))
        return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi)

    def dispatcher(self, **overrides: Any) -> NotifyDispatcher:
        kw: dict[str, Any] = dict(
            on_rand_object_request=self.rand,
            on_esprim_object=self.esprim,
            on_escertke_message=self.escertke,
            on_notification=self.sgn,
        )
        kw.update(overrides)
        return NotifyDispatcher(**kw)


async def _with_endpoint(handler: Any, body: Any) -> Any:
    async with AEEndpoint(handler) as ep:
        async with AsyncOneM2MClient(ep.url, "/id-in/Cae1") as client:
            return await body(ep, client)


# ---------------------------------------------------------------- dispatcher routing


def test_dispatch_by_security_info_type_and_sgn() -> None:
    calls = Calls()

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> list[ResponsePrimitive]:
        out = []
        for content in (
            SecurityInfo.rand_object_request().to_content(),
            SecurityInfo.esprim(JWE).to_content(),
            SecurityInfo.escertke(b"\x16\x03\x03flight-1").to_content(),
            {"m2m:sgn": {"nev": {"rep": {"x": 1}, "net": 1}}},
        ):
            out.append(await c.notify("/id-in/cse-in/ae2", content))
        return out

    rand, esprim, escertke, sgn = run(_with_endpoint(calls.dispatcher(), body))
    assert [k for k, _, _ in calls.seen] == ["rand", "esprim", "escertke", "sgn"]
    assert calls.seen[0][2] == SecurityInfo.rand_object_request()
    assert calls.seen[1][2].esprim_object == JWE  # type: ignore[union-attr]
    assert calls.seen[2][2].escertke_message == b"\x16\x03\x03flight-1"  # type: ignore[union-attr]
    assert all(req.fr == "/id-in/Cae1" and req.to == "/id-in/cse-in/ae2" for _, req, _ in calls.seen)
    assert rand.security_info() == calls.ero
    assert esprim.security_info() == SecurityInfo.esprim(JWE)
    assert escertke.security_info() == SecurityInfo.escertke(b"flight-2")
    assert sgn.rsc == ResponseStatusCode.OK and sgn.pc is None


@pytest.mark.parametrize(
    ("content", "rsc", "dbg"),
    [
        ({"m2m:seci": {"sit": 4, "ero": {}}}, 4000, None),  # malformed ero is a parse error first
        (None, 4000, "Notify without Content"),
        ({"m2m:seci": {"sit": 99}}, 4000, "unknown securityInfoType 99"),
        ({"m2m:seci": {"sit": 1, "dreq": {}}}, 4000, "securityInfoType 1 is not supported here"),
        ({"m2m:seci": {"sit": 5}}, 4000, "seci.epo: mandatory when securityInfoType is 5"),
        ({"m2m:seci": {"sit": 3, "epo": JWE}}, 4000, None),
        ({"m2m:seci": {"sit": "3"}}, 4000, None),
        ({"m2m:seci": {"sit": 3}, "m2m:sgn": {}}, 4000, None),
        ({"m2m:cin": {"con": "x"}}, 4000, None),
    ],
)
def test_dispatch_rejections(content: Any, rsc: int, dbg: str | None) -> None:
    calls = Calls()

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> ResponsePrimitive:
        return await c.notify("/id-in/cse-in/ae2", content, check=False)

    rsp = run(_with_endpoint(calls.dispatcher(), body))
    assert int(rsp.rsc) == rsc
    assert calls.seen == []
    if dbg is not None:
        assert rsp.pc == {"m2m:dbg": dbg}


def test_dispatch_sit4_response_type_in_a_request_is_refused() -> None:
    calls = Calls()

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> ResponsePrimitive:
        return await c.notify("/id-in/cse-in/ae2", ero_seci().to_content(), check=False)

    rsp = run(_with_endpoint(calls.dispatcher(), body))
    assert rsp.rsc == ResponseStatusCode.BAD_REQUEST
    assert "securityInfoType 4" in rsp.pc["m2m:dbg"]
    assert calls.seen == []


def test_dispatch_without_callbacks() -> None:
    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> list[ResponsePrimitive]:
        return [
            await c.notify("/id-in/cse-in/ae2", SecurityInfo.esprim(JWE).to_content(), check=False),
            await c.notify("/id-in/cse-in/ae2", {"m2m:sgn": {"vrq": True, "sur": "/id-in/sub"}}, check=False),
            await c.create("/id-in/cse-in/ae2", ResourceType.CONTAINER, {"m2m:cnt": {}}, check=False),
            await c.retrieve("/id-in/cse-in/ae2", check=False),
        ]

    esprim, sgn, create, retrieve = run(_with_endpoint(NotifyDispatcher(), body))
    assert esprim.rsc == ResponseStatusCode.NOT_IMPLEMENTED
    assert sgn.rsc == ResponseStatusCode.OK
    assert create.rsc == ResponseStatusCode.OPERATION_NOT_ALLOWED
    assert retrieve.rsc == ResponseStatusCode.OPERATION_NOT_ALLOWED


def test_non_notify_goes_to_on_request() -> None:
    async def on_request(req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, pc={"op": int(req.op), "to": req.to})

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> ResponsePrimitive:
        return await c.retrieve("cse-in/x", rcn=1)

    rsp = run(_with_endpoint(NotifyDispatcher(on_request=on_request), body))
    assert rsp.pc == {"op": int(Operation.RETRIEVE), "to": "cse-in/x"}


# ---------------------------------------------------------------- handler failures and echo


def test_handler_errors_map_to_rsc_and_hide_internal_details() -> None:
    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        if req.to.endswith("m2m"):
            raise M2MSecError("no such key id", rsc=ResponseStatusCode.ESPRIM_UNKNOWN_KEY_ID)
        if req.to.endswith("parse"):
            raise ParseError("seci.epo: bad")
        if req.to.endswith("wrongrqi"):
            return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi="not-the-request-id")
        raise RuntimeError("secret internal detail 0xdeadbeef")

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> list[ResponsePrimitive]:
        return [await c.notify(f"/id-in/{p}", {"m2m:sgn": {}}, check=False) for p in ("m2m", "parse", "wrongrqi", "bug")]

    m2m, parse, wrong, bug = run(_with_endpoint(handler, body))
    assert m2m.rsc == ResponseStatusCode.ESPRIM_UNKNOWN_KEY_ID and m2m.pc == {"m2m:dbg": "no such key id"}
    assert parse.rsc == ResponseStatusCode.BAD_REQUEST
    assert wrong.rsc == ResponseStatusCode.OK  # the client's rqi check passed: the endpoint echoed ours
    assert bug.rsc == ResponseStatusCode.INTERNAL_SERVER_ERROR and bug.pc == {"m2m:dbg": "internal error"}


def test_http_status_and_headers_on_the_wire() -> None:
    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        return ResponsePrimitive(rsc=ResponseStatusCode.ESPRIM_BAD_MAC, rqi=req.rqi)

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> httpx.Response:
        async with httpx.AsyncClient() as h:
            return await h.post(
                ep.url + "/~/id-in/cse-in/ae2",
                content=b'{"m2m:sgn":{}}',
                headers={"Content-Type": "application/json", "x-m2m-ri": "abc", "X-M2M-Origin": "Cx", "X-M2M-RVI": "3"},
            )

    r = run(_with_endpoint(handler, body))
    assert r.status_code == 403  # TS-0009 table 6.3.2-1
    assert r.headers["X-M2M-RSC"] == "4115"
    assert r.headers["X-M2M-RI"] == "abc"
    assert r.headers["X-M2M-RVI"] == "3"  # filled in from the request
    assert r.reason_phrase == ""  # TS-0009 6.3.3
    assert r.content == b""


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _raw(handler: Any, data: bytes, **kw: Any) -> bytes:
    with EndpointThread(handler, **kw) as t:
        assert t.endpoint is not None
        return _raw_exchange(t.endpoint.port, data)


async def _never_async(req: RequestPrimitive) -> ResponsePrimitive:
    raise AssertionError("handler must not be called")


def test_request_without_ri_is_answered_4000_without_ri() -> None:
    out = _raw(_never_async, b"POST /~/id-in/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400")
    assert b"x-m2m-rsc: 4000" in head and b"x-m2m-ri" not in head
    assert b"X-M2M-RI header is missing" in out


def test_malformed_json_is_answered_4000_with_ri_echoed() -> None:
    out = _raw(
        _never_async,
        b"POST /~/id-in/x HTTP/1.1\r\nHost: a\r\nX-M2M-RI: r-7\r\nContent-Length: 8\r\n"
        b"Content-Type: application/json\r\n\r\n{\"a\":1,}",
    )
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400") and b"x-m2m-rsc: 4000" in head and b"x-m2m-ri: r-7" in head


def test_xml_is_answered_4015() -> None:
    out = _raw(
        _never_async,
        b"POST /~/id-in/x HTTP/1.1\r\nHost: a\r\nX-M2M-RI: r-8\r\nContent-Length: 7\r\n"
        b"Content-Type: application/xml\r\n\r\n<sgn/>\n",
    )
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 415") and b"x-m2m-rsc: 4015" in head and b"x-m2m-ri: r-8" in head


def test_garbage_is_answered_400_and_closed() -> None:
    out = _raw(_never_async, b"\x16\x03\x01\x02\x00 this is not HTTP\r\n\r\n")
    assert out.lower().startswith(b"http/1.1 400")


def test_oversized_body_is_refused_413() -> None:
    out = _raw(
        _never_async,
        b"POST /~/id-in/x HTTP/1.1\r\nHost: a\r\nX-M2M-RI: r\r\nContent-Length: 100\r\n"
        b"Content-Type: application/json\r\n\r\n" + b" " * 100,
        max_body=10,
    )
    assert out.lower().startswith(b"http/1.1 413")


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    writers: list[int] = []

    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        writers.append(id(current_connection.get()))
        return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi)

    async def body(ep: AEEndpoint, c: AsyncOneM2MClient) -> None:
        for _ in range(3):
            await c.notify("/id-in/ae", {"m2m:sgn": {}})

    run(_with_endpoint(handler, body))
    assert len(writers) == 3 and len(set(writers)) == 1


# ---------------------------------------------------------------- TLS-PSK transport (pluggable start_server)

PSK_ID = b"Cae1@m2msec.test"
PSK = bytes(range(32))


def test_endpoint_over_tls_psk_with_peer_identity() -> None:
    identities: list[bytes | None] = []

    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        identities.append(current_connection.get().engine.psk_identity)
        return ResponsePrimitive.with_security_info(req, SecurityInfo.escertke(b"server-flight"))

    server_cfg = TLSConfig(Role.SERVER, Transport.TLS, psk_lookup=lambda i, sni: PSK if i == PSK_ID else None)
    client_cfg = TLSConfig(Role.CLIENT, Transport.TLS, psk=PSKCredentials(PSK_ID, PSK), server_name="ae2.example")

    async def main() -> list[ResponsePrimitive]:
        start = functools.partial(start_server, config=server_cfg)
        async with AEEndpoint(handler, start_server=start, scheme="https") as ep:
            assert ep.url.startswith("https://127.0.0.1:")
            reader, writer = await open_connection("127.0.0.1", ep.port, client_cfg)
            client = StreamOneM2MClient(reader, writer, "ae2.example")
            out = []
            for i in range(2):
                req = RequestPrimitive.notify_security_info(
                    to="/id-in/cse-in/ae2", fr="/id-in/Cae1", seci=SecurityInfo.escertke(b"client-flight-%d" % i)
                )
                out.append(await client.send(req))
            await client.aclose()
            return out

    rsps = run(main())
    assert [r.security_info() for r in rsps] == [SecurityInfo.escertke(b"server-flight")] * 2
    assert identities == [PSK_ID, PSK_ID]
