"""The enrolee side of Certificate Enrolment with EST (TS-0003 8.3.6.2.2/8.3.6.2.3; seed 004
8.3.3.1 steps 5-6 and 8.3.3.3; RFC 7030 4.1, 4.2, 4.5).

:func:`est_enrol` runs, in one TLS session with the MEF (PSK or certificate RSPF):

1. the Enrolment Exchange with ``CertificateEnrolmentIndication`` (the MEF answers with
   a CertificateEnrolment instruction carrying the one-time challengePassword and the
   communication security types the certificate may be used for - steps 1-2);
2. ``GET /.well-known/est/cacerts`` (steps 3-5: trust anchors = the self-signed
   certificates, the others are kept as intermediates);
3. ``GET /.well-known/est/csrattrs`` (steps 6-7);
4. a key pair (P-256 by default, step 8) and a CSR with the challengePassword and the
   extensions the MEF asked for (subjectAltName, extendedKeyUsage), copied verbatim;
5. ``POST simpleenroll`` (or ``simplereenroll`` over a certificate session with the
   current certificate), steps 9-14; the certificate is checked (our key, path to an
   installed trust anchor, the identifiers asked for);
   with ``server_keygen=True`` instead ``POST serverkeygen`` (TS-0003 8.3.6.2.1 last
   paragraph, RFC 7030 4.4): the CSR is signed with a throwaway P-256 placeholder key,
   the MEF returns the key it generated (``application/pkcs8``) and the certificate in
   a ``multipart/mixed`` (:func:`parse_serverkeygen`), checked as above against the
   returned key;
6. ``POST /enrolment/complete`` - the enrolee reports success (8.3.3.1 step 6).

:meth:`ProvisionedCertificate.install` writes ``key.pem`` (0600), ``cert.pem`` (leaf +
intermediates), ``trust-anchors.pem`` and ``est.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from email import policy as email_policy
from email.message import Message
from email.parser import BytesParser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, ExtensionOID

from m2msec.errors import ParseError
from m2msec.keys import LABEL_BOOTSTRAP, LABEL_BOOTSTRAP_REAUTH, ke_id, kre_id, parse_key_id, split_exported
from m2msec.mef.client import Enrolment, MEFClientError, _rsc_of
from m2msec.mef.est import (
    COMPLETE_PATH,
    CT_MULTIPART,
    CT_PKCS7,
    CT_PKCS8,
    CT_PKCS10,
    EKU_FOR,
    EST_PREFIX,
    M2MSEC_EKU_ARC,
    SecurityType,
    load_certs_only,
)
from m2msec.mef.estder import decode_csrattrs
from m2msec.mef.protocol import ENROLMENT_PATH, EnrolmentRequest, EnrolmentResponse, Instruction, InstructionType
from m2msec.net.h11io import send_request
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, KeyType, PeerCertInfo, generate_private_key, identifiers_of
from m2msec.pki import verify_peer_certificate
from m2msec.pki.crl import CRLSource, RevocationPolicy
from m2msec.pki.ca import private_key_pem, write_private_file
from m2msec.pki.keypolicy import PrivateKey, signature_hash_for
from m2msec.tls.aio import TLSStreamWriter, open_connection
from m2msec.tls.engine import CertCredentials, TLSConfig

__all__ = ["ESTClientError", "ESTSession", "ProvisionedCertificate", "est_enrol", "load_installed",
           "parse_serverkeygen", "serverkeygen"]

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ESTClientError(MEFClientError):
    """The MEF refused an EST step (``rsc`` from X-M2M-RSC), or its answer did not check out."""


@dataclass(frozen=True)
class ProvisionedCertificate:
    """An MEF-provisioned certificate with its key, chain, trust anchors and allowed uses."""

    private_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()  # intermediates (root not included)
    trust_anchors: tuple[x509.Certificate, ...] = ()
    security_types: tuple[SecurityType, ...] = ()
    enrolee_id: str = ""
    flavour: CertificateFlavour | None = None

    def __repr__(self) -> str:
        return (f"ProvisionedCertificate(serial={self.serial}, identifiers={self.identifiers}, "
                f"security_types={[t.value for t in self.security_types]}, key=<hidden>)")

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def identifiers(self) -> list[str]:
        return identifiers_of(self.certificate, self.flavour) if self.flavour else []

    @property
    def ekus(self) -> list[str]:
        try:
            return [o.dotted_string for o in
                    self.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
        except x509.ExtensionNotFound:
            return []

    def credentials(self) -> CertCredentials:
        """For :func:`m2msec.mef.client.mef_tls_config`, SAEF and ESCertKE end-points."""
        return CertCredentials(self.private_key, self.certificate, self.chain)

    def install(self, directory: Path | str) -> dict[str, Path]:
        """Write key (0600, unencrypted PKCS#8 PEM), certificate chain, trust anchors, metadata."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        paths = {"key": d / "key.pem", "cert": d / "cert.pem", "anchors": d / "trust-anchors.pem",
                 "meta": d / "est.json"}
        write_private_file(paths["key"], private_key_pem(self.private_key))
        paths["cert"].write_bytes(b"".join(c.public_bytes(pem) for c in (self.certificate, *self.chain)))
        paths["anchors"].write_bytes(b"".join(c.public_bytes(pem) for c in self.trust_anchors))
        paths["meta"].write_text(json.dumps({
            "enrolee_id": self.enrolee_id, "serial": self.serial,
            "flavour": self.flavour.value if self.flavour else None, "identifiers": self.identifiers,
            "security_types": [t.value for t in self.security_types], "ekus": self.ekus,
            "not_after": self.certificate.not_valid_after_utc.isoformat()}, indent=2) + "\n")
        return paths


def load_installed(directory: Path | str) -> ProvisionedCertificate:
    """What :meth:`ProvisionedCertificate.install` wrote."""
    d = Path(directory)
    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), None)
    certs = x509.load_pem_x509_certificates((d / "cert.pem").read_bytes())
    anchors = x509.load_pem_x509_certificates((d / "trust-anchors.pem").read_bytes())
    meta = json.loads((d / "est.json").read_text())
    return ProvisionedCertificate(key, certs[0], tuple(certs[1:]), tuple(anchors),  # type: ignore[arg-type]
                                  tuple(SecurityType(t) for t in meta.get("security_types", ())),
                                  meta.get("enrolee_id", ""),
                                  CertificateFlavour(meta["flavour"]) if meta.get("flavour") else None)


class ESTSession:
    """HTTP/1.1 keep-alive requests over one TLS connection (h11)."""

    def __init__(self, reader: asyncio.StreamReader, writer: TLSStreamWriter, host: str, timeout: float) -> None:
        self.reader, self.writer, self.host, self.timeout = reader, writer, host, timeout
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.wait_for(self._request(method, target, body, headers), self.timeout)

    async def _request(self, method: str, target: str, body: bytes,
                       headers: Sequence[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
        hdrs = [("Host", self.host), ("Content-Length", str(len(body))), ("X-M2M-RI", secrets.token_hex(8)),
                *headers]
        resp, data = await send_request(
            self.conn, self.reader, self.writer, method, target, hdrs, body,
            closed_error=lambda: ESTClientError("the MEF closed the connection", rsc=RSC.TARGET_NOT_REACHABLE))
        return resp.status_code, {k.decode().lower(): v.decode("latin-1") for k, v in resp.headers}, data

    async def checked(self, what: str, method: str, target: str, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, str], bytes]:
        status, hdrs, data = await self.request(method, target, body, headers)
        if status != 200:
            reason = data.decode("utf-8", "replace").strip()[:200]
            try:
                doc = json.loads(data)
                if isinstance(doc, dict) and "ErrorString" in doc:
                    reason = str(doc["ErrorString"])
            except (ValueError, RecursionError):
                pass
            raise ESTClientError(f"{what} refused (HTTP {status}): {reason}", rsc=_rsc_of(hdrs, status))
        return hdrs, data


_Session = ESTSession  # the name before serverkeygen made it public


def _b64_part(part: Message, what: str) -> bytes:
    cte = (part.get("Content-Transfer-Encoding") or "").strip().lower()
    if cte != "base64":
        raise ParseError(f"serverkeygen: the {what} part is not Content-Transfer-Encoding: base64")
    payload = part.get_payload()
    if not isinstance(payload, str):
        raise ParseError(f"serverkeygen: the {what} part is not a leaf part")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except ValueError:
        raise ParseError(f"serverkeygen: the {what} part is not base64") from None


def parse_serverkeygen(content_type: str, body: bytes) -> tuple[PrivateKey, list[x509.Certificate]]:
    """The private key and certificates of a /serverkeygen answer (RFC 7030 4.4.2).

    ``multipart/mixed`` with exactly one ``application/pkcs8`` part (unencrypted DER
    PrivateKeyInfo, EC or RSA) and one ``application/pkcs7-mime`` certs-only part, both
    base64; the parts are told apart by type, not order.  Raises :class:`ParseError`
    (never quoting the key) on anything else.
    """
    if content_type.split(";", 1)[0].strip().lower() != CT_MULTIPART:
        raise ParseError(f"serverkeygen: expected {CT_MULTIPART}, got {content_type[:60]!r}")
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")
    msg = BytesParser(policy=email_policy.compat32).parsebytes(head + body)
    parts = msg.get_payload() if msg.is_multipart() else None
    if msg.defects or not isinstance(parts, list) or any(p.defects for p in parts):
        raise ParseError("serverkeygen: malformed multipart body")
    keys = [p for p in parts if p.get_content_type() == CT_PKCS8]
    p7s = [p for p in parts if p.get_content_type() == CT_PKCS7]
    if len(parts) != 2 or len(keys) != 1 or len(p7s) != 1:
        raise ParseError(f"serverkeygen: expected one {CT_PKCS8} and one {CT_PKCS7} part, got "
                         f"{[p.get_content_type() for p in parts]}")
    smime = p7s[0].get_param("smime-type")
    if smime is not None and str(smime).lower() != "certs-only":
        raise ParseError("serverkeygen: the certificate part is not smime-type=certs-only")
    key_der = _b64_part(keys[0], "private key")
    try:
        key = serialization.load_der_private_key(key_der, None)
    except (ValueError, TypeError):
        raise ParseError("serverkeygen: the key part is not an unencrypted DER PKCS#8 private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ParseError(f"serverkeygen: unsupported private key type {type(key).__name__}")
    certs = load_certs_only(base64.encodebytes(_b64_part(p7s[0], "certificate")))
    if not certs:
        raise ParseError("serverkeygen: the certificate part holds no certificate")
    return key, certs


async def serverkeygen(session: ESTSession, csr: x509.CertificateSigningRequest
                       ) -> tuple[PrivateKey, list[x509.Certificate]]:
    """``POST /.well-known/est/serverkeygen`` on an open session: (generated key, certificates).

    ``csr`` is signed with a placeholder key (RFC 7030 4.4.1); the key returned must be
    the one the (first) certificate certifies.  :func:`est_enrol` with
    ``server_keygen=True`` runs the whole procedure (Enrolment Exchange, cacerts,
    csrattrs, this, path check, completion report).
    """
    der = csr.public_bytes(serialization.Encoding.DER)
    hdrs, body = await session.checked("serverkeygen", "POST", EST_PREFIX + "serverkeygen", base64.encodebytes(der),
                                       [("Content-Type", CT_PKCS10), ("Content-Transfer-Encoding", "base64")])
    key, certs = parse_serverkeygen(hdrs.get("content-type", ""), body)
    if _spki(certs[0].public_key()) != _spki(key.public_key()):
        raise ESTClientError("serverkeygen: the returned key is not the certified one", rsc=RSC.BAD_REQUEST)
    if _spki(certs[0].public_key()) == _spki(csr.public_key()):
        raise ESTClientError("serverkeygen: the MEF certified the placeholder key", rsc=RSC.BAD_REQUEST)
    return key, certs


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def build_est_csr(key: PrivateKey, challenge: str, extensions: dict[str, tuple[bool, bytes]]) -> x509.CertificateSigningRequest:
    """A CSR (10.1.4) with the challengePassword and the requested extensions copied verbatim."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    san = ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string
    for oid, (critical, value) in extensions.items():
        # an empty subject makes subjectAltName critical (RFC 5280 4.2.1.6)
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value),
                                        critical=critical or oid == san)
    builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    return builder.sign(key, signature_hash_for(key))


async def est_enrol(host: str, port: int, tls: TLSConfig, *, request: EnrolmentRequest | None = None,
                    key: PrivateKey | None = None, key_type: KeyType = KeyType.EC_P256, reenroll: bool = False,
                    mef_fqdn: str | None = None, clock: Clock = _utcnow, timeout: float = 10.0,
                    csr_hook: Callable[[PrivateKey, str, dict[str, tuple[bool, bytes]]],
                                       x509.CertificateSigningRequest] | None = None,
                    server_keygen: bool = False,
                    crls: CRLSource = None,
                    revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
                    ) -> tuple[Enrolment, ProvisionedCertificate]:
    """Enrolment Exchange + EST in one TLS session; returns the Enrolment and the certificate.

    ``csr_hook`` (tests, custom CSRs) replaces :func:`build_est_csr`.  ``server_keygen``:
    the MEF generates the key (``/serverkeygen``); the CSR is then signed with a throwaway
    placeholder key (``key_type``) and the returned :class:`ProvisionedCertificate` holds
    the MEF's key.  ``crls`` / ``revocation``: certificate status check (8.1.2.2) of the
    issued certificate's path before it is installed (step 15).
    """
    request = request or EnrolmentRequest(certificate_enrolment=True)
    if not request.certificate_enrolment:
        raise ValueError("EST needs CertificateEnrolmentIndication = true")
    if server_keygen and (reenroll or key is not None):
        raise ValueError("server_keygen: the MEF makes the key (no key=) and serverkeygen is not a re-enrolment")
    reader, writer = await open_connection(host, port, tls, timeout=timeout)
    try:
        s = ESTSession(reader, writer, f"{host}:{port}", timeout)
        engine = writer.engine
        ke, rel_ke = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP, 48))
        kre, rel_kre = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP_REAUTH, 48))
        _, body = await s.checked("enrolment", "POST", ENROLMENT_PATH, request.to_json(),
                                  [("Content-Type", "application/json")])
        rsp = EnrolmentResponse.from_json(body)
        fqdn = mef_fqdn or parse_key_id(rsp.ke_id).fqdn
        if rsp.ke_id != ke_id(rel_ke, fqdn) or rsp.kre_id != kre_id(rel_kre, fqdn):
            raise ESTClientError("the MEF's KeID/KreID do not match this session's exported keys",
                                 rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
        enrolment = Enrolment(rsp.ke_id, ke, rsp.kre_id, kre, rsp.enrolee_id, rsp.expiry, rsp.instructions,
                              rsp.direct_keys)
        ins = _certificate_instruction(rsp.instructions)
        challenge = ins.params.get("ChallengePassword")
        if not isinstance(challenge, str) or not challenge:
            raise ESTClientError("the CertificateEnrolment instruction carries no ChallengePassword",
                                 rsc=RSC.BAD_REQUEST)
        try:
            types = tuple(SecurityType(t) for t in ins.params.get("CommunicationSecurityTypes", ()))  # step 2
            flavour = CertificateFlavour(ins.params["CertificateType"])
        except (ValueError, KeyError, TypeError):
            raise ParseError("CertificateEnrolment instruction: bad CommunicationSecurityTypes/CertificateType") from None

        # steps 3-5: trust anchors
        _, body = await s.checked("cacerts", "GET", EST_PREFIX + "cacerts")
        cas = load_certs_only(body)
        anchors = tuple(c for c in cas if c.issuer == c.subject)
        intermediates = tuple(c for c in cas if c.issuer != c.subject)
        if not anchors:
            raise ESTClientError("/cacerts holds no trust anchor", rsc=RSC.BAD_REQUEST)

        # steps 6-7: CSR attributes
        _, body = await s.checked("csrattrs", "GET", EST_PREFIX + "csrattrs")
        try:
            attrs = decode_csrattrs(base64.b64decode(b"".join(body.split()), validate=True))
        except ValueError:
            raise ParseError("csrattrs is not base64") from None
        if AttributeOID.CHALLENGE_PASSWORD.dotted_string not in attrs.oids:
            raise ESTClientError("csrattrs does not ask for a challengePassword", rsc=RSC.BAD_REQUEST)
        unknown = [o for o in attrs.extended_key_usages()
                   if o.startswith(M2MSEC_EKU_ARC + ".") and o not in {EKU_FOR[t].dotted_string for t in types}]
        if unknown:
            raise ESTClientError(f"csrattrs asks for EKUs {unknown} outside the instructed security types",
                                 rsc=RSC.BAD_REQUEST)

        # steps 8-9: key pair and CSR
        key = key or generate_private_key(key_type)  # a placeholder with server_keygen
        csr = (csr_hook or build_est_csr)(key, challenge, dict(attrs.extensions))
        if server_keygen:
            op = "serverkeygen"
            key, issued = await serverkeygen(s, csr)
        else:
            der = csr.public_bytes(serialization.Encoding.DER)
            op = "simplereenroll" if reenroll else "simpleenroll"
            _, body = await s.checked(op, "POST", EST_PREFIX + op, base64.encodebytes(der),
                                      [("Content-Type", CT_PKCS10), ("Content-Transfer-Encoding", "base64")])
            issued = load_certs_only(body)
        if not issued:
            raise ESTClientError(f"{op} returned no certificate", rsc=RSC.BAD_REQUEST)
        leaf = issued[0]

        # step 15: check before installing
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, pub) != \
                key.public_key().public_bytes(serialization.Encoding.DER, pub):
            raise ESTClientError("the issued certificate is not for our key", rsc=RSC.BAD_REQUEST)
        idents = identifiers_of(leaf, flavour)
        if not idents:
            raise ESTClientError(f"the issued certificate has no {flavour.value} identifier", rsc=RSC.BAD_REQUEST)
        chain = tuple(c for c in intermediates if c not in issued[1:]) + tuple(issued[1:])
        verify_peer_certificate([leaf, *chain], expected=PeerCertInfo(flavour, idents[0]), trust_anchors=list(anchors),
                                now=clock(), crls=crls, revocation=revocation)
        prov = ProvisionedCertificate(key, leaf, chain, anchors, types, rsp.enrolee_id, flavour)

        # Enrolment Exchange step 6: report success
        await s.checked("completion", "POST", COMPLETE_PATH, json.dumps(
            {"InstructionType": InstructionType.CERTIFICATE_ENROLMENT.value, "Status": True,
             "CertificateSerial": prov.serial}).encode(), [("Content-Type", "application/json")])
        return enrolment, prov
    finally:
        writer.close()


def _certificate_instruction(instructions: Sequence[Instruction]) -> Instruction:
    for i in instructions:
        if i.type is InstructionType.CERTIFICATE_ENROLMENT:
            return i
    raise ESTClientError("the MEF did not instruct Certificate Enrolment", rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
