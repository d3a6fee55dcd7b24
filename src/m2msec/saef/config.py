"""SAEF configuration: Credential Configuration and Association Configuration (TS-0003 8.1.2.3, 8.1.2.4, 8.2.1, 8.2.2).

* :class:`CredentialConfiguration` - 8.1.2.3: the entity's private signing key,
  certificate and optional chain (and its own CSE-ID/AE-ID).
* :class:`AssociationConfiguration` - 8.2.2.2 (and seed 001): what one entity
  knows about the other.  Entity A (the (D)TLS client of SA1) is configured
  with IdA, IdB, CertNameB and RootOfTrustB; Entity B (the server) with IdA,
  CertNameA, RootOfTrustA and its own IdB.  ``CertName`` is a
  :class:`~m2msec.pki.PeerCertInfo` (flavour + globally unique identifier of
  8.1.2.4); ``RootOfTrust`` the trust anchor certificates of 8.1.2.2, with
  ``peer_crls`` / ``revocation`` for the certificate status check of 8.1.2.2
  (a :class:`~m2msec.pki.CRLStore` and a :class:`~m2msec.pki.RevocationPolicy`) and
  ``peer_ocsp``, an optional :class:`~m2msec.pki.ocsp_check.PeerOCSPChecker` that a server
  endpoint asks about the peer's certificates while it holds its Finished back (8.1.2.2 OCSP).
* :class:`KpsaEntry` / :class:`KpsaDirectory` - 8.2.2.1: Kpsa and KpsaID
  (10.5 format) with the identity bound to security contexts established with
  them; kept in memory or in the store (credentials namespace ``saef.kpsa``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from m2msec.errors import IdentifierError
from m2msec.keys import parse_key_id
from m2msec.pki import CertificateFlavour, CRLStore, PeerCertInfo, RevocationPolicy
from m2msec.tls.engine import CertCredentials

if TYPE_CHECKING:
    from m2msec.pki.ocsp_check import PeerOCSPChecker

__all__ = [
    "AssociationConfiguration",
    "CredentialConfiguration",
    "EntityRole",
    "InMemoryKpsaDirectory",
    "KpsaDirectory",
    "KpsaEntry",
    "PeerKind",
    "StoreKpsaDirectory",
    "KPSA_NAMESPACE",
]

KPSA_NAMESPACE = "saef.kpsa"


class EntityRole(str, enum.Enum):
    """8.2.1: Entity A is the (D)TLS client of SA1, Entity B (a CSE) the server."""

    A = "A"
    B = "B"


class PeerKind(str, enum.Enum):
    CSE = "CSE"
    AE = "AE"


def _kind_of(flavour: CertificateFlavour) -> PeerKind | None:
    if flavour is CertificateFlavour.CSE_ID:
        return PeerKind.CSE
    if flavour is CertificateFlavour.AE_ID:
        return PeerKind.AE
    return None


@dataclass(frozen=True, eq=False)
class CredentialConfiguration:
    """8.1.2.3: own private signing key, certificate and (optional) certificate chain."""

    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    own_id: str | None = None  # the entity's CSE-ID / AE-ID when its certificate is of that flavour

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain", tuple(self.chain))

    def __repr__(self) -> str:
        return (f"CredentialConfiguration(subject={self.certificate.subject.rfc4514_string()!r}, "
                f"chain={len(self.chain)}, own_id={self.own_id!r}, private_key=<hidden>)")

    @classmethod
    def from_issued(cls, issued: object, own_id: str | None = None) -> CredentialConfiguration:
        """From a :class:`m2msec.pki.IssuedCertificate` that holds its private key."""
        key = getattr(issued, "private_key", None)
        if key is None:
            raise ValueError("the issued certificate carries no private key")
        return cls(key, issued.certificate, tuple(issued.chain), own_id)  # type: ignore[attr-defined]

    @classmethod
    def from_pem_files(cls, key: Path, cert: Path, *, password: bytes | None = None,
                       own_id: str | None = None) -> CredentialConfiguration:
        """``key`` PEM private key, ``cert`` PEM leaf followed by its chain."""
        certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())
        pk = load_pem_private_key(Path(key).read_bytes(), password=password)
        return cls(pk, certs[0], tuple(certs[1:]), own_id)  # type: ignore[arg-type]

    def tls_credentials(self) -> CertCredentials:
        return CertCredentials(self.private_key, self.certificate, self.chain)


@dataclass(frozen=True)
class AssociationConfiguration:
    """What ``local`` knows about its peer (8.2.2.2 Association Configuration).

    Build it with :meth:`entity_a` / :meth:`entity_b`, which take the clause's
    argument names.  ``peer_id`` is the identity security contexts with this
    peer are bound to: IdB on Entity A, IdA on Entity B (when IdA is not
    configured on Entity B, it is taken from an AE-ID certificate - the
    Absolute AE-ID - or is the Credential-ID of 10.4 for the other flavours).
    """

    local: EntityRole
    peer_cert: PeerCertInfo  # CertNameB on A, CertNameA on B
    peer_root_of_trust: tuple[x509.Certificate, ...]  # RootOfTrustB on A, RootOfTrustA on B
    peer_id: str | None  # IdB on A, IdA on B
    local_id: str | None = None  # IdA on A, IdB on B
    peer_kind: PeerKind | None = None
    peer_crls: CRLStore | None = field(default=None, compare=False)  # CRLs of the peer's PKI (8.1.2.2)
    revocation: RevocationPolicy = RevocationPolicy.IF_AVAILABLE
    #: OCSP status of the peer's certificates (8.1.2.2), asked by a *server* endpoint during the
    #: handshake (:func:`m2msec.saef.framework.certificate_server`); its policy is ``revocation``
    peer_ocsp: PeerOCSPChecker | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer_root_of_trust", tuple(self.peer_root_of_trust))
        if self.peer_ocsp is not None and self.peer_ocsp.policy is not RevocationPolicy(self.revocation):
            raise ValueError("peer_ocsp must check with the association's revocation policy")
        object.__setattr__(self, "revocation", RevocationPolicy(self.revocation))
        if self.peer_crls is not None and not isinstance(self.peer_crls, CRLStore):
            object.__setattr__(self, "peer_crls", CRLStore(self.peer_crls))
        if not self.peer_root_of_trust and self.peer_cert.flavour is not CertificateFlavour.RAW_PUBLIC_KEY:
            raise ValueError("Association Configuration needs the peer's root of trust")
        if self.local is EntityRole.A and not self.peer_id:
            raise ValueError("Entity A must be configured with IdB (8.2.2.2)")
        if self.peer_id is None and self.peer_cert.flavour is CertificateFlavour.CSE_ID:
            raise ValueError("a CSE-ID certificate carries the CSE's domain name, not its CSE-ID: configure IdA")
        if self.peer_kind is None:
            object.__setattr__(self, "peer_kind", _kind_of(self.peer_cert.flavour))

    @classmethod
    def entity_a(cls, *, id_b: str, cert_name_b: PeerCertInfo, root_of_trust_b: Sequence[x509.Certificate],
                 id_a: str | None = None, peer_kind: PeerKind | None = PeerKind.CSE, crls: CRLStore | None = None,
                 revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE) -> AssociationConfiguration:
        """Entity A's configuration: IdA (optional, 8.2.1), IdB, CertNameB, RootOfTrustB (+ CRLs, policy)."""
        return cls(EntityRole.A, cert_name_b, tuple(root_of_trust_b), id_b, id_a, peer_kind, crls,
                   RevocationPolicy(revocation))

    @classmethod
    def entity_b(cls, *, cert_name_a: PeerCertInfo, root_of_trust_a: Sequence[x509.Certificate],
                 id_a: str | None = None, id_b: str | None = None,
                 peer_kind: PeerKind | None = None, crls: CRLStore | None = None,
                 revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE) -> AssociationConfiguration:
        """Entity B's configuration: IdA, CertNameA, RootOfTrustA (and its own IdB; + CRLs, policy)."""
        return cls(EntityRole.B, cert_name_a, tuple(root_of_trust_a), id_a, id_b, peer_kind, crls,
                   RevocationPolicy(revocation))


# ------------------------------------------------------------------ PSK (8.2.2.1)


@dataclass(frozen=True)
class KpsaEntry:
    """A Provisioned Secure Connection Key and the identity bound to it (8.2.2.1).

    ``peer_id``: on Entity B the CSE-ID/AE-ID of Entity A configured for this
    KpsaID (None: contexts are bound to the Credential-ID ``12-<KpsaID>``);
    on Entity A, IdB.
    """

    kpsa_id: str
    kpsa: bytes = field(repr=False)
    peer_id: str | None = None
    peer_kind: PeerKind | None = None

    def __post_init__(self) -> None:
        check_kpsa_id(self.kpsa_id)
        if not isinstance(self.kpsa, (bytes, bytearray)) or not self.kpsa:
            raise ValueError("Kpsa must be non-empty bytes")
        object.__setattr__(self, "kpsa", bytes(self.kpsa))
        if self.peer_kind is not None:
            object.__setattr__(self, "peer_kind", PeerKind(self.peer_kind))

    @classmethod
    def from_hex(cls, kpsa_id: str, kpsa_hex: str, **kw: object) -> KpsaEntry:
        try:
            key = bytes.fromhex(kpsa_hex)
        except ValueError:
            raise ValueError("Kpsa is not hexadecimal") from None
        return cls(kpsa_id, key, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_text(cls, kpsa_id: str, kpsa_text: str, **kw: object) -> KpsaEntry:
        return cls(kpsa_id, kpsa_text.encode("utf-8"), **kw)  # type: ignore[arg-type]


def check_kpsa_id(kpsa_id: str) -> str:
    """KpsaID = Issuer_Relative_KpsaID@Issuer-FQDN (10.5); raises IdentifierError."""
    if not isinstance(kpsa_id, str):
        raise IdentifierError("KpsaID must be a string")
    parse_key_id(kpsa_id)
    return kpsa_id


class KpsaDirectory(Protocol):
    """Where Entity B looks a KpsaID up (``None``: unknown)."""

    def lookup(self, kpsa_id: str) -> KpsaEntry | None: ...


class InMemoryKpsaDirectory:
    """A dict-backed :class:`KpsaDirectory`."""

    def __init__(self, entries: Iterable[KpsaEntry] = ()) -> None:
        self._entries: dict[str, KpsaEntry] = {}
        for e in entries:
            self.add(e)

    def add(self, entry: KpsaEntry) -> None:
        self._entries[entry.kpsa_id] = entry

    def remove(self, kpsa_id: str) -> None:
        self._entries.pop(kpsa_id, None)

    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        return self._entries.get(kpsa_id)

    def __repr__(self) -> str:
        return f"InMemoryKpsaDirectory({len(self._entries)} entries)"


class StoreKpsaDirectory:
    """Kpsa in the durable store: credentials namespace ``saef.kpsa``, id = KpsaID.

    The key is sealed under the store's KEK; metadata ``{"peer_id": ..., "peer_kind": ...}``.
    """

    def __init__(self, store: object, namespace: str = KPSA_NAMESPACE) -> None:
        self.store = store
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"StoreKpsaDirectory(namespace={self.namespace!r})"

    def add(self, entry: KpsaEntry, *, expires_at: datetime | None = None) -> None:
        md: dict[str, str] = {}
        if entry.peer_id is not None:
            md["peer_id"] = entry.peer_id
        if entry.peer_kind is not None:
            md["peer_kind"] = entry.peer_kind.value
        self.store.put_credential(self.namespace, entry.kpsa_id, entry.kpsa,  # type: ignore[attr-defined]
                                  metadata=md, expires_at=expires_at)

    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        cred = self.store.find_credential(self.namespace, kpsa_id)  # type: ignore[attr-defined]
        if cred is None:
            return None
        md: Mapping[str, object] = cred.metadata or {}
        kind = md.get("peer_kind")
        return KpsaEntry(kpsa_id, cred.secret, peer_id=md.get("peer_id"),  # type: ignore[arg-type]
                         peer_kind=PeerKind(kind) if kind else None)
