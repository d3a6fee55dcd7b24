"""The security context an SAEF handshake yields, bound to the peer's identity (TS-0003 8.2.1, 8.2.2, 7.2.1, 10.4).

After a successful Association Security Handshake each entity "associates the
security context" with the peer's identity: Entity A with IdB, Entity B with
IdA - the CSE-ID or AE-ID configured for the peer's credential, the Absolute
AE-ID of an AE-ID certificate, or otherwise the Credential-ID (10.4,
``<sec:credIDTypeID>-<value>``: 12 for KpsaID, 30 raw public key, 31 device,
32 CSE-ID, 33 AE-ID, 34 Node-ID certificate).

:meth:`SecurityContext.check_originator` is the impersonation check of
TS-0003 7.2.1: a request whose From parameter differs from the identity bound
to the security context is answered with ORIGINATOR_NOT_AUTHENTICATED (4106).
Identifiers are compared in absolute form (TS-0001 7.2): SP-relative
``/CSE-ID/...`` gets the SP-ID prefix, an AE-ID-Stem ``C...`` the registrar's
CSE-ID, ``S...`` the SP-ID only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from m2msec.errors import M2MSecError
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.pki import CertificateFlavour, PeerCertInfo, VerifiedPeer
from m2msec.saef.config import EntityRole, PeerKind
from m2msec.tls.engine import Role, TLSEngine
from m2msec.tls.profiles import Transport

__all__ = [
    "CRED_ID_TYPE",
    "OriginatorNotAuthenticated",
    "SAEFError",
    "SecurityContext",
    "absolute_id",
    "credential_id",
]

#: sec:credIDTypeID (TS-0003 table 12.3.2.1-1) for SAEF credentials.
CRED_ID_TYPE: dict[str, int] = {
    "kpsa": 12,
    CertificateFlavour.RAW_PUBLIC_KEY.value: 30,
    CertificateFlavour.DEVICE.value: 31,
    CertificateFlavour.CSE_ID.value: 32,
    CertificateFlavour.AE_ID.value: 33,
    CertificateFlavour.NODE_ID.value: 34,
}


class SAEFError(M2MSecError):
    """An SAEF failure after the handshake (e.g. the identity cannot be bound)."""

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED


class OriginatorNotAuthenticated(SAEFError):
    """TS-0003 7.2.1 step 3: From differs from the identity of the security association."""

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED


def credential_id(kind: str, value: str) -> str:
    """Credential-ID = type-ID "-" value (TS-0003 10.4)."""
    return f"{CRED_ID_TYPE[kind]}-{value}"


def _sp(sp_id: str | None) -> str | None:
    if not sp_id:
        return None
    return sp_id if sp_id.startswith("//") else "//" + sp_id.strip("/")


def absolute_id(identifier: str, *, sp_id: str | None = None, cse_id: str | None = None) -> str:
    """The absolute form of a CSE-ID / AE-ID (TS-0001 7.2) as far as ``sp_id``/``cse_id`` allow."""
    sp = _sp(sp_id)
    ident = identifier
    if ident.startswith("//"):
        return ident
    if not ident.startswith("/"):
        if ident.startswith("S"):
            ident = "/" + ident
        elif cse_id:
            ident = (cse_id if cse_id.startswith("/") else "/" + cse_id) + "/" + ident
        else:
            return ident
    return sp + ident if sp else ident


@dataclass(frozen=True, eq=False)
class SecurityContext:
    """A completed SAEF security association, bound to the peer identity."""

    framework: str  # "certificate" or "psk"
    local_role: EntityRole
    tls_role: Role
    transport: Transport
    peer_id: str  # IdB on Entity A; IdA (or Credential-ID) on Entity B
    credential_id: str
    peer_kind: PeerKind | None = None
    local_id: str | None = None
    peer_cert: PeerCertInfo | None = None  # CertName the peer was verified against
    verified_peer: VerifiedPeer | None = None
    psk_identity: str | None = None  # KpsaID
    cipher: str | None = None
    protocol: str | None = None
    sni: str | None = None
    _engine: TLSEngine | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"SecurityContext(framework={self.framework}, peer_id={self.peer_id!r}, "
                f"credential_id={self.credential_id!r}, peer_kind={self.peer_kind.value if self.peer_kind else None}, "
                f"transport={self.transport.value}, cipher={self.cipher!r})")

    @property
    def verified_chain(self) -> tuple[x509.Certificate, ...]:
        """Leaf ... trust anchor of the verified peer certificate (empty for PSK)."""
        vp = self.verified_peer
        if vp is None:
            return ()
        out = list(vp.path) if vp.path else [vp.certificate]
        if vp.trust_anchor is not None and (not out or out[-1] != vp.trust_anchor):
            out.append(vp.trust_anchor)
        return tuple(out)

    @property
    def engine(self) -> TLSEngine:
        if self._engine is None:
            raise SAEFError("this security context has no TLS session attached")
        return self._engine

    def export_keying_material(self, label: str, length: int = 48, context: bytes | None = None) -> bytes:
        """RFC 5705 exporter of the underlying session (TS-0003 10.3.1)."""
        return self.engine.export_keying_material(label, length, context)

    def export_onem2m_key(self, label: str) -> tuple[bytes, bytes]:
        """``(key, key_id)`` from the 48-octet export (TS-0003 10.3.1)."""
        return self.engine.export_onem2m_key(label)

    def check_originator(self, fr: str | None, *, sp_id: str | None = None, cse_id: str | None = None,
                         allow_cse_forwarding: bool = False) -> None:
        """Raise :class:`OriginatorNotAuthenticated` unless ``fr`` is the bound peer identity.

        ``allow_cse_forwarding``: skip the check when the peer is a CSE, whose
        requests may be forwarded on behalf of other originators (TS-0003 7.2.1
        NOTE).  An absent From (``None``) passes; the caller then acts on
        ``peer_id``.
        """
        if fr is None:
            return
        if allow_cse_forwarding and self.peer_kind is PeerKind.CSE:
            return
        if absolute_id(fr, sp_id=sp_id, cse_id=cse_id) != absolute_id(self.peer_id, sp_id=sp_id, cse_id=cse_id):
            raise OriginatorNotAuthenticated(
                f"From {fr!r} is not the identity {self.peer_id!r} associated with the security association"
            )

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for logs and CLIs."""
        return {"framework": self.framework, "peer_id": self.peer_id, "credential_id": self.credential_id,
                "peer_kind": self.peer_kind.value if self.peer_kind else None, "cipher": self.cipher,
                "transport": self.transport.value, "psk_identity": self.psk_identity}
