"""Servers under garbage (TS-0003 8.8 MAF, 8.3 MEF incl. EST, and the gateway of TS-0003 8.4 /
TS-0004 7.6.2): on an authenticated session every garbage request gets a 4xx answer with a JSON
error body (or the connection is closed), garbage instead of a TLS handshake is dropped, the
server then still serves a well-formed request, and no traceback is logged.  Real servers on
127.0.0.1 ephemeral ports, in process."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import random
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _d in ("maf", "mef"):
    if str(_TESTS / _d) not in sys.path:
        sys.path.insert(0, str(_TESTS / _d))

from _esthelp import make_world  # noqa: E402
from _mafhelp import AE1, FakeClock, client_config, connected, make_service, make_store, running  # noqa: E402
from _mefhelp import ENROLEE_B, KPM, KPM_ID  # noqa: E402

from m2msec.esprim import MemoryReceiverState, ProvisionedKeySource, Receiver  # noqa: E402
from m2msec.gateway.server import Gateway  # noqa: E402
from m2msec.maf.protocol import Procedure  # noqa: E402
from m2msec.mef import mef_tls_config  # noqa: E402
from m2msec.mef.client import _http as mef_http  # noqa: E402
from m2msec.tls.aio import open_connection  # noqa: E402
from m2msec.tls.engine import PSKCredentials  # noqa: E402

RNG = random.Random(20261126)
GARBAGE_BODIES: list[bytes] = [
    b"", b"{", b"[]", b"null", b"1e999", b'{"a":NaN}', b"\xff\xfe\x00", b"[" * 100_000, b'{"a":' * 20_000,
    b'{"x":1,"x":2}', b'"\\ud800"', "{\"mafFQDN\":\"\u0130\"}".encode(), b"\x00" * 64,
    *[RNG.randbytes(RNG.randint(1, 300)) for _ in range(8)],
]
GARBAGE_HTTP: list[bytes] = [
    b"GARBAGE\r\n\r\n", b"POST /maf HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"POST / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
]
#: requests with non-ASCII / control bytes in the target and header values (latin-1 on the wire)
HEADER_GARBAGE: list[bytes] = [
    b"POST /maf/keyRetrieval HTTP/1.1\r\nHost: x\r\nContent-Type: text/\xe9\xff\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /enrolment HTTP/1.1\r\nHost: x\r\nX-M2M-RI: \xe9\x80\r\nX-M2M-Origin: \xff\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /fetchCredentials/%ff%fe@\xe9/22?\xff HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: \xc3\x28\r\n\r\n",
    b"POST /\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
]
PRE_TLS: list[bytes] = [b"", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x03\xff\xff" + b"A" * 64, RNG.randbytes(500),
                        b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text


def _json_error(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert isinstance(doc, dict), body[:100]
    return doc


async def _raw_tcp(port: int, data: bytes) -> bytes:
    """Send ``data`` on a plain TCP connection instead of a TLS handshake; what came back until close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()  # then the peer must give up on this connection (not wait for its timeout)
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def _raw_tls(port: int, tls: Any, data: bytes) -> bytes:
    """Send raw (non-HTTP) bytes inside an authenticated TLS session."""
    reader, writer = await open_connection("127.0.0.1", port, tls)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and len(out) >= out.index(b"\r\n\r\n") + 4 + _clen(out):
                    break
        except ConnectionError:
            pass
        return out
    finally:
        writer.close()


def _clen(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def _check_http_error(raw: bytes, sent: bytes = b"") -> None:
    """Either nothing (closed) or a 4xx response whose body is a JSON object."""
    if not raw:
        return
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, (sent, head)
    assert b"x-m2m-rsc: 5" not in head.lower(), head
    assert body.strip(), (sent, head)
    if b"content-type: text/plain" in head.lower() and b"/.well-known/est/" in sent:
        return  # EST (RFC 7030 4.2.3): human-readable text error bodies, by the MEF's design
    try:
        _json_error(body)
    except ValueError:
        raise AssertionError((sent, raw[:300])) from None


# --------------------------------------------------------------------------- MAF


def test_maf_server_garbage(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        clock = FakeClock()
        store = make_store(tmp_path / "maf.db", clock)
        svc = make_service(store, clock)
        async with running(svc) as srv:
            async with connected(srv.port, AE1) as c:
                reg = await c.register(datetime(2031, 1, 1, tzinfo=UTC))
                for proc in Procedure:
                    for body in GARBAGE_BODIES:
                        status, rsc, out = await c.raw(proc, body)
                        assert 400 <= status < 500 and 4000 <= rsc < 5000, (proc, body[:40], rsc)
                        assert _json_error(out)["rsc"] == rsc
                for path, method, ctype in (("/maf/nowhere", "POST", "application/json"),
                                            (Procedure.KEY_RETRIEVAL.path, "GET", "application/json"),
                                            (Procedure.KEY_RETRIEVAL.path, "POST", "text/plain;;=;"),
                                            (Procedure.KEY_RETRIEVAL.path + "?%ff%00", "POST", "application/json")):
                    status, rsc, out = await c.raw(path, b"{}", method=method, content_type=ctype)
                    assert 400 <= status < 500 and 4000 <= rsc < 5000, (path, method, ctype, rsc)
                    assert _json_error(out)["rsc"] == rsc
                # the session still serves a well-formed request
                assert isinstance(await c.retrieve_configuration(reg.maf_client_reg_id), dict)
            tls = client_config(srv.port, AE1).tls_config(client_config(srv.port, AE1).psk)
            for data in GARBAGE_HTTP + HEADER_GARBAGE:
                _check_http_error(await _raw_tls(srv.port, tls, data))
            for data in PRE_TLS:
                await _raw_tcp(srv.port, data)
            async with connected(srv.port, AE1) as c:
                assert isinstance(await c.retrieve_configuration(reg.maf_client_reg_id), dict)
        store.close()

    asyncio.run(asyncio.wait_for(go(), 60))


# --------------------------------------------------------------------------- MEF (with EST)


def test_mef_server_garbage(tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    world = make_world(tmp_path)
    kpm = mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), KPM))

    async def call(port: int, method: str, target: str, body: bytes,
                   headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await open_connection("127.0.0.1", port, kpm)
        try:
            return await mef_http(reader, writer, method, target, headers or [("X-M2M-RI", "r1")], body, "mef")
        finally:
            writer.close()

    async def go(port: int) -> None:
        targets = [("POST", "/enrolment"), ("POST", "/enrolment/complete"), ("GET", "/fetchCredentials/x/22"),
                   ("POST", "/.well-known/est/simpleenroll"), ("POST", "/.well-known/est/simplereenroll"),
                   ("POST", "/.well-known/est/serverkeygen"), ("GET", "/.well-known/est/nothing"),
                   ("PUT", "/enrolment"), ("GET", "/%C3%A9%00"), ("DELETE", "/")]
        for method, target in targets:
            for body in GARBAGE_BODIES[:10]:
                status, h, out = await call(port, method, target, body)
                assert 400 <= status < 500 and h["x-m2m-rsc"].startswith("4"), (method, target, body[:30], status, h)
                if h.get("content-type", "").startswith("application/json"):
                    _json_error(out)
        for hdrs in ([("X-M2M-Origin", "x y"), ("X-M2M-RI", "")], [("X-M2M-RI", "r" * 4000)],
                     [("Content-Type", "application/pkcs10; x=;")]):
            status, h, out = await call(port, "GET", f"/fetchCredentials/{'0' * 32}@mef.m2m.example.com/22", b"", hdrs)
            assert 400 <= status < 500, (hdrs, status)
        for data in GARBAGE_HTTP + HEADER_GARBAGE + [
                b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\xff\r\n"
                b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc"]:
            _check_http_error(await _raw_tls(port, kpm, data), data)
        for data in PRE_TLS:
            await _raw_tcp(port, data)
        status, h, out = await call(port, "POST", "/enrolment", b'{"CertificateEnrolmentIndication":false,'
                                    b'"MAFEnrolmentIndication":false,"RemoteManagementIndication":false}')
        assert (status, h["x-m2m-rsc"]) == (200, "2000"), out
        assert json.loads(out)["Status"] is True and ENROLEE_B

    with world.mef() as m:
        asyncio.run(asyncio.wait_for(go(m.port), 90))
    world.state.store.close()


# --------------------------------------------------------------------------- gateway


DEEP = b"[" * 100_000 + b"]" * 100_000


class _StubCSE(http.server.BaseHTTPRequestHandler):
    """Stands in for the CSE behind the gateway (not under test): POSTs get 4000, GET /cse-in/deep
    a JSON body nested far too deep, any other GET an empty CSEBase."""

    def _reply(self, status: int, rsc: int, body: bytes) -> None:
        self.send_response(status)
        for k, v in (("X-M2M-RSC", str(rsc)), ("X-M2M-RI", self.headers.get("X-M2M-RI", "")),
                     ("Content-Type", "application/json"), ("Content-Length", str(len(body)))):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(400, 4000, b'{"m2m:dbg":"stub: bad request"}')

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/cse-in/deep"):
            self._reply(200, 2000, DEEP)
        else:
            self._reply(200, 2000, b'{"m2m:cb":{"ri":"id-in","rn":"cse-in","csi":"/id-in"}}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_cse() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubCSE)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _gateway(cse_url: str) -> Gateway:
    def clock() -> datetime:
        return datetime.now(UTC)

    receiver = Receiver(keys=ProvisionedKeySource([], clock=clock), state=MemoryReceiverState(clock=clock), clock=clock)
    return Gateway(cse_url=cse_url, cse_id="id-in", cse_name="cse-in", receiver=receiver, clock=clock, timeout=5)


ONEM2M = {"X-M2M-Origin": "Cfuzz", "X-M2M-RI": "r1", "X-M2M-RVI": "3", "Content-Type": "application/json"}


def test_regression_gateway_deeply_nested_json(stub_cse: str, logs: pytest.LogCaptureFixture) -> None:
    """Found by fuzzing: a JSON body nested deeper than the decoder's recursion limit made the
    gateway answer 500/5000 and log a traceback (client POST), and the same from the CSE's answer."""

    async def go() -> None:
        async with _gateway(stub_cse) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http_client:
            for body in (DEEP, b'{"m2m:seci":' + DEEP[:50_000]):
                r = await http_client.post("/cse-in/ae", content=body, headers=ONEM2M)
                assert r.status_code == 400 and r.headers["x-m2m-rsc"] == "4000", r.text[:200]  # the CSE's verdict
            r = await http_client.get("/cse-in/deep", headers={k: v for k, v in ONEM2M.items() if k != "Content-Type"})
            assert r.status_code == 200 and r.content == DEEP  # relayed unchanged

    asyncio.run(asyncio.wait_for(go(), 60))


def test_gateway_garbage(stub_cse: str, logs: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with _gateway(stub_cse) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http_client:
            seci_bodies = [b'{"m2m:seci":' + b for b in GARBAGE_BODIES] + [
                b'{"m2m:seci":{"sit":5,"epo":"a.b.c.d.e"}}', b'{"m2m:seci":{"sit":6,"eckm":"%%%"}}',
                b'{"m2m:seci":{"sit":3},"x":1}', b'{"m2m:seci":{"sit":99}}', b'{"m2m:seci":{"sit":5,"epo":' +
                json.dumps("." * 4 + "A" * 5000).encode() + b"}}"]
            for body in GARBAGE_BODIES + seci_bodies:
                for headers in (ONEM2M, {**ONEM2M, "X-M2M-Origin": ""}, {"Content-Type": "application/json"},
                                {**ONEM2M, "Content-Type": "application/json;ty=x"}, {**ONEM2M, "X-M2M-RVI": "\x7f"}):
                    r = await http_client.post("/cse-in/ae", content=body, headers=headers)
                    assert 400 <= r.status_code < 500 and not r.headers.get("x-m2m-rsc", "4").startswith("5"), \
                        (body[:40], headers, r.status_code, r.text[:200])
                    _json_error(r.content)
            for data in [*(g for g in GARBAGE_HTTP if not g.startswith(b"GET /")), *HEADER_GARBAGE, RNG.randbytes(300), b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"]:
                _check_http_error(await _raw_tcp(gw.port, data), data)
            r = await http_client.get("/cse-in", headers={k: v for k, v in ONEM2M.items() if k != "Content-Type"})
            assert r.status_code == 200 and "m2m:cb" in r.json()

    asyncio.run(asyncio.wait_for(go(), 90))




def test_regression_gateway_non_ascii_header_value(stub_cse: str, logs: pytest.LogCaptureFixture) -> None:
    """Found by fuzzing: a header value with octets 0x80-0xFF (legal obs-text, accepted by h11)
    made the gateway answer 500/5000 with a traceback: httpx refused to encode the relayed value."""

    async def go() -> None:
        async with _gateway(stub_cse) as gw:
            raw = await _raw_tcp(gw.port, b"POST /cse-in/ae HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          b"X-M2M-Origin: C\xe9\xff\r\nX-M2M-RI: r1\r\nX-M2M-RVI: 3\r\n"
                                          b"Content-Length: 2\r\n\r\n{}")
            head = raw.split(b"\r\n\r\n", 1)[0]
            assert head.startswith(b"HTTP/1.1 400") and b"X-M2M-RSC: 4000" in head, raw[:300]  # the stub CSE's answer

    asyncio.run(asyncio.wait_for(go(), 30))
