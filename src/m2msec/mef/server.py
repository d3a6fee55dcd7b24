"""The M2M Enrolment Function server (TS-0003 8.3.2.1, 8.3.2.2, 10.3.1, 10.3.4, 10.7).

One TLS 1.2 listener serves both RSPFs and MEF Key Retrieval:

* Bootstrap Security Handshake, Pre-Provisioned Symmetric Key RSPF (8.3.2.1):
  TLS-PSK (10.2.2 suites), ``psk_identity`` = KpmID, ``psk`` = Kpm from the store;
* Bootstrap Security Handshake, Certificate-Based RSPF (8.3.2.2): mutual
  certificate TLS (10.2.3 suites); the enrolee's certificate is verified per
  8.1.2.5 (:mod:`m2msec.tls.pkiverify`) against the certificate information
  configured for it - a certificate no enrolee/target is configured for aborts
  the handshake; with ``MEFState.enrolee_ocsp`` (mef.toml ``enrolee_ocsp``) its status may
  also come from an OCSP query made while the MEF's Finished is held back
  (:mod:`m2msec.pki.ocsp_check`, 8.1.2.2): REVOKED aborts with ``certificate_revoked``;
* Bootstrap Security Handshake, GBA-Based RSPF (8.3.2.3, profile): TLS-PSK with the
  MEF as GBA NAF - hint ``3GPP-bootstrapping``, ``psk_identity`` = ``3GPP-bootstrapping.<B-TID>``,
  ``psk`` = Ks_NAF from the BSF over Zn (:mod:`m2msec.mef.gba`, ``gba=``);
* Enrolment Key Generation: Ke/RelativeKeID exported with
  ``EXPORTER-oneM2M-Bootstrap`` (10.3.1), KeID = hex@MEF-FQDN (10.3.4), and
  Kre/RelativeKreID with ``EXPORTER-oneM2M-Bootstrap-Reauth`` (profile);
* Enrolment Exchange: ``POST /enrolment`` (tables 8.3.2.1-1 to -4, seed 8.3.3.1);
  everything the response reports is committed in one store transaction before
  the response is written;
* Certificate Enrolment (8.3.6, seed 8.3.3.3): with ``est`` (:class:`~m2msec.mef.est.ESTService`)
  the EST resources under ``/.well-known/est/`` and ``POST /enrolment/complete`` are
  served on the same session, and the CertificateEnrolment instruction carries a
  one-time challengePassword;
* MEF Key Retrieval: ``GET /fetchCredentials/<KeID>/<SUID>`` (tables 8.3.2.1-5/-6)
  from an Enrolment Target authenticated by a pre-configured PSK, a certificate,
  or its own Kre (an enrolled Enrolee B); the X-M2M-Origin must be the identity
  the handshake authenticated and must be granted that SUID for that enrolee.

Established certificate sessions (TS-0003 8.1.2.2, :mod:`m2msec.pki.session_status`): before
each request the session's validated path is held against the current enrolee CRLs and held
OCSP answers (re-checked only after either changed) and - for the certificates this MEF's EST
CA issued - against the MEF's own revocation records (``enrolee revoke``, ``est-revoke``; no
CRL needed; re-checked only after a revocation was recorded: at once in this process,
on PostgreSQL when the store notification arrives, on SQLite within ``own_revocation_poll``
seconds, default 1; :mod:`m2msec.mef.revocation_watch`); a certificate revoked since the
handshake gets ORIGINATOR_NOT_AUTHENTICATED (4106, HTTP 403, ``Connection: close``, audited)
and the connection is closed.  PSK sessions (Kpm, a target's PSK, Kre, GBA Ks_NAF) look their
PSK identity up again before each request and end the same way when the key is gone, expired
or no longer the one the handshake used (``enrolee revoke`` deletes the enrolee's Kre: its open
re-authentication session can fetch nothing more).

Connection limits (:mod:`m2msec.net.connlimits`, ``limits``): a TCP connection beyond the
listener's open-connection limits is aborted before the handshake; ``handshake_errors`` keeps
the latest ``max_records`` failures (a long-running MEF does not grow with a flood of them).

HTTP/1.1 is framed by h11; the wire format is in ``docs/mef-protocol.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import h11
from cryptography import x509

from m2msec.errors import M2MSecError, ParseError
from m2msec.keys import LABEL_BOOTSTRAP, LABEL_BOOTSTRAP_REAUTH, ke_id, kre_id, split_exported
from m2msec.mef.protocol import (
    ENROLMENT_PATH,
    CertificateEnrolmentHook,
    FETCH_PREFIX,
    EnrolmentRequest,
    EnrolmentResponse,
    FetchFailure,
    FetchSuccess,
    credential_for,
    decide,
    grants_allow,
    parse_fetch_target,
)
from m2msec.mef.gba import PSK_IDENTITY_HINT as GBA_PSK_IDENTITY_HINT
from m2msec.mef.gba import GBANaf
from m2msec.mef.est import COMPLETE_PATH, EST_PREFIX, ESTService
from m2msec.mef.revocation_watch import DEFAULT_POLL_S, OwnRevocationWatch
from m2msec.mef.state import MEFError, MEFState, SessionPeer
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.net.h11io import next_cycle, read_request, write_response
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateVerificationError, VerificationReason, VerifiedPeer
from m2msec.pki.session_status import SessionStatus, SessionStatusGuard
from m2msec.tls.aio import TLSStreamWriter, start_server
from m2msec.tls.engine import CertCredentials, Role, TLSConfig, TLSContext, TLSEngine
from m2msec.tls.pkiverify import PKIVerifyHook, tls_alert_for

__all__ = ["MEFServer"]

log = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024
JSON = "application/json"


class _CertVerifier:
    """``verify_peer`` hook: the certificate must match a configured enrolee or target (8.1.2.5)."""

    def __init__(self, state: MEFState) -> None:
        self.state = state

    def __call__(self, chain: list[x509.Certificate]) -> tuple[SessionPeer, VerifiedPeer]:
        if not chain:
            raise CertificateVerificationError(VerificationReason.MALFORMED, "no peer certificate")
        candidates = self.state.cert_candidates(chain[0])
        if not candidates:
            raise CertificateVerificationError(VerificationReason.IDENTIFIER_MISMATCH,
                                               "no enrolee or Enrolment Target is configured for this certificate")
        errors: list[CertificateVerificationError] = []
        for peer, info, anchors in candidates:
            if not anchors:
                continue
            try:
                ocsp = self.state.enrolee_ocsp  # its store is a second source; its query runs after the handshake
                verified = PKIVerifyHook(info, anchors, self.state.clock, crls=self.state.enrolee_crls,
                                         revocation=ocsp.hook_policy() if ocsp is not None else self.state.revocation,
                                         ocsp=ocsp.store if ocsp is not None else None)(chain)
            except CertificateVerificationError as exc:
                errors.append(exc)
                continue
            revoked = self.state.revoked_certificate(chain[0])  # this MEF's own EST CA: no CRL needed
            if revoked is not None:
                exc = CertificateVerificationError(
                    VerificationReason.REVOKED,
                    f"certificate {revoked['serial']} was revoked by this MEF ({revoked.get('reason') or 'unspecified'})")
                exc.tls_alert = tls_alert_for(VerificationReason.REVOKED)  # type: ignore[attr-defined]
                raise exc
            return peer, verified
        if errors:
            raise errors[0]
        raise CertificateVerificationError(VerificationReason.UNTRUSTED_ROOT, "no trust anchor configured")


class MEFServer:
    """MEF over TLS 1.2; PSK and/or certificate mode.  ``credentials`` enable the certificate RSPF."""

    def __init__(self, state: MEFState, *, credentials: CertCredentials | None = None,
                 certificate_hook: CertificateEnrolmentHook | None = None, handshake_timeout: float = 10.0,
                 gba: GBANaf | None = None, est: ESTService | None = None,
                 ocsp_staple: Callable[[x509.Certificate], bytes | None] | None = None,
                 own_revocation_poll: float = DEFAULT_POLL_S, limits: ConnectionLimits | None = None,
                 max_records: int = 1000) -> None:
        """``ocsp_staple``: the source of the OCSP response stapled for the MEF certificate (RFC 6066 8,
        e.g. :meth:`m2msec.pki.ocsp_staple.OCSPStapler.staple`; certificate handshakes only).
        ``own_revocation_poll``: SQLite store, the longest an EST certificate revocation committed by
        another process stays unseen by established sessions (:mod:`m2msec.mef.revocation_watch`)."""
        self.state = state
        self.est = est  # Certificate Enrolment with EST (m2msec.mef.est)
        self.gba = gba  # GBA-Based RSPF: the MEF as NAF (m2msec.mef.gba)
        self.certificate_hook = certificate_hook  # extension point for EST (F9)
        #: the latest failed handshakes (at most ``max_records``)
        self.handshake_errors: list[BaseException] = []
        self.max_records = max_records
        #: open connections of the listener (limits, counters of refusals)
        self.connections = ConnectionGate(limits, name=f"MEF {state.fqdn}")
        self._server: asyncio.Server | None = None
        self._timeout = handshake_timeout
        kw: dict[str, Any] = {}
        if credentials is not None:
            if not state.enrolee_anchors:
                raise ValueError("the certificate RSPF needs enrolee trust anchors")
            kw = {"credentials": credentials, "trust_anchors": tuple(state.enrolee_anchors),
                  "verify_peer": _CertVerifier(state), "verify_peer_authoritative": True,
                  "ocsp_staple": ocsp_staple,
                  "peer_status_check": state.enrolee_ocsp.status_check if state.enrolee_ocsp else None}
        #: the MEF's own EST certificate revocations, for established certificate sessions
        self.own_revocations = OwnRevocationWatch(state, poll_interval=own_revocation_poll)
        #: the current status of established certificate sessions (m2msec.pki.session_status)
        self.session_guard = SessionStatusGuard(
            crls=state.enrolee_crls, ocsp=state.enrolee_ocsp.store if state.enrolee_ocsp else None, clock=state.clock,
            extra=(self.own_revocations,) if credentials is not None else ())
        if gba is not None:
            kw["psk_identity_hint"] = GBA_PSK_IDENTITY_HINT  # TS 33.222: "3GPP-bootstrapping"
        self.tls_context = TLSContext(TLSConfig(role=Role.SERVER, psk_lookup=self._psk_lookup, **kw))

    def __repr__(self) -> str:
        return f"MEFServer(fqdn={self.state.fqdn!r}, listening={self._server is not None})"

    def _psk_lookup(self, identity: bytes, _sni: str | None) -> bytes | None:
        if self.gba is not None and self.gba.handles(identity):
            return self.gba.psk_for(identity)  # Ks_NAF over Zn
        try:
            text = identity.decode("utf-8")
        except UnicodeDecodeError:
            return None
        hit = self.state.psk_lookup(text)
        return hit[0] if hit is not None else None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        if self.session_guard.extra:
            # PostgreSQL: revocations by other processes are pushed once the listener is connected
            # (until then every certificate session's request looks its certificate up)
            await asyncio.to_thread(self.own_revocations.wait_ready, 5.0)
        self._server = await start_server(self._connection, host, port, self.tls_context,
                                          on_handshake_error=lambda e, _p: self._handshake_failed(e),
                                          handshake_timeout=self._timeout, limits=self.connections)
        return self.address

    def _handshake_failed(self, exc: BaseException) -> None:
        errors = self.handshake_errors
        errors.append(exc)
        if len(errors) > self.max_records:
            del errors[: len(errors) - self.max_records]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.own_revocations.close()

    async def __aenter__(self) -> MEFServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- session identity ------------------------------------------------------------------
    def session_peer(self, engine: TLSEngine) -> SessionPeer | None:
        pv = engine.peer_verification
        if isinstance(pv, tuple) and len(pv) == 2 and isinstance(pv[0], SessionPeer):
            return pv[0]
        ident = engine.psk_identity
        if ident and self.gba is not None and self.gba.handles(ident):
            return self.gba.peer_for(ident)
        if ident:
            hit = self.state.psk_lookup(ident.decode("utf-8", "replace"))
            return hit[1] if hit is not None else None
        return None

    # -- HTTP ------------------------------------------------------------------------------
    def session_status(self, engine: TLSEngine) -> SessionStatus | None:
        """The status of a certificate session's path, asked before each request (None: PSK/GBA session)."""
        pv = engine.peer_verification
        if isinstance(pv, tuple) and len(pv) == 2 and isinstance(pv[1], VerifiedPeer):
            return self.session_guard.session(pv[1])
        return None

    def psk_session_ended(self, engine: TLSEngine) -> str | None:
        """Why a PSK session may not go on: the key behind its PSK identity is no longer the one
        its handshake used (removed, expired or replaced since: a revoked enrolee's Kre, a GBA
        key past its lifetime), else None.  One look-up, as at the handshake."""
        identity, used = engine.psk_identity, engine.psk_digest
        if not identity or used is None:
            return "its pre-shared key is not known"
        now = self._psk_lookup(identity, None)
        if now is None:
            return "its pre-shared key has been removed or has expired"
        if not hmac.compare_digest(hashlib.sha256(now).digest(), used):
            return "its pre-shared key has been replaced"
        return None

    async def _connection(self, reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        peer = self.session_peer(writer.engine)
        cert_status = self.session_status(writer.engine)  # None for PSK sessions
        psk_session = cert_status is None and writer.engine.psk_identity is not None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        while True:
            try:
                req, body = await read_request(conn, reader, _MAX_BODY, too_large="body too large")
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, writer, RSC.BAD_REQUEST, None, FetchFailure(f"HTTP framing: {exc}").to_json())
                return
            if req is None:
                return
            rqi = _header(req.headers, b"x-m2m-ri")
            path = req.target.decode("latin-1").split("?", 1)[0]
            why = None
            if cert_status is not None and (why := cert_status.revoked()) is not None:
                # revoked since the handshake (a refreshed CRL, a held OCSP answer): refuse and close
                msg = f"the certificate of this session has been revoked: {why}"
            elif psk_session and (why := self.psk_session_ended(writer.engine)) is not None:
                # its key removed or replaced since the handshake (enrolee revoke, expiry): refuse, close
                msg = f"this session has ended: {why}"
            if why is not None:
                log.info("MEF session of %s refused and closed: %s", peer.identity if peer else "?", why)
                self.state.audit("request", peer.identity if peer else "?", "refused",
                                 {"path": path[:120], "rsc": int(RSC.ORIGINATOR_NOT_AUTHENTICATED), "why": msg})
                await self._send(conn, writer, RSC.ORIGINATOR_NOT_AUTHENTICATED, rqi, FetchFailure(msg).to_json(),
                                 extra=(("Connection", "close"),))
                return
            if self.est is not None and path.startswith(EST_PREFIX):
                chain = writer.engine.peer_certificate_chain()
                ctype = _header(req.headers, b"content-type")
                est = self.est.handle(req.method.decode("latin-1"), path, body, peer, chain[0] if chain else None,
                                      content_type=ctype)
                await self._send(conn, writer, est.rsc, rqi, est.body, content_type=est.content_type,
                                 status=est.status, extra=est.extra_headers)
            else:
                rsc, payload = self._dispatch(req, body, peer, writer.engine)
                await self._send(conn, writer, rsc, rqi, payload)
            if not next_cycle(conn):
                return

    async def _send(self, conn: h11.Connection, writer: TLSStreamWriter, rsc: RSC, rqi: str | None,
                    body: bytes, *, content_type: str = JSON, status: int | None = None,
                    extra: Sequence[tuple[str, str]] = ()) -> None:
        headers = [(b"Content-Type", content_type.encode()), (b"Content-Length", str(len(body)).encode()),
                   (b"X-M2M-RSC", str(int(rsc)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra]
        if rqi:
            headers.append((b"X-M2M-RI", rqi.encode("latin-1")))
        await write_response(conn, writer, status if status is not None else rsc.http_status, headers, body)

    def _dispatch(self, req: h11.Request, body: bytes, peer: SessionPeer | None,
                  engine: TLSEngine) -> tuple[RSC, bytes]:
        target = req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        method = req.method.decode("latin-1")
        try:
            if peer is None:
                raise MEFError("the session is not bound to a configured entity", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
            if path == COMPLETE_PATH and self.est is not None:
                if method != "POST":
                    raise MEFError("use POST to report enrolment success", rsc=RSC.OPERATION_NOT_ALLOWED)
                return RSC.OK, self.est.complete(body, peer)
            if path == ENROLMENT_PATH:
                if method != "POST":
                    raise MEFError("use POST for the Enrolment Exchange", rsc=RSC.OPERATION_NOT_ALLOWED)
                return RSC.OK, self._enrol(body, peer, engine)
            if path.startswith(FETCH_PREFIX):
                if method != "GET":
                    raise MEFError("use GET for MEF Key Retrieval", rsc=RSC.OPERATION_NOT_ALLOWED)
                return RSC.OK, self._fetch(target, _header(req.headers, b"x-m2m-origin"), peer)
            raise MEFError(f"no such MEF resource {path[:60]!r}", rsc=RSC.NOT_FOUND)
        except M2MSecError as exc:
            who = peer.identity if peer else "?"
            self.state.audit("request", who, "refused", {"path": path[:120], "rsc": int(exc.rsc), "why": exc.args[0]})
            return exc.rsc, FetchFailure(exc.args[0]).to_json()
        except Exception as exc:  # noqa: BLE001 - no stack trace to the peer
            log.exception("MEF request failed")
            return RSC.INTERNAL_SERVER_ERROR, FetchFailure(type(exc).__name__).to_json()

    # -- Enrolment Exchange (8.3.2.1, seed 8.3.3.1) ------------------------------------------
    def _enrol(self, body: bytes, peer: SessionPeer, engine: TLSEngine) -> bytes:
        if peer.kind not in ("enrolee", "reauth"):
            raise MEFError("an Enrolment Target session cannot run the Enrolment Exchange",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        request = EnrolmentRequest.from_json(body)
        cfg = self.state.get_enrolee(peer.identity)
        if cfg.revoked:
            raise MEFError("this enrolee is revoked", rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        ke, rel_ke = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP, 48))
        kre, rel_kre = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP_REAUTH, 48))
        kid, rid = ke_id(rel_ke, self.state.fqdn), kre_id(rel_kre, self.state.fqdn)
        expiry = self.state.clock() + timedelta(seconds=cfg.expiry_seconds)
        hook = self.certificate_hook
        pending = None
        if self.est is not None and request.certificate_enrolment:
            pending = self.est.prepare(cfg.enrolee_id, kid, expiry)  # instruction + one-time challengePassword
            if pending is not None:
                hook = pending.hook
        decision = decide(cfg.preferences, request, expiry, certificate_hook=hook)
        self.state.commit_enrolment(enrolee_id=cfg.enrolee_id, ke_id=kid, ke=ke, kre_id=rid, kre=kre,
                                    token=request.token, token_required=cfg.token_required,
                                    grants=decision.grants, expires_at=expiry, credential=peer.credential,
                                    also=pending.store if pending is not None else None)
        return EnrolmentResponse(kid, rid, cfg.enrolee_id, expiry, decision.instructions,
                                 decision.direct_keys).to_json()

    # -- MEF Key Retrieval (8.3.2.1 "Use of Remotely Provisioned Credential") ----------------
    def _fetch(self, target: str, origin: str | None, peer: SessionPeer) -> bytes:
        if peer.kind not in ("target", "reauth"):
            raise MEFError("a bootstrap (Kpm / enrolee certificate) session cannot fetch credentials",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        if not origin:
            raise ParseError("X-M2M-Origin (the Enrolment Target's ID) is missing")
        if origin != peer.identity:
            raise MEFError(f"originator {origin!r} is not the identity this session authenticated",
                           rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
        kid, suid = parse_fetch_target(target, self.state.fqdn)
        hit = self.state.enrolment_key(kid)
        if hit is None:
            raise MEFError(f"unknown or expired KeID {kid}", rsc=RSC.NOT_FOUND)
        ke, md, expires = hit
        if not grants_allow(md.get("grants", ()), origin, suid):
            raise MEFError(f"{origin!r} may not fetch SUID {suid} credentials for this enrolee",
                           rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        assert expires is not None
        key = credential_for(ke, suid, origin)
        self.state.audit("fetch", md.get("enrolee_id", "?"), "ok", {"ke_id": kid, "suid": suid, "target": origin})
        return FetchSuccess(key, md["enrolee_id"], expires).to_json()


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None
