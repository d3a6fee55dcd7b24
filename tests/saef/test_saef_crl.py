"""Certificate status (TS-0003 8.1.2.2) in real Certificate-Based SAEF handshakes over 127.0.0.1.

Our engine on both sides; the rejecting side checks the peer's chain against the
DevCA's CRLs, the other side must learn the verdict from the fatal alert
(``certificate_revoked`` for REVOKED, ``certificate_unknown`` for
REVOCATION_UNKNOWN, RFC 5246 7.2.2).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _saefhelp import AE_ABS, IN_ID, IN_NAME, NOW, World, ae, clock, cse, make_world, run

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CertificateVerificationError, CRLStore, RevocationStatus, VerificationReason
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
from m2msec.saef.framework import SAEFEndpoint
from m2msec.tls import TLSFailureReason, TLSHandshakeError, Transport

R = VerificationReason


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()


def to_in(w: World, **kw: Any) -> AssociationConfiguration:
    return AssociationConfiguration.entity_a(id_a=AE_ABS, id_b=IN_ID, cert_name_b=cse(IN_NAME),
                                             root_of_trust_b=[w.root], **kw)


def knows_ae(w: World, **kw: Any) -> AssociationConfiguration:
    return AssociationConfiguration.entity_b(id_a=AE_ABS, cert_name_a=ae(AE_ABS), root_of_trust_a=[w.root],
                                             id_b=IN_ID, **kw)


async def _handshake(client: SAEFEndpoint, server: SAEFEndpoint) -> tuple[Any, Any]:
    """(client outcome, server outcome): a SecurityContext or the exception, each side."""
    got: asyncio.Queue[Any] = asyncio.Queue()
    if server.transport is Transport.TLS:
        async def handler(reader: Any, writer: Any, ctx: SecurityContext) -> None:
            got.put_nowait(ctx)

        srv: Any = await serve(server, handler, on_error=lambda e, _p: got.put_nowait(e), handshake_timeout=5)
        port, opener = srv.sockets[0].getsockname()[1], connect
    else:
        async def dhandler(sess: Any, ctx: SecurityContext) -> None:
            got.put_nowait(ctx)

        srv = await serve_dtls(server, dhandler, on_error=lambda e, _p: got.put_nowait(e), handshake_timeout=5)
        port, opener = srv.sockname[1], connect_dtls  # type: ignore[assignment]
    try:
        try:
            res = await opener(client, "127.0.0.1", port, timeout=5)
            cout: Any = res[-1]
            if server.transport is Transport.TLS:
                res[1].close()
            else:
                res[0].close()
        except TLSHandshakeError as exc:
            cout = exc
        sout = await asyncio.wait_for(got.get(), 7)
    finally:
        srv.close()
    return cout, sout


def _rejected(err: Any, want: R) -> CertificateVerificationError:
    assert isinstance(err, TLSHandshakeError) and err.reason is TLSFailureReason.PEER_REJECTED, err
    assert isinstance(err.__cause__, CertificateVerificationError) and err.__cause__.reason_code is want, err.__cause__
    return err.__cause__


@pytest.mark.parametrize("transport", [Transport.TLS, Transport.DTLS], ids=["tls", "dtls"])
def test_revoked_client_certificate_refused(w: World, transport: Transport) -> None:
    revoked = w.ca.issue(F.AE_ID, [AE_ABS], now=NOW)
    w.ca.revoke(revoked.certificate, now=NOW)
    store = CRLStore([w.ca.issue_crl(now=NOW), w.ca.issue_crl(now=NOW, signer="root")])
    client = certificate_client(w.creds(revoked, AE_ABS), to_in(w), clock=clock, transport=transport)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [knows_ae(w, crls=store)], clock=clock,
                                transport=transport)
    cout, sout = run(lambda: _handshake(client, server))
    cause = _rejected(sout, R.REVOKED)
    assert f"{revoked.certificate.serial_number:x}" in cause.detail
    # the client learns it from the certificate_revoked alert
    assert isinstance(cout, TLSHandshakeError) and cout.reason is TLSFailureReason.BAD_CERTIFICATE, cout
    assert "certificate revoked" in cout.detail
    # the same certificate is accepted with revocation checking off
    server = certificate_server(w.creds(w.in_cse, IN_ID), [knows_ae(w, crls=store, revocation="off")], clock=clock,
                                transport=transport)
    cout, sout = run(lambda: _handshake(client, server))
    assert isinstance(sout, SecurityContext) and sout.peer_id == AE_ABS
    assert sout.verified_peer.revocation == (RevocationStatus.NOT_CHECKED,) * 2


def test_unrevoked_client_accepted_under_require(w: World) -> None:
    store = CRLStore([w.ca.issue_crl(now=NOW), w.ca.issue_crl(now=NOW, signer="root")])
    client = certificate_client(w.creds(w.ae, AE_ABS), to_in(w, crls=store, revocation="require"), clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [knows_ae(w, crls=store, revocation="require")],
                                clock=clock)
    cout, sout = run(lambda: _handshake(client, server))
    assert isinstance(cout, SecurityContext) and isinstance(sout, SecurityContext), (cout, sout)
    assert sout.verified_peer.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)
    assert cout.verified_peer.revocation == (RevocationStatus.GOOD, RevocationStatus.GOOD)


def test_require_without_root_crl_sends_certificate_unknown(w: World) -> None:
    store = CRLStore([w.ca.issue_crl(now=NOW)])  # the root's CRL (covering the intermediate) is missing
    client = certificate_client(w.creds(w.ae, AE_ABS), to_in(w), clock=clock)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [knows_ae(w, crls=store, revocation="require")],
                                clock=clock)
    cout, sout = run(lambda: _handshake(client, server))
    _rejected(sout, R.REVOCATION_UNKNOWN)
    assert isinstance(cout, TLSHandshakeError) and "certificate unknown" in cout.detail, cout


def test_client_refuses_revoked_server_certificate(w: World) -> None:
    """Entity A checks Entity B's certificate the same way (server certificate revoked)."""
    in_revoked = w.ca.issue(F.CSE_ID, [IN_NAME], now=NOW)
    w.ca.revoke(in_revoked.certificate, now=NOW, signer="intermediate")
    store = CRLStore([w.ca.issue_crl(now=NOW)])
    client = certificate_client(w.creds(w.ae, AE_ABS), to_in(w, crls=store), clock=clock)
    server = certificate_server(w.creds(in_revoked, IN_ID), [knows_ae(w)], clock=clock)
    cout, sout = run(lambda: _handshake(client, server))
    _rejected(cout, R.REVOKED)
    assert isinstance(sout, TLSHandshakeError) and "certificate revoked" in sout.detail, sout
