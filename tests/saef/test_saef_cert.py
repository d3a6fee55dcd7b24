"""Certificate-Based SAEF (TS-0003 8.2.2.2) over real TCP/UDP sockets with DevCA certificates."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _saefhelp import AE2_ABS, AE_ABS, IN_ID, IN_NAME, MN_ID, MN_NAME, NOW, World, ae, clock, cse, make_world, run

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CertificateVerificationError, PeerCertInfo, VerificationReason
from m2msec.saef import (
    AssociationConfiguration,
    EntityRole,
    PeerKind,
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
from m2msec.tls.profiles import EXPORTER_ESCERTKE

TRANSPORTS = [Transport.TLS, Transport.DTLS]


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()


def a_to_in(w: World, **kw: Any) -> AssociationConfiguration:
    args: dict[str, Any] = {"id_a": AE_ABS, "id_b": IN_ID, "cert_name_b": cse(IN_NAME), "root_of_trust_b": [w.root]}
    args.update(kw)
    return AssociationConfiguration.entity_a(**args)


def in_knows_ae(w: World, **kw: Any) -> AssociationConfiguration:
    args: dict[str, Any] = {"id_a": AE_ABS, "cert_name_a": ae(AE_ABS), "root_of_trust_a": [w.root], "id_b": IN_ID}
    args.update(kw)
    return AssociationConfiguration.entity_b(**args)


def in_knows_mn(w: World) -> AssociationConfiguration:
    return AssociationConfiguration.entity_b(id_a=MN_ID, cert_name_a=cse(MN_NAME), root_of_trust_a=[w.root], id_b=IN_ID)


async def session(client: SAEFEndpoint, server: SAEFEndpoint) -> tuple[SecurityContext, SecurityContext, bytes]:
    """Handshake over 127.0.0.1, exchange one message; (client ctx, server ctx, echoed bytes)."""
    got: asyncio.Future[SecurityContext] = asyncio.get_running_loop().create_future()
    if server.transport is Transport.TLS:
        async def handler(reader: asyncio.StreamReader, writer: Any, ctx: SecurityContext) -> None:
            got.set_result(ctx)
            writer.write(await reader.read(100))
            await writer.drain()

        srv = await serve(server, handler)
        port = srv.sockets[0].getsockname()[1]
        try:
            reader, writer, cctx = await connect(client, "127.0.0.1", port)
            writer.write(b"hello over SAEF")
            echoed = await reader.read(100)
            writer.close()
            sctx = await got
        finally:
            srv.close()
        return cctx, sctx, echoed

    async def dhandler(sess: Any, ctx: SecurityContext) -> None:
        got.set_result(ctx)
        sess.send(await sess.recv(5))

    dsrv = await serve_dtls(server, dhandler)
    try:
        sess, cctx = await connect_dtls(client, "127.0.0.1", dsrv.sockname[1])
        sess.send(b"hello over SAEF")
        echoed = await sess.recv(5)
        sctx = await got
        sess.close()
    finally:
        dsrv.close()
    return cctx, sctx, echoed


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["tls", "dtls"])
def test_ae_to_cse(w: World, transport: Transport) -> None:
    client = certificate_client(w.creds(w.ae, AE_ABS), a_to_in(w), clock=clock, transport=transport)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_mn(w), in_knows_ae(w)], clock=clock,
                                transport=transport)
    cctx, sctx, echoed = run(lambda: session(client, server))
    assert echoed == b"hello over SAEF"
    # Entity A binds the context to IdB, Entity B to IdA (8.2.2.2)
    assert cctx.peer_id == IN_ID and cctx.peer_kind is PeerKind.CSE and cctx.local_role is EntityRole.A
    assert sctx.peer_id == AE_ABS and sctx.peer_kind is PeerKind.AE and sctx.local_role is EntityRole.B
    assert sctx.credential_id == f"33-{AE_ABS}" and cctx.credential_id == f"32-{IN_NAME}"
    assert cctx.peer_cert == cse(IN_NAME) and sctx.peer_cert == ae(AE_ABS)
    assert cctx.verified_chain[0] == w.in_cse.certificate and cctx.verified_chain[-1] == w.root
    assert sctx.verified_chain[0] == w.ae.certificate and len(sctx.verified_chain) == 3
    want = "ECDHE-ECDSA-AES128-SHA256" if transport is Transport.TLS else "ECDHE-ECDSA-AES128-CCM8"
    assert cctx.cipher == sctx.cipher == want
    assert cctx.sni == sctx.sni == IN_NAME  # SNI defaults to CertNameB
    assert cctx.export_onem2m_key(EXPORTER_ESCERTKE) == sctx.export_onem2m_key(EXPORTER_ESCERTKE)


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["tls", "dtls"])
def test_cse_to_cse(w: World, transport: Transport) -> None:
    assoc = AssociationConfiguration.entity_a(id_a=MN_ID, id_b=IN_ID, cert_name_b=cse(IN_NAME),
                                              root_of_trust_b=[w.root])
    client = certificate_client(w.creds(w.mn_cse, MN_ID), assoc, clock=clock, transport=transport)
    server = certificate_server(w.creds(w.in_cse, IN_ID), [in_knows_ae(w), in_knows_mn(w)], clock=clock,
                                transport=transport)
    cctx, sctx, _ = run(lambda: session(client, server))
    assert sctx.peer_id == MN_ID and sctx.peer_kind is PeerKind.CSE and sctx.credential_id == f"32-{MN_NAME}"
    assert cctx.peer_id == IN_ID and cctx.local_id == MN_ID and sctx.local_id == IN_ID


def test_ae_id_taken_from_certificate_when_ida_not_configured(w: World) -> None:
    client = certificate_client(w.creds(w.ae), a_to_in(w), clock=clock)
    server = certificate_server(w.creds(w.in_cse), [in_knows_ae(w, id_a=None)], clock=clock)
    _, sctx, _ = run(lambda: session(client, server))
    assert sctx.peer_id == AE_ABS  # 8.2.2.2: the Absolute AE-ID in the certificate


def _expect_both_fail(client: SAEFEndpoint, server: SAEFEndpoint,
                      timeout: float = 5.0) -> tuple[TLSHandshakeError, BaseException]:
    """Run the handshake; both sides must fail and no handler may run."""

    async def go() -> tuple[TLSHandshakeError, BaseException]:
        errors: asyncio.Queue[BaseException] = asyncio.Queue()
        ran: list[SecurityContext] = []

        async def handler(*args: Any) -> None:
            ran.append(args[-1])

        if server.transport is Transport.TLS:
            srv: Any = await serve(server, handler, on_error=lambda e, _p: errors.put_nowait(e),
                                   handshake_timeout=timeout)
            port = srv.sockets[0].getsockname()[1]
            opener = connect
        else:
            srv = await serve_dtls(server, handler, on_error=lambda e, _p: errors.put_nowait(e),
                                   handshake_timeout=timeout)
            port = srv.sockname[1]
            opener = connect_dtls  # type: ignore[assignment]
        try:
            with pytest.raises(TLSHandshakeError) as client_err:
                await opener(client, "127.0.0.1", port, timeout=timeout)
            server_err = await asyncio.wait_for(errors.get(), timeout + 2)
        finally:
            srv.close()
        assert not ran
        return client_err.value, server_err

    return run(go)  # type: ignore[no-any-return]


def _reason(err: BaseException) -> VerificationReason:
    assert isinstance(err, TLSHandshakeError) and err.reason is TLSFailureReason.PEER_REJECTED, err
    cause = err.__cause__
    assert isinstance(cause, CertificateVerificationError), repr(cause)
    return cause.reason_code


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["tls", "dtls"])
@pytest.mark.parametrize("case", ["identifier", "flavour", "untrusted", "expired", "name-constraints"])
def test_verification_failures_abort_both_sides(w: World, transport: Transport, case: str) -> None:
    ae_creds = w.creds(w.ae, AE_ABS)
    in_creds = w.creds(w.in_cse, IN_ID)
    client_assoc, server_assoc = a_to_in(w), in_knows_ae(w)
    rejecting = "server"
    if case == "identifier":  # Entity A expects another CSE (CertNameB mismatch)
        client_assoc, rejecting = a_to_in(w, cert_name_b=cse(f"other.{IN_NAME}")), "client"
        want = VerificationReason.IDENTIFIER_MISMATCH
    elif case == "flavour":  # Entity B expects a CSE-ID certificate from Entity A, gets an AE-ID one
        server_assoc = in_knows_ae(w, cert_name_a=cse(MN_NAME), id_a=MN_ID)
        want = VerificationReason.WRONG_FLAVOUR
    elif case == "untrusted":  # Entity A's certificate chains to a root B was not configured with
        ae_creds = w.creds(w.evil.issue(F.AE_ID, [AE_ABS], now=NOW), AE_ABS)
        want = VerificationReason.UNTRUSTED_ROOT
    elif case == "expired":
        ae_creds = w.creds(w.ae_expired, AE_ABS)
        want = VerificationReason.EXPIRED
    else:  # Entity B's certificate violates its issuing CA's name constraints
        in_creds = w.creds(w.nc_violator)
        client_assoc = a_to_in(w, cert_name_b=cse("in.evil.example.org"), root_of_trust_b=[w.nc_root])
        want, rejecting = VerificationReason.NAME_CONSTRAINT_VIOLATION, "client"
    client = certificate_client(ae_creds, client_assoc, clock=clock, transport=transport)
    server = certificate_server(in_creds, [server_assoc], clock=clock, transport=transport)
    client_err, server_err = _expect_both_fail(client, server)
    rejector, victim = (server_err, client_err) if rejecting == "server" else (client_err, server_err)
    assert _reason(rejector) is want
    # the other side learns it through the fatal alert (RFC 5246 7.2.2)
    assert isinstance(victim, TLSHandshakeError)
    assert victim.reason is TLSFailureReason.BAD_CERTIFICATE, victim
    alert = {"expired": "certificate expired", "untrusted": "unknown ca"}.get(case, "bad certificate")
    assert alert in victim.detail


def test_most_specific_failure_across_associations(w: World) -> None:
    """B knows two peers; a certificate matching one identity but failing later is reported as such."""
    server = certificate_server(w.creds(w.in_cse), [in_knows_mn(w), in_knows_ae(w)], clock=clock)
    client = certificate_client(w.creds(w.ae_expired), a_to_in(w), clock=clock)
    _, server_err = _expect_both_fail(client, server)
    assert _reason(server_err) is VerificationReason.EXPIRED
    unknown_ae = w.ca.issue(F.AE_ID, [AE2_ABS], now=NOW)
    client = certificate_client(w.creds(unknown_ae), a_to_in(w), clock=clock)
    _, server_err = _expect_both_fail(client, server)
    assert _reason(server_err) is VerificationReason.IDENTIFIER_MISMATCH


def test_clock_is_injected(w: World) -> None:
    """Validity is judged by the SAEF clock, not the system clock."""
    late = lambda: NOW.replace(year=NOW.year + 2)  # noqa: E731
    client = certificate_client(w.creds(w.ae), a_to_in(w), clock=late)
    server = certificate_server(w.creds(w.in_cse), [in_knows_ae(w)], clock=clock)
    client_err, _ = _expect_both_fail(client, server)
    assert _reason(client_err) is VerificationReason.EXPIRED


def test_sa2_roles_reversed(w: World) -> None:
    """8.2.1: for SA2 Entity B is the (D)TLS client and Entity A the server."""
    b_as_client = certificate_client(w.creds(w.in_cse, IN_ID), in_knows_ae(w), clock=clock)
    a_as_server = certificate_server(w.creds(w.ae, AE_ABS), [a_to_in(w)], clock=clock)
    cctx, sctx, _ = run(lambda: session(b_as_client, a_as_server))
    assert cctx.local_role is EntityRole.B and cctx.peer_id == AE_ABS
    assert sctx.local_role is EntityRole.A and sctx.peer_id == IN_ID


def test_configuration_rules(w: World) -> None:
    with pytest.raises(ValueError, match="IdB"):
        AssociationConfiguration(EntityRole.A, cse(IN_NAME), (w.root,), None)
    with pytest.raises(ValueError, match="configure IdA"):
        AssociationConfiguration.entity_b(cert_name_a=cse(MN_NAME), root_of_trust_a=[w.root])
    with pytest.raises(ValueError, match="root of trust"):
        AssociationConfiguration.entity_a(id_b=IN_ID, cert_name_b=cse(IN_NAME), root_of_trust_b=[])
    with pytest.raises(ValueError, match="same entity"):
        certificate_server(w.creds(w.in_cse), [in_knows_ae(w), a_to_in(w)], clock=clock)
    creds = w.creds(w.ae)
    assert "hidden" in repr(creds) and "PRIVATE" not in repr(creds)
    node = AssociationConfiguration.entity_b(cert_name_a=PeerCertInfo(F.NODE_ID, "urn:gsma:imei:1"),
                                             root_of_trust_a=[w.root])
    assert node.peer_id is None and node.peer_kind is None
