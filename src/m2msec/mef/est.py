"""Certificate Enrolment with EST: the MEF as EST server and RA (TS-0003 8.3.6, 10.1.1, 10.1.4;
seed 004 8.3.3.3; RFC 7030 sections 3-4).

Served inside the enrolee's authenticated TLS session with the MEF (PSK RSPF: EST
certificate-less mutual authentication, RFC 7030 3.3.3; certificate RSPF: RFC 7030
3.3.1/3.3.2), on the same h11 loop as the Enrolment Exchange:

* ``GET /.well-known/est/cacerts`` - the CA certificates (root and intermediates), base64 DER
  ``application/pkcs7-mime`` certs-only (RFC 7030 4.1.3);
* ``GET /.well-known/est/csrattrs`` - base64 DER CsrAttrs (``application/csrattrs``,
  4.5.2): challengePassword, id-ecPublicKey + secp256r1, ecdsa-with-SHA256, and an
  extensionRequest with the subjectAltName (the identifiers the MEF associates with
  the enrolee) and the extendedKeyUsage (EKUs of the communication security types
  the enrolee may use, :data:`EKU_FOR`);
* ``POST /.well-known/est/simpleenroll`` and ``/simplereenroll`` - base64 DER PKCS#10
  in, ``application/pkcs7-mime; smime-type=certs-only`` with the issued certificate
  out (4.2);
* ``POST /.well-known/est/serverkeygen`` - server-side key generation (TS-0003 8.3.6.2.1
  last paragraph; RFC 7030 4.4): the same PKCS#10 in, checked by exactly the same RA
  rules as ``simpleenroll`` (its key is a placeholder: the proof of possession and key
  policy are checked as for ``simpleenroll``, but the key is never certified); the MEF
  generates the key pair (:func:`preferred_key_type` of its key policy: P-256 under the
  default and the strict oneM2M policy), has the CA certify the generated public key and
  answers ``multipart/mixed`` (:func:`serverkeygen_multipart`): first the private key as
  ``application/pkcs8`` (base64 DER PrivateKeyInfo, *unencrypted* - RFC 7030 4.4.2
  allows that only because the response travels inside the mutually authenticated TLS
  session, which every MEF session is), then the certificate as
  ``application/pkcs7-mime; smime-type=certs-only``, each part with
  ``Content-Transfer-Encoding: base64``.  The generated key is never logged, stored or
  audited (the audit record carries the serial and identifiers only);
* ``POST /enrolment/complete`` - Enrolment Exchange step 6 (seed 004 8.3.3.1): "the
  Enrolee sends a message to the MEF indicating success" (JSON, m2msec profile).

challengePassword binding (m2msec profile; TS-0003 8.3.6.2.2 step 3d "validate ...
the challengePassword against those provided in step 2"): a one-time random value
the MEF mints when it sends the CertificateEnrolment instruction in the Enrolment
Exchange (table 8.3.2.1-2 row ``ChallengePassword``).  It is stored as a SHA-256
hash in the same transaction as Ke/Kre, bound to the Enrolee-ID authenticated by
that TLS session and to that enrolment's KeID, expires with the enrolment (or
:attr:`ESTService.challenge_lifetime`, whichever is first) and is consumed by the
first successful (re)enrolment.  It is not derived from the session's exporter so
that a standard EST client (one TLS connection per operation, e.g. curl) works;
RFC 7030 3.5 tls-unique linking is optional in TS-0003 8.3.6.2.1 and not used.

The RA decides the identifiers and EKUs; the CA behind it is a
:class:`CertificateAuthority` (default :class:`DevCAAuthority`: the
:class:`~m2msec.pki.DevCA` whose keys live in the store, encrypted at rest).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID

from m2msec.errors import M2MSecError, ParseError
from m2msec.mef.estder import encode_csrattrs, encode_oid
from m2msec.mef.protocol import Instruction, InstructionType
from m2msec.mef.state import NS_CERTIDX, NS_EST_ISSUED, NS_KE, MEFError, MEFState, SessionPeer
from m2msec.mef.state import revoke_issued
from m2msec.osuser import admin_details
from m2msec.onem2m._wire import loads_json
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import format_timestamp
from m2msec.pki import (
    DEFAULT_KEY_POLICY,
    CertificateFlavour,
    DevCA,
    KeyPolicy,
    canonical_identifier,
    identifiers_of,
    san_entry,
)
from m2msec.pki.errors import CSRError, UnsupportedKeyError
from m2msec.pki.identifiers import identifiers_in_names, subject_alt_names
from m2msec.pki.keypolicy import KeyType, PrivateKey, generate_private_key, signature_hash_for
from m2msec.store import DuplicateError, NotFound, Store

__all__ = [
    "BASE_EKUS",
    "COMPLETE_PATH",
    "EKU_FOR",
    "EST_PREFIX",
    "M2MSEC_EKU_ARC",
    "CertificateAuthority",
    "DevCAAuthority",
    "ESTProfile",
    "ESTResponse",
    "ESTService",
    "SecurityType",
    "certs_only",
    "load_certs_only",
    "load_dev_ca",
    "preferred_key_type",
    "serverkeygen_multipart",
    "store_dev_ca",
]

EST_PREFIX: Final = "/.well-known/est/"
COMPLETE_PATH: Final = "/enrolment/complete"
CT_PKCS7: Final = "application/pkcs7-mime"
CT_CERTS_ONLY: Final = "application/pkcs7-mime; smime-type=certs-only"
CT_CSRATTRS: Final = "application/csrattrs"
CT_PKCS10: Final = "application/pkcs10"

NS_EST_PROFILE: Final = "mef.est.profile"  # record per Enrolee-ID
NS_EST_CHALLENGE: Final = "mef.est.challenge"  # record, id = SHA-256(challengePassword)
NS_EST_CA: Final = "mef.est.ca"  # credentials: the DevCA keys (encrypted at rest by the store)

OID_EC_PUBLIC_KEY: Final = x509.ObjectIdentifier("1.2.840.10045.2.1")
OID_SECP256R1: Final = x509.ObjectIdentifier("1.2.840.10045.3.1.7")
OID_ECDSA_SHA256: Final = x509.ObjectIdentifier("1.2.840.10045.4.3.2")

#: m2msec's arc for the oneM2M communication security types: an X.667 UUID OID
#: (2.25.<UUID caf0c69c-ed55-4607-a8aa-11232420c34a as integer>), which needs no
#: registration.  TS-0003 defines no EKU OIDs for SAEF/ESPrim/ESData (seed 004
#: 8.3.3.3 step 7 only says the CSR attributes "may include" them).
M2MSEC_EKU_ARC: Final = "2.25.269754234744747276942657530990048625482"


class SecurityType(str, Enum):
    """Communication security types of seed 004 8.3.3.3 step 1 (SAEF, ESPrim, ESData options)."""

    SAEF = "SAEF"
    ESPRIM = "ESPrim"
    ESDATA_SIGNATURE = "ESData-Signature"
    ESDATA_ENCRYPTION = "ESData-Encryption"


EKU_FOR: Final[Mapping[SecurityType, x509.ObjectIdentifier]] = {
    SecurityType.SAEF: x509.ObjectIdentifier(f"{M2MSEC_EKU_ARC}.1"),
    SecurityType.ESPRIM: x509.ObjectIdentifier(f"{M2MSEC_EKU_ARC}.2"),
    SecurityType.ESDATA_SIGNATURE: x509.ObjectIdentifier(f"{M2MSEC_EKU_ARC}.3"),
    SecurityType.ESDATA_ENCRYPTION: x509.ObjectIdentifier(f"{M2MSEC_EKU_ARC}.4"),
}
_TYPE_OF = {v.dotted_string: k for k, v in EKU_FOR.items()}

#: Always in an MEF-provisioned certificate: it authenticates the enrolee to the MEF
#: (re-enrolment, TS-0003 8.3.6.2.2 step 3f) and carries the (D)TLS of SAEF and ESCertKE.
BASE_EKUS: Final = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)

#: RFC 7030 4.4.2 part types of the /serverkeygen response (key first, then certificate).
CT_PKCS8: Final = "application/pkcs8"
CT_MULTIPART: Final = "multipart/mixed"
#: the EST operations whose request body is a PKCS#10 CSR (RFC 7030 4.2.1, 4.4.1)
CSR_OPERATIONS: Final = ("simpleenroll", "simplereenroll", "serverkeygen")
_B64_HEADERS: Final = (("Content-Transfer-Encoding", "base64"),)
#: CertificateSerial of the completion report: plain hex (``openssl x509 -serial``) or colon-separated
#: octets (``openssl x509 -text``), at most 20 octets (RFC 5280 4.1.2.2); no sign, ``0x`` or ``_``.
_SERIAL_RE: Final = re.compile(r"[0-9A-Fa-f]{1,40}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){0,19}")

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)


class ESTError(MEFError):
    """An EST refusal (``rsc`` -> HTTP status via TS-0009)."""


def _refuse(msg: str, rsc: RSC = RSC.ORIGINATOR_HAS_NO_PRIVILEGE) -> ESTError:
    return ESTError(msg, rsc=rsc)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ PKCS#7 certs-only


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """Base64 of a DER PKCS#7 certs-only SignedData (RFC 7030 4.1.3, 4.2.3; RFC 8951 base64)."""
    der = pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)
    return base64.encodebytes(der)


def _mime_b64(der: bytes) -> bytes:
    """Base64 in 64-character lines ending CRLF (RFC 2045 6.8, the canonical form in a MIME part)."""
    text = base64.b64encode(der)
    return b"".join(text[i:i + 64] + b"\r\n" for i in range(0, len(text), 64))


def serverkeygen_multipart(private_key: PrivateKey, certificates: Sequence[x509.Certificate]) -> tuple[str, bytes]:
    """The RFC 7030 4.4.2 response: ``(Content-Type, body)`` of a two-part ``multipart/mixed``.

    Part 1 ``application/pkcs8``: the unencrypted DER PrivateKeyInfo (RFC 5958), base64.
    Part 2 ``application/pkcs7-mime; smime-type=certs-only``: the certificates, base64.
    Both parts carry ``Content-Transfer-Encoding: base64``; lines end CRLF.  The boundary
    is random and contains ``-`` and ``.``, which base64 text never holds, so it cannot
    occur inside a part (checked anyway).
    """
    key_der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    p7_der = pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER)
    parts = [(CT_PKCS8, _mime_b64(key_der)), (CT_CERTS_ONLY, _mime_b64(p7_der))]
    boundary = f"est-{secrets.token_hex(12)}.part"
    assert all(boundary.encode() not in body for _, body in parts)
    out = bytearray()
    for ctype, body in parts:
        out += (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode()
        out += body
    out += f"--{boundary}--\r\n".encode()
    return f"{CT_MULTIPART}; boundary={boundary}", bytes(out)


def _b64(body: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{what} is not base64") from None


def load_certs_only(body: bytes) -> list[x509.Certificate]:
    """Certificates of a base64 PKCS#7 certs-only body (ParseError if malformed)."""
    der = _b64(body, "PKCS#7 body")
    try:
        return list(pkcs7.load_der_pkcs7_certificates(der))
    except ValueError:
        raise ParseError("not a DER PKCS#7 certs-only structure") from None


# ------------------------------------------------------------------ the CA behind the RA


class CertificateAuthority(Protocol):
    """The RA -> CA step (seed 004 8.3.3.3 steps 11-13; TS-0003 8.3.6.1 NOTE 1 leaves it open).

    ``issue`` must check proof of possession itself (it may receive CSRs from other RAs),
    put exactly ``identifiers`` (the flavour's subjectAltName form) and ``usages`` (the
    extendedKeyUsage OIDs the RA allowed) in the certificate and return the chain, leaf
    first.  ``ca_certificates`` are what ``/cacerts`` returns (trust anchor first; the PKCS#7
    SET does not keep the order, so clients tell anchors by being self-signed).
    """

    def issue(self, csr: x509.CertificateSigningRequest, flavour: CertificateFlavour, identifiers: Sequence[str],
              usages: Sequence[x509.ObjectIdentifier]) -> list[x509.Certificate]: ...

    def ca_certificates(self) -> list[x509.Certificate]: ...


class DevCAAuthority:
    """:class:`~m2msec.pki.DevCA` as the MEF CA: name-constrained chain, 10.1.1 leaves."""

    def __init__(self, ca: DevCA, clock: Clock, *, validity: timedelta = timedelta(days=365)) -> None:
        self.ca = ca
        self.clock = clock
        self.validity = validity

    def __repr__(self) -> str:
        return f"DevCAAuthority({self.ca!r})"

    def issue(self, csr: x509.CertificateSigningRequest, flavour: CertificateFlavour, identifiers: Sequence[str],
              usages: Sequence[x509.ObjectIdentifier]) -> list[x509.Certificate]:
        issued = self.ca.issue_from_csr(csr, flavour, identifiers, now=self.clock(), validity=self.validity,
                                        extended_key_usage=list(usages), allow_added_identifiers=True)
        return [issued.certificate, *issued.chain]

    def ca_certificates(self) -> list[x509.Certificate]:
        return [self.ca.trust_anchor, *self.ca.chain]


def store_dev_ca(store: Store, ca: DevCA) -> None:
    """Keep the DevCA in the store: keys as credentials (encrypted at rest with the store KEK)."""
    der = serialization.Encoding.DER
    pem = serialization.Encoding.PEM
    fmt, enc = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    with store.transaction() as tx:
        tx.put_credential(NS_EST_CA, "root", ca._root_key.private_bytes(der, fmt, enc),
                          metadata={"name": ca.name, "cert_pem": ca.root_cert.public_bytes(pem).decode()})
        if ca.intermediate_cert is not None and ca._intermediate_key is not None:
            tx.put_credential(NS_EST_CA, "intermediate", ca._intermediate_key.private_bytes(der, fmt, enc),
                              metadata={"cert_pem": ca.intermediate_cert.public_bytes(pem).decode()})
        tx.append_audit("mef-admin", "est-ca-store", ca.name, "ok",
                        admin_details({"intermediate": ca.intermediate_cert is not None}))


def set_est_profile(state: MEFState, profile: ESTProfile) -> None:
    """Store the EST profile of a configured enrolee (``m2msec mef enrolee est``), audited as
    ``est-profile`` by ``mef-admin``."""
    state.get_enrolee(profile.enrolee_id)  # must be configured
    with state.store.transaction() as tx:
        tx.put_record(NS_EST_PROFILE, profile.enrolee_id, profile.to_doc())
        tx.append_audit("mef-admin", "est-profile", profile.enrolee_id, "ok",
                        admin_details({"flavour": profile.flavour.value, "identifiers": list(profile.identifiers)}))


def load_dev_ca(store: Store, *, key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
                crl_base_url: str | None = None) -> DevCA | None:
    """The DevCA kept by :func:`store_dev_ca`, or None.  With ``crl_base_url`` the certificates
    it issues name ``<crl_base_url>/<issuing CA>.crl`` as their CRL distribution point
    (:mod:`m2msec.mef.est_crl`)."""
    root = store.find_credential(NS_EST_CA, "root")
    if root is None:
        return None
    inter = store.find_credential(NS_EST_CA, "intermediate")

    def pair(c: Any) -> tuple[x509.Certificate, Any]:
        return (x509.load_pem_x509_certificate(c.metadata["cert_pem"].encode()),
                serialization.load_der_private_key(c.secret, None))

    rc, rk = pair(root)
    ic, ik = pair(inter) if inter is not None else (None, None)
    ca = DevCA(name=root.metadata["name"], root_cert=rc, root_key=rk, intermediate_cert=ic, intermediate_key=ik,
               key_policy=key_policy)
    if crl_base_url:
        ca.crl_url = crl_base_url.rstrip("/") + f"/{ca.issuing_signer}.crl"  # as est_crl.crl_url_for
    return ca


def preferred_key_type(policy: KeyPolicy) -> KeyType:
    """The key type /serverkeygen generates under ``policy`` (TS-0003 10.1.1.1: P-256 first).

    P-256 if the policy admits it (the default and :data:`~m2msec.pki.STRICT_ONEM2M`), else
    P-384, else RSA with at least the policy's minimum size (2048 or 3072 bits).
    """
    if "secp256r1" in policy.curves:
        return KeyType.EC_P256
    if "secp384r1" in policy.curves:
        return KeyType.EC_P384
    if policy.allow_rsa and policy.min_rsa_bits <= 3072:
        return KeyType.RSA_2048 if policy.min_rsa_bits <= 2048 else KeyType.RSA_3072
    raise ValueError("the key policy admits no key type the MEF can generate")


# ------------------------------------------------------------------ per-enrolee configuration


@dataclass(frozen=True)
class ESTProfile:
    """What the MEF lets one enrolee enrol for (seed 004 8.3.3.1 pre-conditions; table 9.2.2.3).

    ``identifiers``: what the enrolee may request (all of them if its CSR names none);
    ``added_identifiers``: added by the MEF to every certificate (8.3.3.3 step 11);
    ``security_types``: the communication security types the certificate may be used for.
    """

    enrolee_id: str
    flavour: CertificateFlavour
    identifiers: tuple[str, ...]
    security_types: tuple[SecurityType, ...] = (SecurityType.SAEF,)
    added_identifiers: tuple[str, ...] = ()
    est_base_uri: str | None = None

    def __post_init__(self) -> None:
        if self.flavour is CertificateFlavour.RAW_PUBLIC_KEY:
            raise ValueError("raw public keys are not enrolled with EST")
        if not self.identifiers:
            raise ValueError("an EST profile needs at least one identifier")
        for i in (*self.identifiers, *self.added_identifiers):
            san_entry(self.flavour, i)  # IdentifierError if malformed

    def to_doc(self) -> dict[str, Any]:
        return {"enrolee_id": self.enrolee_id, "flavour": self.flavour.value, "identifiers": list(self.identifiers),
                "security_types": [t.value for t in self.security_types],
                "added_identifiers": list(self.added_identifiers), "est_base_uri": self.est_base_uri}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ESTProfile:
        return cls(doc["enrolee_id"], CertificateFlavour(doc["flavour"]), tuple(doc["identifiers"]),
                   tuple(SecurityType(t) for t in doc.get("security_types", ())),
                   tuple(doc.get("added_identifiers", ())), doc.get("est_base_uri"))

    def canonical(self, idents: Sequence[str]) -> list[str]:
        return [canonical_identifier(self.flavour, i) for i in idents]

    def allowed_ekus(self) -> list[x509.ObjectIdentifier]:
        return [*BASE_EKUS, *(EKU_FOR[t] for t in self.security_types)]


@dataclass(frozen=True)
class ESTResponse:
    """An HTTP answer of the EST resources (status from the RSC, TS-0009)."""

    rsc: RSC
    content_type: str
    body: bytes = field(repr=False)  # a /serverkeygen body holds a private key
    extra_headers: tuple[tuple[str, str], ...] = ()

    @property
    def status(self) -> int:
        return 200 if self.rsc is RSC.OK else self.rsc.http_status


@dataclass
class _Pending:
    """A challengePassword minted for one CertificateEnrolment instruction (stored on commit)."""

    value: str = field(repr=False)
    enrolee_id: str
    ke_id: str
    expires: datetime
    instruction: Instruction = field(repr=False)  # carries the challengePassword

    def hook(self, _prefs: object, _request: object) -> Instruction:
        return self.instruction

    def store(self, tx: Any) -> None:
        tx.put_record(NS_EST_CHALLENGE, _hash(self.value), {"enrolee_id": self.enrolee_id, "ke_id": self.ke_id},
                      expires_at=self.expires, if_absent=True)


@dataclass(frozen=True)
class _Grant:
    """What the RA allowed for one CSR (the checks of seed 004 8.3.3.3 step 10)."""

    csr: x509.CertificateSigningRequest
    profile: ESTProfile
    challenge_id: str
    ke_id: str
    identifiers: list[str]
    usages: list[x509.ObjectIdentifier]


class ESTService:
    """The MEF's EST server and RA over :class:`~m2msec.mef.state.MEFState`.

    ``serverkeygen_key_type``: what /serverkeygen generates (default
    :func:`preferred_key_type` of ``key_policy``).
    """

    def __init__(self, state: MEFState, ca: CertificateAuthority, *, key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
                 challenge_lifetime: timedelta = timedelta(minutes=30),
                 serverkeygen_key_type: KeyType | None = None) -> None:
        self.state = state
        self.ca = ca
        self.key_policy = key_policy
        self.challenge_lifetime = challenge_lifetime
        self.serverkeygen_key_type = serverkeygen_key_type or preferred_key_type(key_policy)

    def __repr__(self) -> str:
        return f"ESTService(mef={self.state.fqdn!r}, ca={self.ca!r})"

    # -- administration ----------------------------------------------------------------
    def set_profile(self, profile: ESTProfile) -> None:
        set_est_profile(self.state, profile)

    def profile(self, enrolee_id: str) -> ESTProfile | None:
        rec = self.state.store.find_record(NS_EST_PROFILE, enrolee_id)
        return None if rec is None else ESTProfile.from_doc(rec.doc)

    def issued(self, enrolee_id: str) -> list[dict[str, Any]]:
        return [r.doc for r in self.state.store.list_records(NS_EST_ISSUED) if r.doc.get("enrolee_id") == enrolee_id]

    def revoke_certificate(self, serial: str | int, reason: x509.ReasonFlags | None = None) -> dict[str, Any]:
        """Revoke one certificate this MEF issued (e.g. key compromise) without revoking its
        enrolee; it is on the next CRL (:mod:`m2msec.mef.est_crl`) and refused by this MEF at
        once.  4004 for a serial the MEF did not issue (or that has expired), 4105 if already revoked."""
        key = format(serial, "x") if isinstance(serial, int) else serial.lower().replace(":", "").lstrip("0")
        if reason is x509.ReasonFlags.remove_from_crl:
            raise MEFError("removeFromCRL is only meaningful in delta CRLs, which this MEF does not issue",
                           rsc=RSC.BAD_REQUEST)
        with self.state.store.transaction() as tx:
            rec = tx.find_record(NS_EST_ISSUED, key)
            if rec is None:
                raise MEFError(f"no live certificate with serial {key[:64]!r} was issued by this MEF",
                               rsc=RSC.NOT_FOUND)
            doc = revoke_issued(tx, rec, now=self.state.clock(), reason=reason)
            tx.append_audit("mef-admin", "est-revoke", str(rec.doc.get("enrolee_id")), "ok",
                            admin_details({"serial": key, "reason": doc["reason"]}))
        self.state.note_est_revocation()  # established sessions of this process re-check at once
        return doc

    # -- Enrolment Exchange step 5 -----------------------------------------------------
    def prepare(self, enrolee_id: str, ke_id: str, expiry: datetime) -> _Pending | None:
        """The CertificateEnrolment instruction (table 8.3.2.1-2) with a fresh challengePassword."""
        prof = self.profile(enrolee_id)
        if prof is None:
            return None
        value = secrets.token_urlsafe(24)
        expires = min(expiry, self.state.clock() + self.challenge_lifetime)
        params = {"URI": prof.est_base_uri or f"https://{self.state.fqdn}{EST_PREFIX.rstrip('/')}",
                  "ChallengePassword": value,
                  "CommunicationSecurityTypes": [t.value for t in prof.security_types],
                  "CertificateType": prof.flavour.value,
                  "Lifetime": format_timestamp(expires)}
        return _Pending(value, enrolee_id, ke_id, expires, Instruction(InstructionType.CERTIFICATE_ENROLMENT, params))

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes, peer: SessionPeer | None,
               peer_cert: x509.Certificate | None = None, *, content_type: str | None = None) -> ESTResponse:
        """Serve one EST request; refusals become text/plain with the RSC (never a stack trace).

        ``content_type``: the request's Content-Type header.  A CSR operation refuses one
        that is present but not ``application/pkcs10`` (4015, HTTP 415); a missing header
        is tolerated.  Successful answers carry their headers in ``extra_headers``
        (``Content-Transfer-Encoding: base64`` on single-part bodies only: a multipart
        body has 7bit encoding, RFC 2045 6.4, its parts say base64 themselves).
        """
        op = path[len(EST_PREFIX):] if path.startswith(EST_PREFIX) else ""
        try:
            if peer is None:
                raise _refuse("the session is not bound to a configured entity", RSC.ORIGINATOR_NOT_AUTHENTICATED)
            if op in ("cacerts", "csrattrs"):
                if method != "GET":
                    raise _refuse(f"use GET for /{op}", RSC.OPERATION_NOT_ALLOWED)
                if op == "cacerts":
                    return ESTResponse(RSC.OK, CT_PKCS7, certs_only(self.ca.ca_certificates()), _B64_HEADERS)
                return ESTResponse(RSC.OK, CT_CSRATTRS, base64.encodebytes(self.csrattrs(peer)), _B64_HEADERS)
            if op in CSR_OPERATIONS:
                if method != "POST":
                    raise _refuse(f"use POST for /{op}", RSC.OPERATION_NOT_ALLOWED)
                if content_type is not None and _media_type(content_type) != CT_PKCS10:
                    raise _refuse(f"/{op} takes {CT_PKCS10}, not {content_type[:60]!r}", RSC.UNSUPPORTED_MEDIA_TYPE)
                if op == "serverkeygen":
                    key, chain = self.serverkeygen(body, peer)
                    ctype, multipart = serverkeygen_multipart(key, chain[:1])
                    return ESTResponse(RSC.OK, ctype, multipart)
                chain = self.enroll(body, peer, reenroll=op == "simplereenroll", peer_cert=peer_cert)
                return ESTResponse(RSC.OK, CT_CERTS_ONLY, certs_only(chain[:1]), _B64_HEADERS)
            raise _refuse(f"EST operation {op[:40]!r} is not supported", RSC.NOT_FOUND)
        except M2MSecError as exc:
            self.state.audit("est", peer.identity if peer else "?", "refused",
                             {"op": op[:40], "rsc": int(exc.rsc), "why": exc.args[0]})
            return ESTResponse(exc.rsc, "text/plain; charset=utf-8", (exc.args[0] + "\n").encode())
        except Exception as exc:  # noqa: BLE001 - no stack trace to the peer
            log.exception("EST request failed")
            return ESTResponse(RSC.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                               f"{type(exc).__name__}\n".encode())

    def _enrolee_profile(self, peer: SessionPeer) -> ESTProfile:
        if peer.kind not in ("enrolee", "reauth"):
            raise _refuse("an Enrolment Target session cannot enrol for a certificate")
        cfg = self.state.get_enrolee(peer.identity)
        if cfg.revoked:
            raise _refuse("this enrolee is revoked")
        prof = self.profile(peer.identity)
        if prof is None:
            raise _refuse("no certificate enrolment is configured for this enrolee")
        return prof

    # -- csrattrs (RFC 7030 4.5.2; TS-0003 8.3.6.2.2 step 2) --------------------------
    def csrattrs(self, peer: SessionPeer) -> bytes:
        prof = self._enrolee_profile(peer)
        san = x509.SubjectAlternativeName([san_entry(prof.flavour, i) for i in prof.identifiers])
        eku = x509.ExtendedKeyUsage(prof.allowed_ekus())
        return encode_csrattrs(
            oids=[AttributeOID.CHALLENGE_PASSWORD, OID_ECDSA_SHA256],
            attributes=[(OID_EC_PUBLIC_KEY, [encode_oid(OID_SECP256R1)])],
            extensions=[(san, False), (eku, False)])

    # -- simpleenroll / simplereenroll (RFC 7030 4.2; seed 004 8.3.3.3 steps 9-14) -----
    def enroll(self, body: bytes, peer: SessionPeer, *, reenroll: bool = False,
               peer_cert: x509.Certificate | None = None) -> list[x509.Certificate]:
        """Check the CSR (RA rules, profile row M16) and have the CA certify its key; chain, leaf first."""
        grant = self._authorise(body, peer, reenroll=reenroll, peer_cert=peer_cert)
        chain = self._issue(grant.csr, grant)
        self._commit(peer, grant, chain[0], "est-reenroll" if reenroll else "est-enroll", reenroll=reenroll)
        return chain

    # -- serverkeygen (RFC 7030 4.4; TS-0003 8.3.6.2.1) ----------------------------------
    def serverkeygen(self, body: bytes, peer: SessionPeer) -> tuple[PrivateKey, list[x509.Certificate]]:
        """Server-side key generation: the RA checks of ``simpleenroll``, then a key made here.

        The CSR's own key is a placeholder (RFC 7030 4.4.1): it must still pass proof of
        possession and the key policy, but it is never certified.  The MEF generates a
        :attr:`serverkeygen_key_type` key, re-signs the client's request (same subject and
        extensions) with it and passes that to the CA, so the CA's own proof-of-possession
        check holds and the CA interface is unchanged.  Returns the key and the chain (leaf
        first); the caller sends the key over the TLS session and drops it - it is not
        stored, logged or audited.
        """
        grant = self._authorise(body, peer, reenroll=False, peer_cert=None)
        key = generate_private_key(self.serverkeygen_key_type)
        chain = self._issue(_resign(grant.csr, key), grant)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if chain[0].public_key().public_bytes(serialization.Encoding.DER, spki) != \
                key.public_key().public_bytes(serialization.Encoding.DER, spki):
            raise ESTError("the CA did not certify the generated key", rsc=RSC.INTERNAL_SERVER_ERROR)
        self._commit(peer, grant, chain[0], "est-serverkeygen", reenroll=False, server_keygen=True)
        return key, chain

    def _issue(self, csr: x509.CertificateSigningRequest, grant: _Grant) -> list[x509.Certificate]:
        """RA -> CA (seed 004 8.3.3.3 steps 11-13)."""
        try:
            return self.ca.issue(csr, grant.profile.flavour, grant.identifiers, grant.usages)
        except (CSRError, UnsupportedKeyError):
            raise
        except M2MSecError as exc:
            raise ESTError(f"the CA refused: {exc.args[0]}", rsc=RSC.INTERNAL_SERVER_ERROR) from None

    def _authorise(self, body: bytes, peer: SessionPeer, *, reenroll: bool,
                   peer_cert: x509.Certificate | None) -> _Grant:
        prof = self._enrolee_profile(peer)
        der = _b64(body, "PKCS#10 body")
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError:
            raise ParseError("body is not a DER PKCS#10 certification request") from None
        try:
            pop = csr.is_signature_valid
        except Exception:  # noqa: BLE001 - unsupported signature algorithm
            pop = False
        if not pop:
            raise CSRError("CSR signature does not verify (no proof of possession)")
        self.key_policy.check(csr.public_key())  # UnsupportedKeyError (4000)

        # challengePassword (step 10): minted for this enrolee's current enrolment
        try:
            cp = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
            challenge = cp.decode("utf-8") if isinstance(cp, bytes) else str(cp)
        except (x509.AttributeNotFound, UnicodeDecodeError):
            raise _refuse("the CSR carries no challengePassword") from None
        crec = self.state.store.find_record(NS_EST_CHALLENGE, _hash(challenge))
        if crec is None or crec.doc.get("enrolee_id") != peer.identity:
            raise _refuse("challengePassword is wrong, used or expired")
        if self.state.store.find_credential(NS_KE, crec.doc["ke_id"]) is None:
            raise _refuse("the enrolment this challengePassword belongs to has expired or was revoked")

        # identifiers (step 10/11)
        names = subject_alt_names(csr)
        asked = identifiers_in_names(names, prof.flavour)
        if len(asked) != len(names):
            raise _refuse(f"the CSR asks for subjectAltName entries other than {prof.flavour.value} identifiers")
        entitled = set(prof.canonical(prof.identifiers))
        if reenroll:
            current = self._current_certificate(peer, peer_cert)
            if asked and set(asked) != set(identifiers_of(current, prof.flavour)):
                raise _refuse("simplereenroll: the CSR's identifiers differ from the certificate being renewed")
            entitled |= set(identifiers_of(current, prof.flavour))
        not_ok = sorted(set(asked) - entitled)
        if not_ok:
            raise _refuse(f"the enrolee is not entitled to {not_ok}")
        granted = list(dict.fromkeys([*(asked or prof.canonical(prof.identifiers)),
                                      *prof.canonical(prof.added_identifiers)]))

        # EKUs (step 10): a subset of what the profile allows; none asked = all allowed
        allowed = prof.allowed_ekus()
        try:
            asked_ekus = list(csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            asked_ekus = []
        except ValueError:
            raise ParseError("CSR extensions are malformed") from None
        bad = [o.dotted_string for o in asked_ekus if o not in allowed]
        if bad:
            raise _refuse(f"extendedKeyUsage {bad} is not allowed for this enrolee")
        usages = list(dict.fromkeys([*BASE_EKUS, *(asked_ekus or allowed)]))
        return _Grant(csr, prof, crec.rec_id, crec.doc["ke_id"], granted, usages)

    def _current_certificate(self, peer: SessionPeer, peer_cert: x509.Certificate | None) -> x509.Certificate:
        if peer_cert is None or not peer.credential.startswith("cert:"):
            raise _refuse("simplereenroll needs a certificate TLS session with the current certificate")
        rec = self.state.store.find_record(NS_EST_ISSUED, format(peer_cert.serial_number, "x"))
        if rec is None or rec.doc.get("enrolee_id") != peer.identity:
            raise _refuse("simplereenroll: the session certificate was not provisioned by this MEF")
        if rec.doc.get("revoked"):
            raise _refuse("simplereenroll: the session certificate is revoked")
        return peer_cert

    def _commit(self, peer: SessionPeer, grant: _Grant, leaf: x509.Certificate, action: str, *, reenroll: bool,
                server_keygen: bool = False) -> None:
        """Consume the challenge, record the issuance and audit it (serial and names, never key bytes)."""
        challenge_id, ke_id, prof = grant.challenge_id, grant.ke_id, grant.profile
        granted, usages = grant.identifiers, grant.usages
        serial = format(leaf.serial_number, "x")
        anchors = [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.ca.ca_certificates()
                   if c.issuer == c.subject]
        types = [_TYPE_OF[o.dotted_string].value for o in usages if o.dotted_string in _TYPE_OF]
        with self.state.store.transaction() as tx:
            try:
                tx.take_record(NS_EST_CHALLENGE, challenge_id)  # single use, atomically
            except NotFound:
                raise _refuse("challengePassword is wrong, used or expired") from None
            try:
                tx.put_record(NS_EST_ISSUED, serial, {
                    "enrolee_id": peer.identity, "ke_id": ke_id, "flavour": prof.flavour.value,
                    "identifiers": list(granted), "ekus": [o.dotted_string for o in usages],
                    "security_types": types, "not_after": leaf.not_valid_after_utc.isoformat(),
                    "sha256": leaf.fingerprint(_sha256()).hex(), "issuer": leaf.issuer.rfc4514_string(),
                    "installed": False, "reenroll": reenroll,
                    "server_keygen": server_keygen},
                    expires_at=leaf.not_valid_after_utc, if_absent=True)
            except DuplicateError:
                raise ESTError("certificate serial collision", rsc=RSC.CONFLICT) from None
            for ident in granted:  # the certificate authenticates this enrolee to the MEF from now on
                key = f"{prof.flavour.value}|{ident}"
                old = tx.find_record(NS_CERTIDX, key)
                if old is not None and old.doc.get("id") != peer.identity:
                    raise ESTError(f"identifier {ident!r} already belongs to another entity", rsc=RSC.CONFLICT)
                doc = dict(old.doc) if old is not None else {"kind": "enrolee", "id": peer.identity}
                doc["extra_anchors_pem"] = sorted(set(doc.get("extra_anchors_pem", [])) | set(anchors))
                tx.put_record(NS_CERTIDX, key, doc)
            tx.append_audit("mef", action, peer.identity, "ok",
                            {"serial": serial, "identifiers": list(granted), "security_types": types,
                             "via": peer.credential})

    # -- Enrolment Exchange step 6 -----------------------------------------------------
    def complete(self, body: bytes, peer: SessionPeer) -> bytes:
        """``POST /enrolment/complete``: the enrolee reports the certificate installed."""
        try:
            doc = loads_json(body)  # unique member names, no NaN/Infinity
        except ParseError:
            raise ParseError("completion: body is not strict JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"InstructionType", "Status", "CertificateSerial"}:
            raise ParseError("completion: members must be InstructionType, Status, CertificateSerial")
        if doc["InstructionType"] != InstructionType.CERTIFICATE_ENROLMENT.value or doc["Status"] is not True:
            raise ParseError("completion: only a successful CertificateEnrolment can be reported")
        serial = doc["CertificateSerial"]
        if not isinstance(serial, str) or not _SERIAL_RE.fullmatch(serial):
            raise ParseError("completion: CertificateSerial must be the certificate's serial number in hex")
        serial = format(int(serial.replace(":", ""), 16), "x")  # openssl prints upper case, maybe 0-padded
        if peer.kind not in ("enrolee", "reauth"):
            raise _refuse("only an enrolee reports certificate enrolment")
        with self.state.store.transaction() as tx:
            rec = tx.find_record(NS_EST_ISSUED, serial)
            if rec is None or rec.doc.get("enrolee_id") != peer.identity:
                raise _refuse(f"certificate {serial[:40]!r} was not issued to this enrolee", RSC.NOT_FOUND)
            updated = dict(rec.doc, installed=True)
            tx.update_record(NS_EST_ISSUED, rec.rec_id, updated, expected_version=rec.version)
            tx.append_audit("mef", "est-installed", peer.identity, "ok", {"serial": rec.rec_id})
        return json.dumps({"Status": True}).encode()


def _sha256() -> hashes.HashAlgorithm:
    return hashes.SHA256()


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _resign(csr: x509.CertificateSigningRequest, key: PrivateKey) -> x509.CertificateSigningRequest:
    """The client's request (subject, extensions) for ``key`` instead of its placeholder key."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(key, signature_hash_for(key))

