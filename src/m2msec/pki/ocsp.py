"""Certificate status with OCSP (TS-0003 8.1.2.2 "Certificate status verification"; RFC 6960, RFC 5019).

TS-0003 8.1.2.2 lets an entity use the HTTP mapping of OCSP (RFC 6960 Appendix A)
or OCSP stapling (RFC 6066 section 8) next to CRLs.  This module is the sans-I/O
core, on :mod:`cryptography.x509.ocsp`:

* :func:`build_request` - a one-certificate OCSP request for (cert, issuer); CertID
  hash SHA-1 by default (RFC 5019 2.1.1, what deployed responders expect; the CertID
  is a lookup key, not a signature), with an optional nonce (RFC 8954: 32 random octets).
* :func:`verify_response` - a response is accepted only if: responseStatus is
  successful; it is a basic response whose signature (SHA-2 only: ECDSA or RSA
  PKCS#1 v1.5) verifies with either the issuer's key (the responderID names the
  issuer by name or key hash) or with a *delegated responder* certificate carried in
  the response, issued directly by that issuer, with extendedKeyUsage
  id-kp-OCSPSigning, keyUsage (if present) digitalSignature, SHA-2 signed, within its
  validity period, with a key that passes the key policy (RFC 6960 4.2.2.2; its own
  status is not checked, as with id-pkix-ocsp-nocheck); a SingleResponse has the
  CertID of the certificate (hash SHA-1/SHA-2 recomputed from the issuer's name and
  key, serial equal); thisUpdate <= now + :data:`CLOCK_SKEW`; now < nextUpdate, or,
  without nextUpdate, now - thisUpdate <= :data:`DEFAULT_MAX_AGE`; the nonce echoed
  when one was sent.  Any failure raises :class:`OCSPResponseError` with an
  :class:`OCSPFailure` code.  The result is an :class:`OCSPResult` (GOOD / REVOKED with
  time and reason / UNKNOWN).
* :class:`OCSPResponder` - the responder side for a :class:`~m2msec.pki.ca.DevCA`:
  answers for the certificates of the CA's root and intermediate (good unless on
  the CA's revocation list, revoked with time and reason; unknown for the CA
  certificate asked of itself and for serials an optional ``is_issued`` hook denies),
  ``unauthorized`` for CertIDs of other issuers, ``malformedRequest`` for anything that
  does not parse as a one-certificate request.  Responses are signed by the CA itself
  (default) or by a delegated responder certificate (:meth:`OCSPResponder.with_delegated_signer`);
  responderID byHash; thisUpdate = producedAt = now; nextUpdate = now + validity
  (default 1 h); the request's nonce is echoed.
* :class:`OCSPStore` - held responses (fetched or stapled) that path verification
  consults (:func:`m2msec.pki.crl.check_path_revocation`, parameter ``ocsp``): each is
  verified at use against the issuer certificate of the validated path; see
  :func:`ocsp_evidence`.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from m2msec.errors import M2MSecError, ParseError
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.pki.keypolicy import DEFAULT_KEY_POLICY, KeyPolicy, PrivateKey, signature_hash_for

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_AGE",
    "DEFAULT_RESPONSE_VALIDITY",
    "NONCE_LENGTH",
    "OCSPFailure",
    "OCSPRequestError",
    "OCSPResponder",
    "OCSPResponseError",
    "OCSPResult",
    "OCSPStatus",
    "OCSPStore",
    "build_request",
    "cert_id_matches",
    "issue_responder_certificate",
    "OCSPEvidence",
    "load_request",
    "load_response",
    "ocsp_evidence",
    "verify_response",
]

CLOCK_SKEW = timedelta(minutes=5)  # how far in the future thisUpdate may lie
DEFAULT_MAX_AGE = timedelta(hours=1)  # a response without nextUpdate is current this long after thisUpdate
DEFAULT_RESPONSE_VALIDITY = timedelta(hours=1)  # responder: nextUpdate - thisUpdate
NONCE_LENGTH = 32  # RFC 8954: 1..32 octets
_SIG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_CERTID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}


class OCSPStatus(str, enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class OCSPFailure(str, enum.Enum):
    """Why a response was refused (one code per check)."""

    MALFORMED = "MALFORMED"  # not DER / not a basic response / unparsable field
    UNSUCCESSFUL = "UNSUCCESSFUL"  # responseStatus other than successful
    BAD_SIGNATURE = "BAD_SIGNATURE"  # the signature does not verify with the responder key
    UNAUTHORIZED_SIGNER = "UNAUTHORIZED_SIGNER"  # neither the issuer nor a valid delegated responder
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"  # signature hash outside SHA-2, unknown key type
    CERT_ID_MISMATCH = "CERT_ID_MISMATCH"  # no SingleResponse for this certificate
    NOT_YET_VALID = "NOT_YET_VALID"  # thisUpdate beyond now + skew
    STALE = "STALE"  # nextUpdate passed, or no nextUpdate and older than the max age
    NONCE_MISSING = "NONCE_MISSING"
    NONCE_MISMATCH = "NONCE_MISMATCH"


class OCSPResponseError(M2MSecError):
    """An OCSP response cannot be used as certificate status evidence."""

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED

    def __init__(self, failure: OCSPFailure, message: str) -> None:
        super().__init__(f"{failure.value}: {message}")
        self.failure = failure
        self.detail = message


class OCSPRequestError(ParseError):
    """Bytes that are not a (supported) OCSP request."""


@dataclass(frozen=True)
class OCSPResult:
    """The verified status of one certificate."""

    status: OCSPStatus
    serial_number: int
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    delegated: bool = False  # signed by a delegated responder (not the issuer key)

    def current(self, now: datetime, max_age: timedelta = DEFAULT_MAX_AGE, skew: timedelta = CLOCK_SKEW) -> bool:
        if self.this_update > now + skew:
            return False
        if self.next_update is not None:
            return now < self.next_update
        return now - self.this_update <= max_age


def _fail(f: OCSPFailure, msg: str) -> OCSPResponseError:
    return OCSPResponseError(f, msg)


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """Hash of the subjectPublicKey BIT STRING value (RFC 6960 4.1.1 issuerKeyHash / 4.2.1 byKey)."""
    h = hashes.Hash(algorithm)
    h.update(_subject_public_key_bits(cert))
    return h.finalize()


def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER TLV at ``data[i]``."""
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i:i + k], "big")
        i += k
    if i + n > len(data):
        raise ValueError("truncated DER")
    return tag, i, i + n


def _subject_public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value (without the unused-bits octet) of ``cert``."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    _, body, _ = _tlv(spki, 0)  # SubjectPublicKeyInfo SEQUENCE
    _, _, alg_end = _tlv(spki, body)  # AlgorithmIdentifier
    tag, start, end = _tlv(spki, alg_end)
    if tag != 0x03 or spki[start] != 0:
        raise ValueError("unexpected SubjectPublicKeyInfo encoding")
    return spki[start + 1:end]


def _name_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(cert.subject.public_bytes())
    return h.finalize()


def _certid_hash(name: str) -> hashes.HashAlgorithm | None:
    cls = _CERTID_HASHES.get(name)
    return cls() if cls is not None else None


def cert_id_matches(issuer_name_hash: bytes, issuer_key_hash: bytes, algorithm: hashes.HashAlgorithm,
                    issuer: x509.Certificate) -> bool:
    """Do the CertID hashes name ``issuer`` (hash algorithm SHA-1 or SHA-2)?"""
    alg = _certid_hash(algorithm.name)
    if alg is None:
        return False
    return issuer_name_hash == _name_hash(issuer, alg) and issuer_key_hash == _key_hash(issuer, alg)


# ------------------------------------------------------------------ requests


def build_request(
    cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bool | bytes = True,
    algorithm: hashes.HashAlgorithm | None = None,
) -> tuple[ocsp.OCSPRequest, bytes | None]:
    """An OCSP request for ``cert`` issued by ``issuer`` and the nonce it carries (None without).

    ``nonce=True`` draws :data:`NONCE_LENGTH` octets from ``os.urandom``; bytes are used as
    given (1..32 octets); False sends none.  ``algorithm``: the CertID hash (default SHA-1).
    """
    value: bytes | None
    if nonce is True:
        value = os.urandom(NONCE_LENGTH)
    elif nonce is False:
        value = None
    else:
        value = bytes(nonce)
        if not 1 <= len(value) <= NONCE_LENGTH:
            raise ValueError(f"an OCSP nonce has 1..{NONCE_LENGTH} octets")
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())  # noqa: S303
    if value is not None:
        b = b.add_extension(x509.OCSPNonce(value), critical=False)
    return b.build(), value


def load_request(data: bytes) -> ocsp.OCSPRequest:
    """Parse a DER request (exactly one certificate); :class:`OCSPRequestError` otherwise."""
    try:
        req = ocsp.load_der_ocsp_request(data)
        req.serial_number  # noqa: B018 - force the lazy parse of the one request
        list(req.extensions)
    except (ValueError, NotImplementedError, TypeError):
        raise OCSPRequestError("not a one-certificate DER OCSP request") from None
    return req


def _nonce_of(exts: x509.Extensions) -> bytes | None:
    try:
        return exts.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


# ------------------------------------------------------------------ response verification


def load_response(data: bytes) -> ocsp.OCSPResponse:
    """Parse DER; :class:`OCSPResponseError` MALFORMED when it does not parse."""
    try:
        return ocsp.load_der_ocsp_response(data)
    except (ValueError, TypeError):
        raise _fail(OCSPFailure.MALFORMED, "not a DER OCSP response") from None


def _verify_sig(key: object, signature: bytes, data: bytes, h: hashes.HashAlgorithm) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(h))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), h)
        else:
            raise _fail(OCSPFailure.UNSUPPORTED_ALGORITHM, "responder key type is not supported")
    except InvalidSignature:
        return False
    return True


def _responder_id_names(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    return resp.responder_key_hash == _key_hash(cert, hashes.SHA1())  # noqa: S303 - RFC 6960 4.2.1 KeyHash


def _delegate_problem(d: x509.Certificate, issuer: x509.Certificate, now: datetime, key_policy: KeyPolicy) -> str | None:
    if d.issuer != issuer.subject:
        return "the responder certificate was not issued by the certificate's issuer"
    try:
        d.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return "the responder certificate's signature does not verify with the issuer's key"
    try:
        h = d.signature_hash_algorithm
    except UnsupportedAlgorithm:
        h = None
    if not isinstance(h, _SIG_HASHES):
        return "the responder certificate is not SHA-2 signed"
    try:
        eku = d.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "the responder certificate has no extendedKeyUsage id-kp-OCSPSigning"
    except ValueError:
        return "the responder certificate's extensions cannot be parsed"
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        return "the responder certificate's extendedKeyUsage lacks id-kp-OCSPSigning"
    try:
        ku = d.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return "the responder certificate's keyUsage lacks digitalSignature"
    except x509.ExtensionNotFound:
        pass
    for e in d.extensions:
        if e.critical and isinstance(e.value, x509.UnrecognizedExtension):
            return "the responder certificate has an unsupported critical extension"
    if not d.not_valid_before_utc <= now <= d.not_valid_after_utc:
        return "the responder certificate is outside its validity period"
    try:
        key_policy.check(d.public_key())
    except (M2MSecError, UnsupportedAlgorithm):
        return "the responder certificate's key is outside the key policy"
    return None


def verify_response(
    response: ocsp.OCSPResponse | bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: datetime,
    nonce: bytes | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
    clock_skew: timedelta = CLOCK_SKEW,
    key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
    check_time: bool = True,
) -> OCSPResult:
    """Verify ``response`` as the status of ``cert`` issued by ``issuer`` (rules: module docstring).

    ``nonce``: the nonce the request carried (must be echoed); None when none was sent
    (a nonce in the response is then ignored).  ``check_time=False`` skips the
    thisUpdate/nextUpdate checks (used for cached REVOKED evidence, which never expires).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    resp = load_response(response) if isinstance(response, bytes | bytearray) else response
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _fail(OCSPFailure.UNSUCCESSFUL, f"responseStatus {resp.response_status.name}")
    try:
        sig_hash = resp.signature_hash_algorithm
    except UnsupportedAlgorithm:
        sig_hash = None
    except ValueError:
        raise _fail(OCSPFailure.MALFORMED, "the response cannot be parsed") from None
    if not isinstance(sig_hash, _SIG_HASHES):
        raise _fail(OCSPFailure.UNSUPPORTED_ALGORITHM, "the response is not signed with SHA-256/384/512")
    try:
        tbs, signature = resp.tbs_response_bytes, resp.signature
        singles = list(resp.responses)
        carried = list(resp.certificates)
        exts = resp.extensions
        produced_at = resp.produced_at_utc
    except ValueError:
        raise _fail(OCSPFailure.MALFORMED, "the response cannot be parsed") from None
    # Signer: the issuer itself, or a delegated responder certificate issued by it (RFC 6960 4.2.2.2).
    delegated = False
    if _responder_id_names(resp, issuer):
        signer = issuer
    else:
        cands = [c for c in carried if _responder_id_names(resp, c)]
        if not cands:
            raise _fail(OCSPFailure.UNAUTHORIZED_SIGNER,
                        "the responder is neither the issuer nor a responder certificate in the response")
        problem = _delegate_problem(cands[0], issuer, now, key_policy)
        if problem is not None:
            raise _fail(OCSPFailure.UNAUTHORIZED_SIGNER, problem)
        signer, delegated = cands[0], True
    if not _verify_sig(signer.public_key(), signature, tbs, sig_hash):
        raise _fail(OCSPFailure.BAD_SIGNATURE, "the response signature does not verify with the responder key")
    # The SingleResponse for this certificate.
    single = None
    for s in singles:
        try:
            if s.serial_number == cert.serial_number and cert_id_matches(
                    s.issuer_name_hash, s.issuer_key_hash, s.hash_algorithm, issuer):
                single = s
                break
        except UnsupportedAlgorithm:
            continue
    if single is None:
        raise _fail(OCSPFailure.CERT_ID_MISMATCH,
                    f"no SingleResponse for serial {cert.serial_number:x} of this issuer")
    if nonce is not None:
        got = _nonce_of(exts)
        if got is None:
            raise _fail(OCSPFailure.NONCE_MISSING, "the request carried a nonce that the response does not echo")
        if got != nonce:
            raise _fail(OCSPFailure.NONCE_MISMATCH, "the response nonce differs from the request's")
    try:
        single_exts = list(resp.single_extensions) if len(singles) == 1 else []
    except ValueError:
        raise _fail(OCSPFailure.MALFORMED, "the response cannot be parsed") from None
    for e in [*exts, *single_exts]:
        if e.critical and isinstance(e.value, x509.UnrecognizedExtension):
            raise _fail(OCSPFailure.MALFORMED, f"unsupported critical extension {e.oid.dotted_string}")
    st = single.certificate_status
    result = OCSPResult(
        status=OCSPStatus.GOOD if st is ocsp.OCSPCertStatus.GOOD else
        OCSPStatus.REVOKED if st is ocsp.OCSPCertStatus.REVOKED else OCSPStatus.UNKNOWN,
        serial_number=cert.serial_number, this_update=single.this_update_utc, next_update=single.next_update_utc,
        produced_at=produced_at, revocation_time=single.revocation_time_utc,
        revocation_reason=single.revocation_reason, delegated=delegated)
    if check_time:
        if result.this_update > now + clock_skew:
            raise _fail(OCSPFailure.NOT_YET_VALID, f"thisUpdate {result.this_update.isoformat()} is in the future")
        if result.next_update is not None:
            if now >= result.next_update:
                raise _fail(OCSPFailure.STALE, f"nextUpdate {result.next_update.isoformat()} has passed")
        elif now - result.this_update > max_age:
            raise _fail(OCSPFailure.STALE, f"no nextUpdate and thisUpdate {result.this_update.isoformat()} "
                                           f"is older than {int(max_age.total_seconds())} s")
    return result


# ------------------------------------------------------------------ store (evidence for path verification)


class OCSPStore:
    """OCSP responses (fetched or stapled) by certificate serial number (sans-I/O; thread-safe).

    Responses are *not* verified here: :func:`ocsp_evidence` verifies each against the issuer
    of the validated path, as :class:`~m2msec.pki.crl.CRLStore` does for CRLs.  Per serial at
    most :attr:`per_serial` responses are kept, the latest thisUpdate first; a response whose
    responseStatus is not successful or that does not parse is refused
    (:class:`OCSPResponseError`).  :attr:`generation` grows at every change.
    """

    def __init__(self, responses: Iterable[ocsp.OCSPResponse | bytes] = (), *, per_serial: int = 4) -> None:
        self._lock = threading.Lock()
        self._by_serial: dict[int, tuple[ocsp.OCSPResponse, ...]] = {}
        self.per_serial = per_serial
        self._generation = 0
        for r in responses:
            self.add(r)

    def __repr__(self) -> str:
        return f"OCSPStore(serials={len(self._by_serial)})"

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_serial.values())

    def __iter__(self) -> Iterator[ocsp.OCSPResponse]:
        for v in list(self._by_serial.values()):
            yield from v

    @property
    def generation(self) -> int:
        return self._generation

    def add(self, response: ocsp.OCSPResponse | bytes) -> bool:
        """Hold ``response``; False when the same response is already held."""
        resp = load_response(bytes(response)) if isinstance(response, bytes | bytearray) else response
        if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise _fail(OCSPFailure.UNSUCCESSFUL, f"responseStatus {resp.response_status.name}")
        try:
            serials = {s.serial_number for s in resp.responses}
            der = resp.public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise _fail(OCSPFailure.MALFORMED, "the response cannot be parsed") from None
        changed = False
        with self._lock:
            for serial in serials:
                held = self._by_serial.get(serial, ())
                if any(h.public_bytes(serialization.Encoding.DER) == der for h in held):
                    continue
                new = sorted((*held, resp), key=_latest_this_update, reverse=True)[: self.per_serial]
                self._by_serial[serial] = tuple(new)
                changed = True
            if changed:
                self._generation += 1
        return changed

    def clear(self) -> None:
        with self._lock:
            self._by_serial = {}
            self._generation += 1

    def for_serial(self, serial: int) -> tuple[ocsp.OCSPResponse, ...]:
        return self._by_serial.get(serial, ())

    def serial_count(self) -> int:
        return len(self._by_serial)

    def prune(self, now: datetime, max_age: timedelta = DEFAULT_MAX_AGE) -> int:
        """Drop responses that are no longer current, except those saying REVOKED (they stay
        evidence); returns how many were dropped.  Bounds a store that a server fills with one
        answer per client certificate (:mod:`m2msec.pki.ocsp_check`)."""

        def keep(r: ocsp.OCSPResponse) -> bool:
            for s in r.responses:
                if s.certificate_status is ocsp.OCSPCertStatus.REVOKED:
                    return True
                if s.next_update_utc is not None and now < s.next_update_utc:
                    return True
                if s.next_update_utc is None and now - s.this_update_utc <= max_age:
                    return True
            return False

        dropped = 0
        with self._lock:
            new: dict[int, tuple[ocsp.OCSPResponse, ...]] = {}
            for serial, held in self._by_serial.items():
                kept = tuple(r for r in held if keep(r))
                dropped += len(held) - len(kept)
                if kept:
                    new[serial] = kept
            if dropped:
                self._by_serial = new
                self._generation += 1
        return dropped


def _latest_this_update(r: ocsp.OCSPResponse) -> datetime:
    return max(s.this_update_utc for s in r.responses)


@dataclass(frozen=True)
class OCSPEvidence:
    """What the held responses say about one certificate (see :func:`ocsp_evidence`)."""

    revoked: OCSPResult | None = None  # a verified REVOKED response (current or not)
    good: OCSPResult | None = None  # a verified, current GOOD response
    problems: tuple[str, ...] = field(default=())  # why held responses for this serial were not used


def ocsp_evidence(
    store: OCSPStore | None, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime,
    max_age: timedelta = DEFAULT_MAX_AGE, key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
) -> OCSPEvidence:
    """Evidence from ``store`` for ``cert`` issued by ``issuer`` (the validated path's issuer).

    A response that verifies (signer, CertID, SHA-2) and says REVOKED counts whatever its
    times (like a stale CRL, it proves revocation); GOOD counts only while current (and
    not dated beyond the clock skew); UNKNOWN and responses that fail are not evidence.
    """
    if store is None:
        return OCSPEvidence()
    revoked = good = None
    problems: list[str] = []
    for r in store.for_serial(cert.serial_number):
        try:
            res = verify_response(r, cert, issuer, now=now, max_age=max_age, key_policy=key_policy,
                                  check_time=False)
        except OCSPResponseError as exc:
            if exc.failure is not OCSPFailure.CERT_ID_MISMATCH:  # another issuer's certificate: not ours
                problems.append(str(exc))
            continue
        if res.status is OCSPStatus.REVOKED and revoked is None:
            revoked = res
        elif res.status is OCSPStatus.GOOD and good is None and res.current(now, max_age):
            good = res
    return OCSPEvidence(revoked, good, tuple(problems))


# ------------------------------------------------------------------ responder


def _sha1_hash(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA1())  # noqa: S303 - RFC 6960 ResponderID byKey is SHA-1
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class _Signer:
    name: str  # "root" / "intermediate"
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    revoked: Callable[[], dict[int, object]] = field(repr=False)
    responder_cert: x509.Certificate | None = None
    responder_key: PrivateKey | None = field(default=None, repr=False)


class OCSPResponder:
    """Answers OCSP requests for the certificates of a :class:`~m2msec.pki.ca.DevCA` (sans-I/O).

    ``respond(der) -> der`` never raises on bad input: garbage or a request for several
    certificates gets ``malformedRequest``, a CertID of another issuer ``unauthorized``.
    ``is_issued(signer, serial)``, when given, turns serials it denies into ``unknown``
    (the development CA keeps no register of issued serials: without the hook every
    serial not revoked is ``good``, which is what a CRL says too).
    """

    def __init__(self, ca: object, *, clock: Callable[[], datetime], validity: timedelta = DEFAULT_RESPONSE_VALIDITY,
                 is_issued: Callable[[str, int], bool] | None = None) -> None:
        from m2msec.pki.ca import DevCA

        if not isinstance(ca, DevCA):
            raise TypeError("OCSPResponder needs a DevCA")
        if validity <= timedelta(0):
            raise ValueError("validity must be positive")
        self.ca = ca
        self.clock = clock
        self.validity = validity
        self.is_issued = is_issued
        self._signers: list[_Signer] = []
        for which in ("root", "intermediate"):
            try:
                cert, key = ca._signer(which)  # type: ignore[arg-type] # noqa: SLF001 - same package
            except M2MSecError:
                continue
            self._signers.append(_Signer(which, cert, key, lambda w=which: ca.revoked[w]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"OCSPResponder(ca={self.ca!r}, signers={[s.name for s in self._signers]})"

    def with_delegated_signer(self, which: str, responder_cert: x509.Certificate, responder_key: PrivateKey) -> OCSPResponder:
        """Sign the answers for ``which``'s certificates with a delegated responder certificate."""
        self._signers = [_Signer(s.name, s.cert, s.key, s.revoked, responder_cert, responder_key) if s.name == which
                         else s for s in self._signers]
        return self

    @staticmethod
    def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)

    def respond(self, data: bytes) -> bytes:
        """DER response to the DER request ``data``."""
        try:
            req = load_request(data)
            alg = _certid_hash(req.hash_algorithm.name)
        except (OCSPRequestError, UnsupportedAlgorithm):
            return self.unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if alg is None:
            return self.unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        signer = next((s for s in self._signers
                       if cert_id_matches(req.issuer_name_hash, req.issuer_key_hash, req.hash_algorithm, s.cert)), None)
        if signer is None:
            return self.unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = self.clock().replace(microsecond=0)
        serial = req.serial_number
        entry = signer.revoked().get(serial)
        rev_time = rev_reason = None
        if entry is not None:
            status = ocsp.OCSPCertStatus.REVOKED
            rev_time = entry.revocation_date  # type: ignore[attr-defined]
            rev_reason = entry.reason  # type: ignore[attr-defined]
            if rev_reason is x509.ReasonFlags.unspecified:
                rev_reason = None
        elif serial == signer.cert.serial_number or (self.is_issued is not None and not self.is_issued(signer.name, serial)):
            status = ocsp.OCSPCertStatus.UNKNOWN
        else:
            status = ocsp.OCSPCertStatus.GOOD
        b = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash, serial_number=serial,
            algorithm=req.hash_algorithm, cert_status=status, this_update=now, next_update=now + self.validity,
            revocation_time=rev_time, revocation_reason=rev_reason)
        sign_cert, sign_key = signer.cert, signer.key
        if signer.responder_cert is not None and signer.responder_key is not None:
            sign_cert, sign_key = signer.responder_cert, signer.responder_key
            b = b.certificates([sign_cert])
        b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, sign_cert)
        req_nonce = _nonce_of(req.extensions)
        if req_nonce is not None:
            b = b.add_extension(x509.OCSPNonce(req_nonce), critical=False)
        resp = b.sign(sign_key, signature_hash_for(sign_key))
        return resp.public_bytes(serialization.Encoding.DER)


def issue_responder_certificate(
    ca: object, *, now: datetime, signer: str | None = None, validity: timedelta = timedelta(days=30),
    extended_key_usage: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.OCSP_SIGNING,),
) -> tuple[x509.Certificate, PrivateKey]:
    """A delegated OCSP responder certificate of ``ca``'s ``signer`` (RFC 6960 4.2.2.2).

    EKU id-kp-OCSPSigning, keyUsage digitalSignature (critical), id-pkix-ocsp-nocheck,
    no subjectAltName (so it cannot pass as a oneM2M peer certificate).
    """
    from cryptography.x509.oid import NameOID

    from m2msec.pki.ca import DevCA
    from m2msec.pki.keypolicy import generate_private_key

    assert isinstance(ca, DevCA)
    issuer_cert, issuer_key = ca._signer(signer or ca.issuing_signer)  # type: ignore[arg-type] # noqa: SLF001
    key = generate_private_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{ca.name} OCSP Responder")])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + validity)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
         .add_extension(x509.OCSPNoCheck(), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),  # type: ignore[arg-type]
                        critical=False))
    if extended_key_usage:
        b = b.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    return b.sign(issuer_key, signature_hash_for(issuer_key)), key
