"""The engine's held final flight for an asynchronous peer status check
(``TLSConfig.peer_status_check``; TS-0003 8.1.2.2): sans-I/O state machine, the asyncio adapter,
and openssl s_client as the client (it sees alert certificate_revoked, never an established session).

The bindings lack ``SSL_set_retry_verify``: asserted here, so that the day they expose it the
mechanism can be reconsidered.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _tlshelp import OPENSSL, PKI, flush_alert, make_pki, pump
from OpenSSL._util import lib

from m2msec.pki import CertificateVerificationError, VerificationReason
from m2msec.tls.aio import open_connection, start_server
from m2msec.tls.engine import (
    PSKCredentials,
    Role,
    TLSConfig,
    TLSEngine,
    TLSFailureReason,
    TLSHandshakeError,
    TLSState,
)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


def revoked() -> CertificateVerificationError:
    exc = CertificateVerificationError(VerificationReason.REVOKED, "serial 1 was revoked (OCSP)")
    exc.tls_alert = "certificate_revoked"  # type: ignore[attr-defined]
    return exc


class Check:
    """A peer_status_check recording its calls; ``result``: None (nothing to wait for),
    "wait" (an awaitable), or an exception (raised synchronously)."""

    def __init__(self, result: Any = "wait") -> None:
        self.result = result
        self.calls: list[Any] = []

    def __call__(self, pv: Any) -> Any:
        self.calls.append(pv)
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result is None:
            return None
        return asyncio.sleep(0)


def hook(chain: list[Any]) -> str:
    return "verified:" + chain[0].subject.rfc4514_string()


def pair(pki: PKI, check: Check, *, psk: bool = False) -> tuple[TLSEngine, TLSEngine]:
    if psk:
        c = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(b"id", b"k" * 16)))
        s = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n: b"k" * 16, peer_status_check=check))
        return c, s
    c = TLSEngine(TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("client.example")),
                            trust_anchors=[pki.root.cert], server_name="server.example"))
    s = TLSEngine(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("server.example")),
                            trust_anchors=[pki.root.cert], verify_peer=hook, verify_peer_authoritative=True,
                            peer_status_check=check))
    return c, s


def shuttle(c: TLSEngine, s: TLSEngine, rounds: int = 10) -> None:
    c.do_handshake()
    for _ in range(rounds):
        moved = False
        for a, b in ((c, s), (s, c)):
            d = a.data_to_send()
            if d:
                moved = True
                b.receive_data(d)
        if not moved:
            return


def test_bindings_lack_retry_verify() -> None:
    assert not hasattr(lib, "SSL_set_retry_verify") and not hasattr(lib, "SSL_ERROR_WANT_RETRY_VERIFY")


def test_held_then_released(pki: PKI) -> None:
    check = Check()
    c, s = pair(pki, check)
    shuttle(c, s)
    assert check.calls == ["verified:CN=client.example"]
    assert s.holding_flight and s.state is TLSState.HANDSHAKING and not s.handshake_complete
    assert s.pending_status_check is not None
    assert c.state is TLSState.HANDSHAKING  # the client has no Finished from us: it cannot send a request
    with pytest.raises(Exception):  # noqa: B017,PT011 - nothing can be sent on an unfinished session
        c.send_application_data(b"GET / HTTP/1.1\r\n\r\n")
    s.pending_status_check.close()  # the coroutine is not awaited in this sans-I/O test
    assert s.release_held_flight()
    assert s.established and s.handshake_complete and s.pending_status_check is None
    c.receive_data(s.data_to_send())
    assert c.established
    c.send_application_data(b"hello")
    s.receive_data(c.data_to_send())
    assert s.receive_application_data() == b"hello"
    assert not s.release_held_flight()  # once only


def test_held_then_refused_sends_the_alert(pki: PKI) -> None:
    c, s = pair(pki, Check())
    shuttle(c, s)
    s.pending_status_check.close()
    err = s.refuse_held_flight(revoked())
    assert err.reason is TLSFailureReason.PEER_REJECTED and isinstance(err.__cause__, CertificateVerificationError)
    assert s.state is TLSState.FAILED and s.failure is err
    out = s.data_to_send()
    assert out == b"\x15\x03\x03\x00\x02\x02\x2c"  # plaintext fatal certificate_revoked(44), no ChangeCipherSpec
    with pytest.raises(TLSHandshakeError) as ei:
        c.receive_data(out)
    assert ei.value.reason is TLSFailureReason.BAD_CERTIFICATE and "certificate revoked" in ei.value.detail
    assert not s.release_held_flight()


def test_synchronous_refusal_and_nothing_to_wait_for(pki: PKI) -> None:
    c, s = pair(pki, Check(revoked()))
    with pytest.raises(TLSHandshakeError):
        shuttle(c, s)
    assert s.state is TLSState.FAILED
    with pytest.raises(TLSHandshakeError):
        flush_alert(s, c)
    assert c.state is TLSState.FAILED
    assert "certificate revoked" in (c.failure.detail if c.failure else "")
    c, s = pair(pki, Check(None))
    pump(c, s)  # None: established at once
    assert not s.holding_flight


def test_psk_handshake_is_not_held(pki: PKI) -> None:
    check = Check()
    c, s = pair(pki, check, psk=True)
    pump(c, s)
    assert check.calls == [] and s.established


def test_eof_while_held_fails_the_handshake(pki: PKI) -> None:
    c, s = pair(pki, Check())
    shuttle(c, s)
    s.pending_status_check.close()
    with pytest.raises(TLSHandshakeError) as ei:
        s.receive_data(b"")
    assert ei.value.reason is TLSFailureReason.CONNECTION_CLOSED
    assert not s.release_held_flight()


# ------------------------------------------------------------------ asyncio adapter


def test_aio_server_waits_for_the_check(pki: PKI) -> None:
    gate: dict[str, asyncio.Event] = {}
    verdict: dict[str, BaseException | None] = {"client.example": None, "bad.example": revoked()}

    async def check_async(pv: str) -> None:
        name = pv.split("=", 1)[1]
        await gate[name].wait()
        if verdict[name] is not None:
            raise verdict[name]  # type: ignore[misc]

    async def handler(reader: asyncio.StreamReader, writer: Any) -> None:
        handled.append(await reader.readline())
        writer.write(b"ok\n")

    handled: list[bytes] = []

    async def go() -> None:
        gate["client.example"], gate["bad.example"] = asyncio.Event(), asyncio.Event()
        srv_cfg = TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("server.example")),
                            trust_anchors=[pki.root.cert], verify_peer=hook, verify_peer_authoritative=True,
                            peer_status_check=check_async)
        server = await start_server(handler, "127.0.0.1", 0, srv_cfg, on_handshake_error=lambda e, p: errors.append(e))
        port = server.sockets[0].getsockname()[1]

        def client(name: str) -> TLSConfig:
            return TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf(name)), trust_anchors=[pki.root.cert],
                             server_name="server.example")

        try:
            bad = asyncio.create_task(open_connection("127.0.0.1", port, client("bad.example")))
            good = asyncio.create_task(open_connection("127.0.0.1", port, client("client.example")))
            await asyncio.sleep(0.2)
            assert not bad.done() and not good.done()  # both held
            gate["client.example"].set()
            r, w = await asyncio.wait_for(good, 5)  # released while the other is still held
            assert not bad.done()
            w.write(b"request\n")
            assert await r.readline() == b"ok\n"
            w.close()
            gate["bad.example"].set()
            with pytest.raises(TLSHandshakeError) as ei:
                await asyncio.wait_for(bad, 5)
            assert "certificate revoked" in ei.value.detail
            assert handled == [b"request\n"]
            assert [e.reason for e in errors] == [TLSFailureReason.PEER_REJECTED]
        finally:
            server.close()
            await server.wait_closed()

    errors: list[TLSHandshakeError] = []
    asyncio.run(go())


@pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
def test_openssl_client_sees_certificate_revoked(pki: PKI, tmp_path: Path) -> None:
    ck, cc, ca = pki.write(tmp_path, "client", pki.leaf("client.example"))

    async def check_async(pv: str) -> None:
        await asyncio.sleep(0.1)
        raise revoked()

    async def handler(reader: asyncio.StreamReader, writer: Any) -> None:
        handled.append(await reader.read(100))

    handled: list[bytes] = []

    async def go() -> tuple[int, str]:
        srv_cfg = TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("server.example")),
                            trust_anchors=[pki.root.cert], verify_peer=hook, verify_peer_authoritative=True,
                            peer_status_check=check_async)
        server = await start_server(handler, "127.0.0.1", 0, srv_cfg)
        port = server.sockets[0].getsockname()[1]
        try:
            proc = await asyncio.create_subprocess_exec(
                str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cert", str(cc),
                "-key", str(ck), "-CAfile", str(ca), "-servername", "server.example",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(b"GET / HTTP/1.1\r\n\r\n"), 15)
            return proc.returncode or 0, out.decode("utf-8", "replace")
        finally:
            server.close()
            await server.wait_closed()

    rc, out = asyncio.run(go())
    assert rc != 0 and "alert certificate revoked" in out, out
    assert handled == []


def test_input_while_held_is_not_processed_and_is_bounded(pki: PKI) -> None:
    """Records a client sends before our Finished (a pipelined request, junk) stay buffered and
    undecrypted while the flight is held, are dropped with it on a refusal, and more than
    16 KiB of them fails the handshake instead of growing the buffer."""
    from m2msec.tls.engine import _HELD_INPUT_LIMIT

    early = b"\x17\x03\x03\x00\x40" + bytes(64)  # an application_data record the client cannot have sealed yet
    c, s = pair(pki, Check())
    shuttle(c, s)
    s.pending_status_check.close()
    s.receive_data(early)
    assert s.holding_flight and s.receive_application_data() == b"" and s.data_to_send() == b""
    s.refuse_held_flight(revoked())
    assert s.data_to_send() == b"\x15\x03\x03\x00\x02\x02\x2c" and s.receive_application_data() == b""
    # a flood while held: the handshake fails once the buffer passes the bound, nothing is sent
    c, s = pair(pki, Check())
    shuttle(c, s)
    s.pending_status_check.close()
    chunk = b"\x17\x03\x03\x10\x00" + bytes(4096)
    with pytest.raises(TLSHandshakeError) as ei:
        for _ in range(2 * _HELD_INPUT_LIMIT // len(chunk) + 2):
            s.receive_data(chunk)
    assert ei.value.reason is TLSFailureReason.HANDSHAKE_FAILURE and "while its certificate status" in ei.value.detail
    assert s.state is TLSState.FAILED and s.data_to_send() == b"" and not s.release_held_flight()


def test_a_certificate_handshake_without_a_verified_peer_is_still_checked(pki: PKI) -> None:
    """The PSK test is the cipher suite, not a missing peer_verification: a certificate handshake
    whose verify hook is not authoritative still goes to the check (with None)."""
    check = Check()
    c = TLSEngine(TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("client.example")),
                            trust_anchors=[pki.root.cert], server_name="server.example"))
    s = TLSEngine(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("server.example")),
                            trust_anchors=[pki.root.cert], peer_status_check=check))
    shuttle(c, s)
    assert len(check.calls) == 1 and s.holding_flight
    s.pending_status_check.close()
