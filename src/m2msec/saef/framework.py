"""Certificate-Based and Provisioned Symmetric Key SAEF end-points (TS-0003 8.2.2.1, 8.2.2.2, 10.2).

An :class:`SAEFEndpoint` is one side's compiled configuration: the
:class:`~m2msec.tls.engine.TLSContext` for the Association Security Handshake
plus the rule that binds a finished handshake to the peer identity
(:meth:`SAEFEndpoint.bind` -> :class:`~m2msec.saef.context.SecurityContext`).

Certificate-Based SAEF (8.2.2.2): suites of 10.2.3 (ECDHE-ECDSA, mutual).  The
peer certificate is verified by :mod:`m2msec.tls.pkiverify` (8.1.2.5) against
the Association Configuration's CertName and RootOfTrust at the injected
clock's time, with the certificate status check of 8.1.2.2 (the
configuration's ``peer_crls`` and ``revocation`` policy); a failure aborts the
handshake and the ``TLSHandshakeError.__cause__`` names the reason.  On a server endpoint an
association with ``peer_ocsp`` (a :class:`~m2msec.pki.ocsp_check.PeerOCSPChecker`) also has
its peer's certificates without a CRL status looked up over OCSP while the engine holds the
server's Finished back (``TLSConfig.peer_status_check``; TLS and DTLS): REVOKED ends the
handshake with ``certificate_revoked``, ``require`` without a good answer with ``certificate_unknown``.  Entity B may hold several
Association Configurations (one per authorised Entity A): the certificate is
checked against each, and when none accepts it the most specific failure is
reported (a failure after the identifier matched wins over IDENTIFIER_MISMATCH,
which wins over WRONG_FLAVOUR).

Provisioned Symmetric Key SAEF (8.2.2.1): suites of 10.2.2, ``psk_identity`` =
KpsaID, ``psk`` = Kpsa.  Entity B looks the KpsaID up in a
:class:`~m2msec.saef.config.KpsaDirectory` (memory or store); an unknown
KpsaID aborts the handshake with UNKNOWN_PSK_IDENTITY, a wrong Kpsa with
PSK_MISMATCH.

:func:`combined_server` joins a PSK and a certificate server endpoint into one
listener (10.2.1: the client's cipher suite picks the framework).

Either side can be (D)TLS client or server (8.2.1: SA2 reverses the roles), and
:func:`connect`, :func:`connect_dtls`, :func:`serve`, :func:`serve_dtls` run the
handshake over asyncio TCP/UDP and hand out the bound context.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cryptography import x509

from m2msec.pki import (
    CertificateFlavour,
    CertificateVerificationError,
    RevocationPolicy,
    VerificationReason,
    VerifiedPeer,
)
from m2msec.saef.config import (
    AssociationConfiguration,
    CredentialConfiguration,
    EntityRole,
    KpsaDirectory,
    KpsaEntry,
    check_kpsa_id,
)
from m2msec.saef.context import SAEFError, SecurityContext, credential_id
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.tls.aio import TLSStreamWriter, open_connection, start_server
from m2msec.tls.dtls import DTLSServer, DTLSSession, open_dtls_connection, start_dtls_server
from m2msec.tls.engine import PSKCredentials, Role, TLSConfig, TLSContext, TLSEngine
from m2msec.tls.pkiverify import Clock, PKIVerifyHook, StaplePolicy, staple_check
from m2msec.tls.profiles import Transport

__all__ = [
    "SAEFEndpoint",
    "certificate_client",
    "certificate_server",
    "combined_server",
    "connect",
    "connect_dtls",
    "psk_client",
    "psk_server",
    "serve",
    "serve_dtls",
]

log = logging.getLogger(__name__)

_GENERIC = (VerificationReason.IDENTIFIER_MISMATCH, VerificationReason.WRONG_FLAVOUR)


class SAEFEndpoint:
    """One side of an SAEF: TLS context + identity binding."""

    def __init__(self, framework: str, local_role: EntityRole, config: TLSConfig,
                 binder: Callable[[TLSEngine], SecurityContext]) -> None:
        self.framework = framework
        self.local_role = local_role
        self.tls_context = TLSContext(config)
        self.tls_context.saef_endpoint = self  # type: ignore[attr-defined]  # serve() binds with the accepting endpoint
        self._binder = binder

    def __repr__(self) -> str:
        c = self.tls_context.config
        return (f"SAEFEndpoint({self.framework}, entity={self.local_role.value}, role={c.role.value}, "
                f"transport={c.transport.value})")

    @property
    def role(self) -> Role:
        return self.tls_context.config.role

    @property
    def transport(self) -> Transport:
        return self.tls_context.config.transport

    def engine(self, *, server_name: str | None = None) -> TLSEngine:
        """A fresh sans-I/O engine for one connection."""
        return TLSEngine(self.tls_context, server_name=server_name)

    def bind(self, engine: TLSEngine) -> SecurityContext:
        """The security context of an established engine, bound to the peer identity."""
        if not engine.established and not engine.handshake_complete:
            raise SAEFError("the handshake has not completed")
        return self._binder(engine)


# ------------------------------------------------------------------ certificate-based (8.2.2.2)


class _AssociationVerifier:
    """``verify_peer`` hook trying each Association Configuration; returns (association, VerifiedPeer).

    ``status_checks`` (server endpoints): an association's ``peer_ocsp`` checker supplies the
    hook's OCSP store and policy (``require`` is decided after the OCSP queries, by
    :class:`_AssociationStatusCheck`); elsewhere its held answers are only a second status source.
    """

    def __init__(self, associations: Sequence[AssociationConfiguration], clock: Clock, *,
                 status_checks: bool = False) -> None:
        self.hooks = [(a, self._hook(a, clock, status_checks)) for a in associations]

    @staticmethod
    def _hook(a: AssociationConfiguration, clock: Clock, status_checks: bool) -> PKIVerifyHook:
        ocsp = a.peer_ocsp
        policy = ocsp.hook_policy() if ocsp is not None and status_checks else a.revocation
        return PKIVerifyHook(a.peer_cert, a.peer_root_of_trust, clock, crls=a.peer_crls, revocation=policy,
                             ocsp=ocsp.store if ocsp is not None else None)

    def __call__(self, chain: list[x509.Certificate]) -> tuple[AssociationConfiguration, VerifiedPeer]:
        errors: list[CertificateVerificationError] = []
        for assoc, hook in self.hooks:
            try:
                return assoc, hook(chain)
            except CertificateVerificationError as exc:
                errors.append(exc)
        specific = [e for e in errors if e.reason_code not in _GENERIC]
        if specific:
            raise specific[0]
        mismatch = [e for e in errors if e.reason_code is VerificationReason.IDENTIFIER_MISMATCH]
        raise (mismatch or errors)[0]


class _AssociationStatusCheck:
    """``TLSConfig.peer_status_check`` of a certificate server: the OCSP check of the association
    that accepted the peer's certificate (None when it has no ``peer_ocsp``)."""

    def __init__(self, associations: Sequence[AssociationConfiguration]) -> None:
        self.associations = tuple(associations)

    def __call__(self, peer_verification: Any) -> Awaitable[None] | None:
        if isinstance(peer_verification, tuple) and len(peer_verification) == 2 \
                and isinstance(peer_verification[0], AssociationConfiguration):
            assoc, vp = peer_verification
            return assoc.peer_ocsp.status_check(vp) if assoc.peer_ocsp is not None else None
        # a certificate handshake no association verified: a require checker refuses it
        for a in self.associations:
            if a.peer_ocsp is not None and a.peer_ocsp.policy is RevocationPolicy.REQUIRE:
                return a.peer_ocsp.status_check(None)  # raises (REVOCATION_UNKNOWN)
        return None


def _cert_binder(local: EntityRole) -> Callable[[TLSEngine], SecurityContext]:
    def bind(engine: TLSEngine) -> SecurityContext:
        result = engine.peer_verification
        if not (isinstance(result, tuple) and len(result) == 2):
            raise SAEFError("the peer certificate was not verified against an Association Configuration")
        assoc, vp = result
        assert isinstance(assoc, AssociationConfiguration) and isinstance(vp, VerifiedPeer)
        cred = credential_id(vp.flavour.value, vp.identifier)
        peer_id = assoc.peer_id
        if peer_id is None:
            # 8.2.2.2: the Absolute AE-ID of an AE-ID certificate, else the Credential-ID (10.4)
            peer_id = vp.identifier if vp.flavour is CertificateFlavour.AE_ID else cred
        return SecurityContext(
            framework="certificate", local_role=local, tls_role=engine.role, transport=engine.transport,
            peer_id=peer_id, credential_id=cred, peer_kind=assoc.peer_kind, local_id=assoc.local_id,
            peer_cert=assoc.peer_cert, verified_peer=vp, cipher=engine.cipher_name,
            protocol=engine.protocol_version, sni=engine.sni, _engine=engine,
        )

    return bind


def _anchors(associations: Sequence[AssociationConfiguration]) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    for a in associations:
        for c in a.peer_root_of_trust:
            if c not in out:
                out.append(c)
    return tuple(out)


def certificate_client(credentials: CredentialConfiguration, association: AssociationConfiguration, *,
                       clock: Clock, transport: Transport = Transport.TLS, server_name: str | None = None,
                       mtu: int | None = None, ocsp_staple: StaplePolicy | str = StaplePolicy.OFF) -> SAEFEndpoint:
    """The (D)TLS client of a Certificate-Based SAEF (Entity A for SA1, Entity B for SA2).

    SNI defaults to CertNameB's identifier for CSE-ID / FQDN certificates.  ``ocsp_staple``
    (TS-0003 8.1.2.2, RFC 6066 8; profile P23): ``"if-present"`` asks for the server's stapled
    OCSP response and refuses a REVOKED or unverifiable one, ``"require"`` also refuses a
    handshake without a verified GOOD staple (alert bad_certificate_status_response,
    ``BAD_CERTIFICATE_STATUS``); a device that cannot reach the responder learns the status this way.
    """
    if server_name is None and association.peer_cert.flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
        server_name = association.peer_cert.identifier
    kw: dict[str, Any] = {"mtu": mtu} if mtu else {}
    check = staple_check(ocsp_staple, clock)
    if check is not None:
        kw["check_ocsp_staple"] = check
    config = TLSConfig(role=Role.CLIENT, transport=transport, credentials=credentials.tls_credentials(),
                       trust_anchors=_anchors([association]), verify_peer=_AssociationVerifier([association], clock),
                       verify_peer_authoritative=True, server_name=server_name, **kw)
    return SAEFEndpoint("certificate", association.local, config, _cert_binder(association.local))


def certificate_server(credentials: CredentialConfiguration, associations: Sequence[AssociationConfiguration], *,
                       clock: Clock, transport: Transport = Transport.TLS, mtu: int | None = None,
                       ocsp_staple: Callable[[x509.Certificate], bytes | None] | None = None) -> SAEFEndpoint:
    """The (D)TLS server of a Certificate-Based SAEF: accepts any configured peer.

    ``ocsp_staple``: the source of the OCSP response stapled for the server's own certificate
    to a client that asks (RFC 6066 8; e.g. :meth:`m2msec.pki.ocsp_staple.OCSPStapler.staple`)."""
    associations = list(associations)
    if not associations:
        raise ValueError("configure at least one Association Configuration")
    local = associations[0].local
    if any(a.local is not local for a in associations):
        raise ValueError("all Association Configurations of one endpoint must belong to the same entity")
    kw: dict[str, Any] = {"mtu": mtu} if mtu else {}
    checks = any(a.peer_ocsp is not None for a in associations)
    if checks:  # the engine holds the final flight for the OCSP queries (TLS and DTLS)
        kw["peer_status_check"] = _AssociationStatusCheck(associations)
    if ocsp_staple is not None:
        kw["ocsp_staple"] = ocsp_staple
    config = TLSConfig(role=Role.SERVER, transport=transport, credentials=credentials.tls_credentials(),
                       trust_anchors=_anchors(associations),
                       verify_peer=_AssociationVerifier(associations, clock, status_checks=checks),
                       verify_peer_authoritative=True, **kw)
    return SAEFEndpoint("certificate", local, config, _cert_binder(local))


# ------------------------------------------------------------------ provisioned symmetric key (8.2.2.1)


def psk_client(entry: KpsaEntry, *, id_b: str | None = None, id_a: str | None = None,
               transport: Transport = Transport.TLS, server_name: str | None = None,
               local_role: EntityRole = EntityRole.A, mtu: int | None = None) -> SAEFEndpoint:
    """Entity A of a PSK SAEF: psk_identity = KpsaID, psk = Kpsa; the context is bound to IdB.

    IdB is ``id_b`` or, if not given, ``entry.peer_id``.
    """
    peer = id_b or entry.peer_id
    if not peer:
        raise ValueError("Entity A must be configured with IdB (8.2.2.1)")
    kw: dict[str, Any] = {"mtu": mtu} if mtu else {}
    config = TLSConfig(role=Role.CLIENT, transport=transport,
                       psk=PSKCredentials(entry.kpsa_id.encode("utf-8"), entry.kpsa), server_name=server_name, **kw)

    def bind(engine: TLSEngine) -> SecurityContext:
        return SecurityContext(
            framework="psk", local_role=local_role, tls_role=engine.role, transport=engine.transport, peer_id=peer,
            credential_id=credential_id("kpsa", entry.kpsa_id), peer_kind=entry.peer_kind, local_id=id_a,
            psk_identity=entry.kpsa_id, cipher=engine.cipher_name, protocol=engine.protocol_version,
            sni=engine.sni, _engine=engine,
        )

    return SAEFEndpoint("psk", local_role, config, bind)


def _decode_kpsa_id(identity: bytes) -> str | None:
    try:
        text = identity.decode("utf-8")
        check_kpsa_id(text)
    except (UnicodeDecodeError, ValueError):
        return None
    return text


def psk_server(directory: KpsaDirectory, *, id_b: str | None = None, transport: Transport = Transport.TLS,
               local_role: EntityRole = EntityRole.B, identity_hint: bytes | None = None,
               mtu: int | None = None, prefetch: Callable[[str], Awaitable[object]] | None = None) -> SAEFEndpoint:
    """Entity B of a PSK SAEF: looks the client's KpsaID up in ``directory``.

    The context is bound to the identity configured for that KpsaID, or to the
    Credential-ID ``12-<KpsaID>`` when none is configured (8.2.2.1).

    ``prefetch(kpsa_id)`` (TLS and DTLS) runs on the event loop when the client's
    ClientKeyExchange arrived and before the PSK callback asks ``directory``: a directory
    whose keys come over the network (the MAF-based SAEF, 8.2.2.3) fills its cache there
    instead of blocking the loop in the callback (``TLSConfig.psk_prefetch``).
    """

    def lookup(identity: bytes, _sni: str | None) -> bytes | None:
        kid = _decode_kpsa_id(identity)
        if kid is None:
            return None
        entry = directory.lookup(kid)
        return entry.kpsa if entry is not None else None

    kw: dict[str, Any] = {"mtu": mtu} if mtu else {}
    if prefetch is not None:
        def psk_prefetch(identity: bytes) -> Awaitable[object] | None:
            kid = _decode_kpsa_id(identity)
            return prefetch(kid) if kid is not None else None

        kw["psk_prefetch"] = psk_prefetch
    config = TLSConfig(role=Role.SERVER, transport=transport, psk_lookup=lookup, psk_identity_hint=identity_hint, **kw)

    def bind(engine: TLSEngine) -> SecurityContext:
        kid = _decode_kpsa_id(engine.psk_identity or b"")
        entry = directory.lookup(kid) if kid is not None else None
        if kid is None or entry is None:
            raise SAEFError("the KpsaID of this session is no longer configured")
        cred = credential_id("kpsa", kid)
        return SecurityContext(
            framework="psk", local_role=local_role, tls_role=engine.role, transport=engine.transport,
            peer_id=entry.peer_id or cred, credential_id=cred, peer_kind=entry.peer_kind, local_id=id_b,
            psk_identity=kid, cipher=engine.cipher_name, protocol=engine.protocol_version, sni=engine.sni,
            _engine=engine,
        )

    return SAEFEndpoint("psk", local_role, config, bind)


def combined_server(psk: SAEFEndpoint, certificate: SAEFEndpoint) -> SAEFEndpoint:
    """One (D)TLS server accepting both the PSK and the Certificate-Based SAEF.

    ``psk`` from :func:`psk_server`, ``certificate`` from :func:`certificate_server`
    (same entity, role and transport).  The client's choice of cipher suite decides
    the framework (10.2.1: a server may offer all profile suites); a handshake that
    ended with a PSK identity is bound like ``psk``, any other like ``certificate``.
    """
    pc, cc = psk.tls_context.config, certificate.tls_context.config
    if pc.role is not Role.SERVER or cc.role is not Role.SERVER:
        raise ValueError("combined_server joins two server endpoints")
    if pc.transport is not cc.transport or psk.local_role is not certificate.local_role:
        raise ValueError("the PSK and certificate endpoints must have the same transport and entity")
    if psk.framework != "psk" or certificate.framework != "certificate":
        raise ValueError("combined_server(psk=<psk_server>, certificate=<certificate_server>)")
    config = dataclasses.replace(cc, psk_lookup=pc.psk_lookup, psk_identity_hint=pc.psk_identity_hint,
                                 psk_prefetch=pc.psk_prefetch)

    def bind(engine: TLSEngine) -> SecurityContext:
        return (psk if engine.psk_identity is not None else certificate).bind(engine)

    return SAEFEndpoint("psk+certificate", psk.local_role, config, bind)


# ------------------------------------------------------------------ asyncio helpers


async def connect(endpoint: SAEFEndpoint, host: str, port: int, *, server_name: str | None = None,
                  timeout: float = 10.0) -> tuple[asyncio.StreamReader, TLSStreamWriter, SecurityContext]:
    """TLS: connect, run the Association Security Handshake, bind the context."""
    reader, writer = await open_connection(host, port, endpoint.tls_context, server_name=server_name, timeout=timeout)
    try:
        ctx = endpoint.bind(writer.engine)
    except BaseException:
        writer.close()
        raise
    return reader, writer, ctx


async def connect_dtls(endpoint: SAEFEndpoint, host: str, port: int, *, server_name: str | None = None,
                       timeout: float = 10.0) -> tuple[DTLSSession, SecurityContext]:
    """DTLS: as :func:`connect` over UDP."""
    session = await open_dtls_connection(host, port, endpoint.tls_context, server_name=server_name, timeout=timeout)
    try:
        ctx = endpoint.bind(session.engine)
    except BaseException:
        session.close()
        raise
    return session, ctx


StreamHandler = Callable[[asyncio.StreamReader, TLSStreamWriter, SecurityContext], Awaitable[Any]]
DatagramHandler = Callable[[DTLSSession, SecurityContext], Awaitable[Any]]
ErrorHandler = Callable[[BaseException, Any], None]


async def serve(endpoint: SAEFEndpoint | Callable[[], SAEFEndpoint], handler: StreamHandler,
                host: str = "127.0.0.1", port: int = 0, *,
                on_error: ErrorHandler | None = None, handshake_timeout: float = 10.0,
                limits: ConnectionLimits | ConnectionGate | None = None) -> asyncio.Server:
    """TLS server: ``handler(reader, writer, ctx)`` runs for each bound security association.

    ``limits``: the open-connection limits of the listener (:mod:`m2msec.net.connlimits`; None:
    the defaults); a connection over them is aborted before the handshake, ``on_error`` not called.

    ``endpoint`` may be a zero-argument callable returning the endpoint: it is asked for each
    accepted connection (a reloaded configuration applies to new associations; an established
    one keeps the endpoint, and the identity binding, it was accepted with)."""
    current: Callable[[], SAEFEndpoint] = endpoint if callable(endpoint) and not isinstance(endpoint, SAEFEndpoint) \
        else (lambda: endpoint)  # type: ignore[assignment,return-value]

    def context() -> Any:
        return current().tls_context

    def failed(exc: BaseException, peer: Any) -> None:
        if on_error is not None:
            on_error(exc, peer)
        else:
            log.info("SAEF handshake with %s failed: %s", peer, exc)

    async def run(reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        ep = getattr(writer.engine.context, "saef_endpoint", None)
        try:
            if not isinstance(ep, SAEFEndpoint):
                raise SAEFError("the TLS context of this connection belongs to no SAEF endpoint")
            ctx = ep.bind(writer.engine)
        except SAEFError as exc:
            failed(exc, writer.get_extra_info("peername"))
            return
        await handler(reader, writer, ctx)

    return await start_server(run, host, port, context,
                              on_handshake_error=lambda e, p: failed(e, p), handshake_timeout=handshake_timeout,
                              limits=limits)


async def serve_dtls(endpoint: SAEFEndpoint, handler: DatagramHandler, host: str = "127.0.0.1", port: int = 0, *,
                     on_error: ErrorHandler | None = None, handshake_timeout: float = 10.0) -> DTLSServer:
    """DTLS server: ``handler(session, ctx)`` runs for each bound security association."""

    def failed(exc: BaseException, peer: Any) -> None:
        if on_error is not None:
            on_error(exc, peer)
        else:
            log.info("SAEF DTLS handshake with %s failed: %s", peer, exc)

    async def run(session: DTLSSession) -> None:
        try:
            ctx = endpoint.bind(session.engine)
        except SAEFError as exc:
            failed(exc, session.addr)
            return
        await handler(session, ctx)

    return await start_dtls_server(run, host, port, endpoint.tls_context, handshake_timeout=handshake_timeout,
                                   on_handshake_error=lambda e, a: failed(e, a))

