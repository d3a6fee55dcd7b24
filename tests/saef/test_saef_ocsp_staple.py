"""OCSP stapling in Certificate-Based SAEF (TS-0003 8.1.2.2, 8.2.2.2; RFC 6066 8; profile P21,
P23): Entity B (``certificate_server(ocsp_staple=...)``) staples the OCSP response for its own
certificate; Entity A (``certificate_client(ocsp_staple=...)``), which may not reach the
responder itself, checks it.  Real handshakes over 127.0.0.1, TLS and DTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
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
from cryptography.hazmat.primitives import serialization

from m2msec.pki.ocsp import OCSPResponder, build_request
from m2msec.saef import (
    AssociationConfiguration,
    SecurityContext,
    certificate_client,
    certificate_server,
    connect,
    connect_dtls,
    serve,
    serve_dtls,
)
from m2msec.tls import TLSFailureReason, TLSHandshakeError, Transport

DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()  # this module revokes a certificate of its own CA


def _response(w: World, cert: x509.Certificate, at: Callable[[], datetime] = clock) -> bytes:
    req, _ = build_request(cert, w.ca.issuing_cert, nonce=False)
    return OCSPResponder(w.ca, clock=at).respond(req.public_bytes(DER))  # type: ignore[arg-type]


async def _handshake(w: World, transport: Transport, source: Any, policy: str, server_issued: Any = None) -> Any:
    """The client's outcome (SecurityContext or TLSHandshakeError) and the certificates the
    staple source was asked about."""
    asked: list[x509.Certificate] = []

    def staple(cert: x509.Certificate) -> bytes | None:
        asked.append(cert)
        return source(cert)

    knows_ae = AssociationConfiguration.entity_b(id_a=AE_ABS, cert_name_a=ae(AE_ABS), root_of_trust_a=[w.root],
                                                 id_b=IN_ID)
    to_in = AssociationConfiguration.entity_a(id_a=AE_ABS, id_b=IN_ID, cert_name_b=cse(IN_NAME),
                                              root_of_trust_b=[w.root])
    server = certificate_server(w.creds(server_issued or w.in_cse), [knows_ae], clock=clock, transport=transport,
                                ocsp_staple=staple if source is not None else None)
    client = certificate_client(w.creds(w.ae), to_in, clock=clock, transport=transport, ocsp_staple=policy)
    if transport is Transport.TLS:
        async def handler(reader: Any, writer: Any, ctx: SecurityContext) -> None:
            writer.close()

        srv: Any = await serve(server, handler, handshake_timeout=5)
        port = srv.sockets[0].getsockname()[1]
    else:
        async def dhandler(session: Any, ctx: SecurityContext) -> None:
            session.close()

        srv = await serve_dtls(server, dhandler, handshake_timeout=5)
        port = srv.sockname[1]
    try:
        try:
            if transport is Transport.TLS:
                _r, writer, ctx = await connect(client, "127.0.0.1", port, timeout=5)
                writer.close()
            else:
                session, ctx = await connect_dtls(client, "127.0.0.1", port, timeout=5)
                session.close()
            out: Any = ctx
        except TLSHandshakeError as exc:
            out = exc
    finally:
        srv.close()
    await asyncio.sleep(0)
    return out, asked


@pytest.mark.parametrize("transport", [Transport.TLS, Transport.DTLS])
def test_good_staple_checked_by_entity_a(w: World, transport: Transport) -> None:
    out, asked = run(lambda: _handshake(w, transport, lambda c: _response(w, c), "require"))
    assert isinstance(out, SecurityContext), out
    assert out.peer_id == IN_ID and asked == [w.in_cse.certificate]
    assert out._engine.ocsp_staple_result is not None  # noqa: SLF001 - the verified response
    # a client that does not ask gets no staple (no status_request: the source is not asked)
    out, asked = run(lambda: _handshake(w, transport, lambda c: _response(w, c), "off"))
    assert isinstance(out, SecurityContext) and asked == []


@pytest.mark.parametrize("transport", [Transport.TLS, Transport.DTLS])
def test_refusals(w: World, transport: Transport) -> None:
    # no staple: "require" refuses, "if-present" accepts
    out, _ = run(lambda: _handshake(w, transport, None, "require"))
    assert isinstance(out, TLSHandshakeError) and out.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS
    out, _ = run(lambda: _handshake(w, transport, None, "if-present"))
    assert isinstance(out, SecurityContext)
    # a staple that is not an OCSP response, and one signed by another CA: refused under both
    for junk in (lambda c: b"\x30\x03\x0a\x01\x00", lambda c: _response_of(w.evil, c)):
        out, _ = run(lambda j=junk: _handshake(w, transport, j, "if-present"))  # type: ignore[misc]
        assert isinstance(out, TLSHandshakeError), out


def test_revoked_server_staples_its_revocation(w: World) -> None:
    """Entity B's own certificate is revoked: it staples what the responder says and Entity A
    refuses it, even with "if-present" (TLS and DTLS)."""
    from m2msec.pki import CertificateFlavour

    revoked = w.ca.issue(CertificateFlavour.CSE_ID, [IN_NAME], now=NOW)
    w.ca.revoke(revoked.certificate, now=NOW, reason=x509.ReasonFlags.key_compromise)
    for transport in (Transport.TLS, Transport.DTLS):
        out, asked = run(lambda t=transport: _handshake(w, t, lambda c: _response(w, c), "if-present",  # type: ignore[misc]
                                                        server_issued=revoked))
        assert isinstance(out, TLSHandshakeError) and out.reason is TLSFailureReason.BAD_CERTIFICATE_STATUS, out
        assert asked == [revoked.certificate]


def _response_of(ca: Any, cert: x509.Certificate) -> bytes:
    req, _ = build_request(cert, ca.issuing_cert, nonce=False)
    return OCSPResponder(ca, clock=clock).respond(req.public_bytes(DER))  # type: ignore[arg-type]
