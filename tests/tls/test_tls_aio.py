"""asyncio adapters over real sockets on 127.0.0.1: TLS streams (with h11 on top) and DTLS over UDP."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest
from _tlshelp import PKI, make_pki

from m2msec.tls import (
    PSKCredentials,
    Role,
    TLSConfig,
    TLSFailureReason,
    TLSHandshakeError,
    Transport,
)
from m2msec.tls import profiles
from m2msec.tls.aio import TLSStreamWriter, open_connection, start_server
from m2msec.tls.dtls import DTLSSession, open_dtls_connection, start_dtls_server

KPSA_ID = b"test@onem2m.com"
KEY = bytes.fromhex("123456")
LABEL = profiles.EXPORTER_BOOTSTRAP


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


def server_psk(transport: Transport = Transport.TLS) -> TLSConfig:
    return TLSConfig(Role.SERVER, transport, psk_lookup=lambda i, sni: KEY if i == KPSA_ID else None)


def client_psk(transport: Transport = Transport.TLS, key: bytes = KEY, ident: bytes = KPSA_ID) -> TLSConfig:
    return TLSConfig(Role.CLIENT, transport, psk=PSKCredentials(ident, key), server_name="cse.example")


def test_h11_over_tls_psk() -> None:
    """An HTTP/1.1 exchange framed by h11 on both ends, over the TLS-PSK stream adapter."""
    server_side: dict[str, Any] = {}

    async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        server_side["target"] = request.target
        server_side["body"] = body
        server_side["key"] = writer.engine.export_keying_material(LABEL)
        server_side["identity"] = writer.engine.psk_identity
        reply = b'{"m2m:dbg":"ok"}'
        writer.write(conn.send(h11.Response(status_code=201, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(reply))),
            ("X-M2M-RSC", "2001"), ("X-M2M-RI", request.headers and dict(request.headers)[b"x-m2m-ri"].decode())])))
        writer.write(conn.send(h11.Data(data=reply)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def main() -> dict[str, Any]:
        server = await start_server(handler, "127.0.0.1", 0, server_psk())
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await open_connection("127.0.0.1", port, client_psk())
            conn = h11.Connection(h11.CLIENT)
            body = b'{"m2m:cin":{"con":"hello"}}'
            writer.write(conn.send(h11.Request(method="POST", target="/cse-in/ae1", headers=[
                ("Host", "cse.example"), ("Content-Type", "application/json;ty=4"),
                ("Content-Length", str(len(body))), ("X-M2M-Origin", "Cae1"), ("X-M2M-RI", "req-1")])))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            response = None
            data = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert response is not None
            out = {"status": response.status_code, "headers": dict(response.headers), "data": data,
                   "key": writer.get_extra_info("tls_engine").export_keying_material(LABEL),
                   "peername": writer.get_extra_info("peername")}
            writer.close()
            await writer.wait_closed()
            return out
        finally:
            server.close()
            await server.wait_closed()

    got = run(main())
    assert got["status"] == 201 and got["data"] == b'{"m2m:dbg":"ok"}'
    assert got["headers"][b"x-m2m-rsc"] == b"2001" and got["headers"][b"x-m2m-ri"] == b"req-1"
    assert server_side["target"] == b"/cse-in/ae1" and server_side["body"] == b'{"m2m:cin":{"con":"hello"}}'
    assert server_side["identity"] == KPSA_ID
    assert got["key"] == server_side["key"]
    assert got["peername"][0] == "127.0.0.1"


def test_tls_certificate_session_over_sockets(pki: PKI) -> None:
    async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        writer.write(writer.engine.export_keying_material(profiles.EXPORTER_ESCERTKE))
        writer.write((await reader.readexactly(5)).upper())

    async def main() -> tuple[bytes, bytes, bytes, str]:
        srv_cfg = TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("cse.example")), trust_anchors=[pki.root.cert])
        server = await start_server(handler, "127.0.0.1", 0, srv_cfg)
        port = server.sockets[0].getsockname()[1]
        try:
            cfg = TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("ae.example")), trust_anchors=[pki.root.cert])
            reader, writer = await open_connection("127.0.0.1", port, cfg)
            writer.write(b"hello")
            theirs = await reader.readexactly(48)
            echoed = await reader.readexactly(5)
            mine = writer.engine.export_keying_material(profiles.EXPORTER_ESCERTKE)
            name = writer.engine.cipher_name
            writer.close()
            return theirs, mine, echoed, name
        finally:
            server.close()
            await server.wait_closed()

    theirs, mine, echoed, name = run(main())
    assert theirs == mine and echoed == b"HELLO" and name == "ECDHE-ECDSA-AES128-SHA256"


def test_tls_handshake_failures_reach_both_ends() -> None:
    errors: list[TLSHandshakeError] = []
    handled: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        handled.append(True)

    async def main() -> list[TLSFailureReason]:
        server = await start_server(handler, "127.0.0.1", 0, server_psk(), on_handshake_error=lambda e, p: errors.append(e))
        port = server.sockets[0].getsockname()[1]
        reasons = []
        try:
            for cfg in (client_psk(ident=b"nobody"), client_psk(key=b"123456")):
                with pytest.raises(TLSHandshakeError) as ei:
                    await open_connection("127.0.0.1", port, cfg)
                reasons.append(ei.value.reason)
            await asyncio.sleep(0.1)
        finally:
            server.close()
            await server.wait_closed()
        return reasons

    reasons = run(main())
    assert reasons == [TLSFailureReason.UNKNOWN_PSK_IDENTITY, TLSFailureReason.PSK_MISMATCH]
    assert [e.reason for e in errors] == reasons
    assert handled == []  # the handler never ran for a failed handshake


def test_tls_client_against_silent_server_times_out() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TLSHandshakeError) as ei:
                await open_connection("127.0.0.1", port, client_psk(), timeout=0.5)
            assert ei.value.reason is TLSFailureReason.TIMEOUT
        finally:
            server.close()

    run(main())


@pytest.mark.parametrize("mode", ["psk", "cert"])
def test_dtls_over_udp(pki: PKI, mode: str) -> None:
    async def handler(session: DTLSSession) -> None:
        while data := await session.recv():
            session.send(data[::-1] + session.engine.export_keying_material(LABEL))

    if mode == "psk":
        scfg, ccfg = server_psk(Transport.DTLS), client_psk(Transport.DTLS)
    else:
        scfg = TLSConfig(Role.SERVER, Transport.DTLS, credentials=pki.creds(pki.leaf("mn-cse.example")),
                         trust_anchors=[pki.root.cert], mtu=400)
        ccfg = TLSConfig(Role.CLIENT, Transport.DTLS, credentials=pki.creds(pki.leaf("asn.example")),
                         trust_anchors=[pki.root.cert], mtu=400)

    async def main() -> None:
        server = await start_dtls_server(handler, "127.0.0.1", 0, scfg)
        host, port = server.sockname
        try:
            sessions = [await open_dtls_connection(host, port, ccfg) for _ in range(2)]
            assert len(server.sessions) == 2  # demultiplexed by peer address
            for i, s in enumerate(sessions):
                s.send(b"abc%d" % i)
            for i, s in enumerate(sessions):
                reply = await s.recv(5)
                assert reply[:4] == (b"abc%d" % i)[::-1]
                assert reply[4:] == s.engine.export_keying_material(LABEL)
            assert sessions[0].engine.export_keying_material(LABEL) != sessions[1].engine.export_keying_material(LABEL)
            for s in sessions:
                s.close()
            await asyncio.sleep(0.1)
            assert server.sessions == {}  # close_notify ended the server sessions
        finally:
            server.close()

    run(main())


def test_dtls_retransmission_over_lossy_path() -> None:
    """Drop the first datagram the client sends (its ClientHello): the DTLS timer retransmits it."""

    async def handler(session: DTLSSession) -> None:
        session.send(b"hi")
        await session.recv()

    async def main() -> None:
        server = await start_dtls_server(handler, "127.0.0.1", 0, server_psk(Transport.DTLS))
        host, port = server.sockname
        dropped = [0]
        orig = server.datagram_received

        def lossy(data: bytes, addr: Any) -> None:
            if dropped[0] < 1:
                dropped[0] += 1
                return
            orig(data, addr)

        server.datagram_received = lossy  # type: ignore[method-assign]
        try:
            session = await open_dtls_connection(host, port, client_psk(Transport.DTLS), timeout=8)
            assert await session.recv(5) == b"hi"
            assert dropped[0] == 1
            session.close()
        finally:
            server.close()

    run(main())


def test_dtls_wrong_psk_fails_with_timeout() -> None:
    async def handler(session: DTLSSession) -> None:  # pragma: no cover - never reached
        raise AssertionError("handler must not run")

    async def main() -> None:
        server = await start_dtls_server(handler, "127.0.0.1", 0, server_psk(Transport.DTLS), handshake_timeout=1.5)
        host, port = server.sockname
        try:
            with pytest.raises(TLSHandshakeError) as ei:
                await open_dtls_connection(host, port, client_psk(Transport.DTLS, key=b"wrong"), timeout=1.5)
            assert ei.value.reason is TLSFailureReason.TIMEOUT
            with pytest.raises(TLSHandshakeError) as ei:
                await open_dtls_connection(host, port, client_psk(Transport.DTLS, ident=b"nobody"), timeout=3)
            assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
        finally:
            server.close()

    run(main())
