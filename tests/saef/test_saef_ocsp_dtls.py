"""OCSP about the client certificate during a *DTLS* Certificate-Based SAEF handshake
(TS-0003 8.1.2.2, 8.2.2.2; profile P25): the server's final flight (ChangeCipherSpec, Finished)
is held while the query runs, then sent, or replaced by one plaintext fatal alert.

Three levels: the sans-I/O engines (the alert's DTLS record header), the UDP adapter with a
check that outlasts the client's retransmission timer (its retransmitted flight is held, then
answered), and :func:`m2msec.saef.serve_dtls` against a real OCSP responder over HTTP
(good, revoked, responder down under ``require``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _saefhelp import (
    AE_ABS,
    IN_ID,
    IN_NAME,
    NOW,
    World,
    ae,
    clock,
    cse,
    make_world,
    run,
)
from cryptography import x509

from m2msec.pki import CertificateVerificationError, OCSPResponder, VerificationReason
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.pki.ocsp_http import OCSPHTTPServer
from m2msec.saef import (
    AssociationConfiguration,
    SecurityContext,
    certificate_client,
    certificate_server,
    connect_dtls,
    serve_dtls,
)
from m2msec.tls import TLSFailureReason, TLSHandshakeError, Transport
from m2msec.tls.dtls import open_dtls_connection, start_dtls_server
from m2msec.tls.engine import Role, TLSConfig, TLSEngine, TLSState

DTLS = Transport.DTLS


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()  # this module revokes certificates of its own CA


def revoked() -> CertificateVerificationError:
    exc = CertificateVerificationError(VerificationReason.REVOKED, "revoked (OCSP)")
    exc.tls_alert = "certificate_revoked"  # type: ignore[attr-defined]
    return exc


def engines(w: World, check: Any) -> tuple[TLSEngine, TLSEngine]:
    ccreds, screds = w.creds(w.ae).tls_credentials(), w.creds(w.in_cse).tls_credentials()
    c = TLSEngine(TLSConfig(Role.CLIENT, transport=DTLS, credentials=ccreds, trust_anchors=[w.root]))
    s = TLSEngine(TLSConfig(Role.SERVER, transport=DTLS, credentials=screds, trust_anchors=[w.root],
                            verify_peer=lambda chain: "verified", verify_peer_authoritative=True,
                            peer_status_check=check))
    return c, s


def shuttle(c: TLSEngine, s: TLSEngine) -> None:
    c.do_handshake()
    for _ in range(20):
        moved = False
        for a, b in ((c, s), (s, c)):
            for d in a.datagrams_to_send():
                moved = True
                b.receive_data(d)
        if not moved:
            return


# ------------------------------------------------------------------ sans-I/O


def test_dtls_engine_holds_then_releases(w: World) -> None:
    calls: list[Any] = []

    def check(pv: Any) -> Any:
        calls.append(pv)
        return asyncio.sleep(0)

    c, s = engines(w, check)
    shuttle(c, s)
    assert calls == ["verified"] and s.holding_flight and not s.handshake_complete
    assert c.state is TLSState.HANDSHAKING  # no Finished from the server yet
    s.pending_status_check.close()
    assert s.release_held_flight() and s.established
    for d in s.datagrams_to_send():
        c.receive_data(d)
    assert c.established
    c.send_application_data(b"hello")
    for d in c.datagrams_to_send():
        s.receive_data(d)
    assert s.receive_application_records() == [b"hello"]


def test_dtls_engine_refusal_is_one_epoch0_alert(w: World) -> None:
    c, s = engines(w, lambda pv: asyncio.sleep(0))
    shuttle(c, s)
    s.pending_status_check.close()
    err = s.refuse_held_flight(revoked())
    assert err.reason is TLSFailureReason.PEER_REJECTED and s.state is TLSState.FAILED
    out = s.datagrams_to_send()
    assert len(out) == 1 and len(out[0]) == 15
    rec = out[0]
    # alert(21), DTLS 1.2, epoch 0, a 48-bit sequence number, length 2, fatal(2) certificate_revoked(44)
    assert rec[:3] == b"\x15\xfe\xfd" and rec[3:5] == b"\x00\x00" and rec[11:] == b"\x00\x02\x02\x2c"
    with pytest.raises(TLSHandshakeError) as ei:
        c.receive_data(rec)
    assert ei.value.reason is TLSFailureReason.BAD_CERTIFICATE and "certificate revoked" in ei.value.detail
    assert not s.release_held_flight()


# ------------------------------------------------------------------ the UDP adapter


def test_dtls_server_holds_across_client_retransmissions(w: World) -> None:
    """The check takes longer than the client's first retransmission timeout (1 s): its
    retransmitted flight is held, the handshake completes once the check passes; a refused
    client gets certificate_revoked and the handler never runs."""
    gate = {"ok": asyncio.Event(), "bad": asyncio.Event()}
    verdict: dict[str, BaseException | None] = {"ok": None, "bad": revoked()}
    order: list[str] = []

    def check(pv: Any) -> Any:
        async def wait() -> None:
            name = "bad" if order.count("ok") else "ok"
            order.append(name)
            await gate[name].wait()
            if verdict[name] is not None:
                raise verdict[name]  # type: ignore[misc]
        return wait()

    async def go() -> None:
        c_cfg = TLSConfig(Role.CLIENT, transport=DTLS, credentials=w.creds(w.ae).tls_credentials(),
                          trust_anchors=[w.root])
        s_cfg = TLSConfig(Role.SERVER, transport=DTLS, credentials=w.creds(w.in_cse).tls_credentials(),
                          trust_anchors=[w.root], verify_peer=lambda chain: "verified",
                          verify_peer_authoritative=True, peer_status_check=check)
        served: list[bytes] = []

        async def handler(session: Any) -> None:
            served.append(await session.recv(5))
            session.send(b"ok")

        server = await start_dtls_server(handler, "127.0.0.1", 0, s_cfg, handshake_timeout=8)
        port = server.sockname[1]
        try:
            first = asyncio.create_task(open_dtls_connection("127.0.0.1", port, c_cfg, timeout=8))
            await asyncio.sleep(1.6)  # the client's timer fired at least once meanwhile
            assert not first.done() and order == ["ok"]
            gate["ok"].set()
            session = await asyncio.wait_for(first, 5)
            session.send(b"request")
            assert await session.recv(5) == b"ok"
            session.close()
            assert served == [b"request"]
            second = asyncio.create_task(open_dtls_connection("127.0.0.1", port, c_cfg, timeout=8))
            await asyncio.sleep(0.3)
            gate["bad"].set()
            with pytest.raises(TLSHandshakeError) as ei:
                await asyncio.wait_for(second, 5)
            assert "certificate revoked" in ei.value.detail
            assert served == [b"request"] and order == ["ok", "bad"]
        finally:
            server.close()

    run(go)


# ------------------------------------------------------------------ SAEF with a real OCSP responder


def test_saef_dtls_with_ocsp_responder(w: World) -> None:
    good = w.ae
    bad = w.ca.issue(ae(AE_ABS).flavour, [AE_ABS], now=NOW)
    w.ca.revoke(bad.certificate, now=NOW, reason=x509.ReasonFlags.key_compromise)
    responder = OCSPResponder(w.ca, clock=clock)  # type: ignore[arg-type]
    queries = [0]

    def respond(der: bytes) -> bytes:
        queries[0] += 1
        return responder.respond(der)

    def server(url: str, policy: str = "require") -> Any:
        checker = PeerOCSPChecker(clock=clock, policy=policy, url=url, timeout=2)
        assoc = AssociationConfiguration.entity_b(id_a=AE_ABS, cert_name_a=ae(AE_ABS), root_of_trust_a=[w.root],
                                                  id_b=IN_ID, revocation=policy)
        return certificate_server(w.creds(w.in_cse), [dataclasses.replace(assoc, peer_ocsp=checker)],
                                  clock=clock, transport=DTLS)

    def client(issued: Any) -> Any:
        assoc = AssociationConfiguration.entity_a(id_a=AE_ABS, id_b=IN_ID, cert_name_b=cse(IN_NAME),
                                                  root_of_trust_b=[w.root])
        return certificate_client(w.creds(issued), assoc, clock=clock, transport=DTLS)

    async def attempt(endpoint: Any, issued: Any) -> tuple[Any, Any]:
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def handler(session: Any, ctx: SecurityContext) -> None:
            got.put_nowait(ctx)

        srv = await serve_dtls(endpoint, handler, on_error=lambda e, _p: got.put_nowait(e), handshake_timeout=6)
        try:
            try:
                session, cout = await connect_dtls(client(issued), "127.0.0.1", srv.sockname[1], timeout=6)
                session.close()
            except TLSHandshakeError as exc:
                cout = exc
            return cout, await asyncio.wait_for(got.get(), 8)
        finally:
            srv.close()

    async def go() -> None:
        ocsp = OCSPHTTPServer(respond)
        await ocsp.start()
        try:
            endpoint = server(ocsp.url)
            cout, sout = await attempt(endpoint, good)
            assert isinstance(sout, SecurityContext) and sout.peer_id == AE_ABS and sout.transport is DTLS
            assert isinstance(cout, SecurityContext) and queries[0] >= 1
            cout, sout = await attempt(endpoint, bad)
            assert isinstance(cout, TLSHandshakeError) and "certificate revoked" in cout.detail
            assert isinstance(sout, TLSHandshakeError) and sout.reason is TLSFailureReason.PEER_REJECTED
            assert isinstance(sout.__cause__, CertificateVerificationError)
            assert sout.__cause__.reason_code is VerificationReason.REVOKED
        finally:
            await ocsp.close()
        # the responder is gone: require refuses with certificate_unknown, if-available accepts
        cout, sout = await attempt(server(ocsp.url), good)
        assert isinstance(cout, TLSHandshakeError) and "certificate unknown" in cout.detail
        assert isinstance(sout, TLSHandshakeError) and sout.__cause__ is not None
        assert sout.__cause__.reason_code is VerificationReason.REVOCATION_UNKNOWN  # type: ignore[attr-defined]
        cout, sout = await attempt(server(ocsp.url, "if-available"), good)
        assert isinstance(cout, SecurityContext) and isinstance(sout, SecurityContext)

    run(go, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
def test_openssl_dtls_client_sees_certificate_revoked(w: World, tmp_path: Path) -> None:
    """Interop: ``openssl s_client -dtls1_2`` with a client certificate reads our epoch-0 alert
    as ``certificate revoked`` and never gets a session."""
    key, cert, ca = w.write(tmp_path, "client", w.ae)

    async def check_async(pv: Any) -> None:
        await asyncio.sleep(0.2)
        raise revoked()

    served: list[bytes] = []

    async def handler(session: Any) -> None:
        served.append(await session.recv(5))

    async def go() -> tuple[int, str]:
        s_cfg = TLSConfig(Role.SERVER, transport=DTLS, credentials=w.creds(w.in_cse).tls_credentials(),
                          trust_anchors=[w.root], verify_peer=lambda chain: "verified",
                          verify_peer_authoritative=True, peer_status_check=check_async)
        server = await start_dtls_server(handler, "127.0.0.1", 0, s_cfg, handshake_timeout=8)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(shutil.which("openssl")), "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{server.sockname[1]}",
                "-cert", str(cert), "-key", str(key), "-CAfile", str(ca),
                "-cipher", "ECDHE-ECDSA-AES128-CCM8:@SECLEVEL=0",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(b"request\n"), 20)
            return proc.returncode or 0, out.decode("utf-8", "replace")
        finally:
            server.close()

    rc, out = run(go, timeout=30)
    assert rc != 0 and "alert certificate revoked" in out, out
    assert served == []
