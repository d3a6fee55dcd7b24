"""OneM2MClient / AsyncOneM2MClient against misbehaving HTTP peers (stdlib http.server) and our own endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from m2msec.net.acme import free_tcp_port
from m2msec.net.client import (
    AsyncOneM2MClient,
    OneM2MClient,
    OneM2MProtocolError,
    OneM2MResponseError,
    OneM2MTransportError,
    RequestIdMismatchError,
)
from m2msec.net.endpoint import AEEndpoint, EndpointThread
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode

RSC = ResponseStatusCode


class Peer(BaseHTTPRequestHandler):
    """Answers according to the last path segment; records what it received."""

    received: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        Peer.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        ri = self.headers.get("X-M2M-RI", "")
        mode = self.path.rsplit("/", 1)[-1].split("?")[0]
        status, headers, out = 200, {"X-M2M-RSC": "2000", "X-M2M-RI": ri}, b""
        if mode == "wrong-ri":
            headers["X-M2M-RI"] = "someone-else"
        elif mode == "no-rsc":
            del headers["X-M2M-RSC"]
        elif mode == "bad-json":
            headers["Content-Type"] = "application/json"
            out = b'{"m2m:cb": '
        elif mode == "html":
            headers["Content-Type"] = "text/html"
            out = b"<h1>proxy error</h1>"
        elif mode == "slow":
            time.sleep(1.5)
        elif mode == "error":
            status, headers["X-M2M-RSC"] = 403, "4103"
            headers["Content-Type"] = "application/json"
            out = b'{"m2m:dbg":"no privilege"}'
        elif mode == "created":
            status, headers["X-M2M-RSC"] = 201, "2001"
            headers["Content-Type"] = "application/json"
            out = json.dumps({"m2m:cnt": {"rn": "c", "ri": "cnt1"}}).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture(scope="module")
def peer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_requests_carry_originator_rvi_and_fresh_rqi(peer: str) -> None:
    Peer.received.clear()
    with OneM2MClient(peer, "Cae1", rvi="3") as c:
        r1 = c.create("/id-in/cse-in/created", ResourceType.CONTAINER, {"m2m:cnt": {"rn": "c"}})
        c.delete("/id-in/cse-in/x")
    assert r1.rsc == RSC.CREATED and r1.pc == {"m2m:cnt": {"rn": "c", "ri": "cnt1"}}
    post, delete = Peer.received
    assert post["method"] == "POST" and post["path"] == "/~/id-in/cse-in/created"
    assert post["headers"]["X-M2M-Origin"] == "Cae1" and post["headers"]["X-M2M-RVI"] == "3"
    assert post["headers"]["Content-Type"] == "application/json;ty=3"
    assert json.loads(post["body"]) == {"m2m:cnt": {"rn": "c"}}
    assert delete["method"] == "DELETE" and delete["body"] == b""
    assert post["headers"]["X-M2M-RI"] != delete["headers"]["X-M2M-RI"]
    assert post["headers"]["X-M2M-RI"].startswith("m2msec-")


def test_response_ri_must_echo_the_request(peer: str) -> None:
    with OneM2MClient(peer, "Cae1") as c, pytest.raises(RequestIdMismatchError) as ei:
        c.retrieve("/id-in/wrong-ri")
    assert ei.value.rsc == RSC.BAD_REQUEST
    assert "someone-else" in str(ei.value)


@pytest.mark.parametrize("mode", ["no-rsc", "bad-json", "html"])
def test_malformed_responses_raise_protocol_error(peer: str, mode: str) -> None:
    with OneM2MClient(peer, "Cae1") as c, pytest.raises(OneM2MProtocolError):
        c.retrieve(f"/id-in/{mode}")


def test_error_response_raises_with_rsc_and_dbg_or_is_returned(peer: str) -> None:
    with OneM2MClient(peer, "Cae1") as c:
        with pytest.raises(OneM2MResponseError) as ei:
            c.update("/id-in/error", {"m2m:ae": {"lbl": ["x"]}})
        assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert "no privilege" in str(ei.value)
        assert ei.value.request.op is Operation.UPDATE
        rsp = c.update("/id-in/error", {"m2m:ae": {"lbl": ["x"]}}, check=False)
        assert rsp.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE and rsp.pc == {"m2m:dbg": "no privilege"}
        # send() never raises for a well-formed error response
        req = c.build(Operation.RETRIEVE, "/id-in/error")
        assert c.send(req).rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


def test_timeout_is_request_timeout(peer: str) -> None:
    with OneM2MClient(peer, "Cae1", timeout=0.3) as c, pytest.raises(OneM2MTransportError) as ei:
        c.retrieve("/id-in/slow")
    assert ei.value.rsc == RSC.REQUEST_TIMEOUT


def test_connection_refused_is_target_not_reachable() -> None:
    port = free_tcp_port()
    with OneM2MClient(f"http://127.0.0.1:{port}", "Cae1") as c, pytest.raises(OneM2MTransportError) as ei:
        c.retrieve("/id-in/cse-in")
    assert ei.value.rsc == RSC.TARGET_NOT_REACHABLE


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        OneM2MClient("ftp://x", "Cae1")
    with pytest.raises(ValueError):
        OneM2MClient("http://x", "")


def test_sync_client_with_threaded_endpoint_and_cbor() -> None:
    seen: list[RequestPrimitive] = []

    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        seen.append(req)
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"echo": req.pc})

    with EndpointThread(handler, serialization="cbor") as ep, OneM2MClient(ep.url, "Cae1", serialization="cbor") as c:
        rsp = c.notify("/id-in/cse-in/ae", {"m2m:sgn": {"nev": {"rep": {"n": 1}}}})
    assert rsp.pc == {"echo": {"m2m:sgn": {"nev": {"rep": {"n": 1}}}}}
    assert seen[0].fr == "Cae1" and seen[0].op is Operation.NOTIFY


def test_async_client_helpers() -> None:
    async def handler(req: RequestPrimitive) -> ResponsePrimitive:
        rsc = {Operation.CREATE: RSC.CREATED, Operation.UPDATE: RSC.UPDATED, Operation.DELETE: RSC.DELETED}
        return ResponsePrimitive(rsc=rsc.get(req.op, RSC.OK), rqi=req.rqi, pc={"op": int(req.op)})

    async def main() -> list[int]:
        async with AEEndpoint(handler) as ep, AsyncOneM2MClient(ep.url, "Cae1") as c:
            out = [
                await c.create("x", ResourceType.CONTAINER, {"m2m:cnt": {}}),
                await c.retrieve("x"),
                await c.update("x", {"m2m:cnt": {}}),
                await c.delete("x"),
                await c.notify("x", {"m2m:sgn": {}}),
            ]
            return [int(r.rsc) for r in out] + [r.pc["op"] for r in out]

    assert asyncio.run(main()) == [2001, 2000, 2004, 2002, 2000, 1, 2, 3, 4, 5]
