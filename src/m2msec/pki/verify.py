"""Peer certificate verification (TS-0003 clause 8.1.2.5, with 8.1.2.2 and 10.1.1).

Steps, in the clause's order:

1. Raw public key flavour: the configured public key identifier must match the
   presented key (10.1.2); nothing else is checked.
2. Other flavours: the configured globally unique identifier must exactly match
   a subjectAltName entry of the flavour's name form (see
   :mod:`m2msec.pki.identifiers`); DNS names compare ASCII case-insensitively,
   (FQDN flavour: a dNSName, or a URI consisting of scheme and that host only),
   URIs and device IDs exactly.  A certificate with no entry of the flavour's
   form fails with WRONG_FLAVOUR, one with entries of the right form but none
   equal with IDENTIFIER_MISMATCH.
3. Basic certification path validation (RFC 5280 6.1) to one of the configured
   trust anchors: signature of every link, validity of every certificate
   (anchor included), basicConstraints cA and pathLenConstraint, keyCertSign
   on issuers, name constraints of every CA (anchor included) over every
   certificate below it, and keyUsage digitalSignature on the leaf (10.1.1.1).
   Keys must satisfy the key policy and signatures must use SHA-2.
4. Certificate status (8.1.2.2 "Certificate status verification", RFC 5280
   6.3), after the path validated: every certificate below the anchor is
   checked against its issuer's CRLs from ``crls`` (a
   :class:`~m2msec.pki.crl.CRLStore` or CRL objects) under the ``revocation``
   policy - ``"off"``, ``"if-available"`` (the default: check where the
   issuer has a CRL; with no CRLs configured this is the behaviour without
   revocation checking) or ``"require"`` (a current CRL for every issuer).
   Failures: REVOKED, REVOCATION_UNKNOWN (``require`` and no current CRL),
   CRL_INVALID (see :mod:`m2msec.pki.crl` for the exact rules).  OCSP responses
   held in an :class:`~m2msec.pki.ocsp.OCSPStore` (``ocsp``) are a second source:
   REVOKED from either source wins, a current GOOD response satisfies ``require``.

The path is built by hand rather than with ``cryptography.x509.verification``:
that verifier implements the CA/B-style web profile (it rejects otherName
device IDs in name constraints and URN Node-IDs, and cannot express our
flavours), and distinct reason codes are needed for each failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from m2msec.errors import IdentifierError
from m2msec.pki.crl import CRLSource, RevocationPolicy, RevocationStatus, check_path_revocation
from m2msec.pki.errors import CertificateParseError, CertificateVerificationError, UnsupportedKeyError
from m2msec.pki.errors import VerificationReason as R
from m2msec.pki.identifiers import (
    CertificateFlavour,
    canonical_identifier,
    identifiers_in_names,
    subject_alt_names,
)
from m2msec.pki.keypolicy import DEFAULT_KEY_POLICY, KeyPolicy
from m2msec.pki.nameconstraints import first_violation, names_subject_to_constraints
from m2msec.pki.ocsp import OCSPStore
from m2msec.pki.pkid import matches_public_key_identifier, spki_der

MAX_CHAIN_LENGTH = 8
_ALLOWED_SIG_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


@dataclass(frozen=True)
class PeerCertInfo:
    """What Association Configuration says about the peer (8.1.2.4): flavour + identifier."""

    flavour: CertificateFlavour
    identifier: str


@dataclass(frozen=True)
class VerifiedPeer:
    flavour: CertificateFlavour
    identifier: str  # canonical form of the configured identifier
    certificate: x509.Certificate
    path: list[x509.Certificate] = field(default_factory=list)  # leaf ... last cert below the anchor
    trust_anchor: x509.Certificate | None = None
    revocation: tuple[RevocationStatus, ...] = ()  # status of each certificate of ``path``


def _fail(reason: R, message: str) -> CertificateVerificationError:
    return CertificateVerificationError(reason, message)


def _name(c: x509.Certificate) -> str:
    try:
        return c.subject.rfc4514_string() or "<empty subject>"
    except ValueError:
        return "<unparsable subject>"


def verify_raw_public_key(public_key: object, identifier: str) -> str:
    """10.1.2 matching of a raw public key against the configured ni identifier."""
    if not matches_public_key_identifier(public_key, identifier):
        raise _fail(R.IDENTIFIER_MISMATCH, "raw public key does not match the configured public key identifier")
    return identifier


def _match_identifier(leaf: x509.Certificate, expected: PeerCertInfo) -> str:
    try:
        want = canonical_identifier(expected.flavour, expected.identifier)
    except (IdentifierError, CertificateParseError) as exc:
        raise IdentifierError(f"configured identifier is not valid for {expected.flavour.value}: {exc.args[0]}") from None
    try:
        names = subject_alt_names(leaf)
    except ValueError:
        raise _fail(R.MALFORMED, "subjectAltName extension cannot be parsed") from None
    have = identifiers_in_names(names, expected.flavour)
    if expected.flavour is CertificateFlavour.FQDN:  # 8.1.2.5: "a URI, FQDN or dNSName"
        for n in names:
            # Only a URI naming the host itself (no path beyond "/", no query): an
            # AE-ID URI https://<sp-fqdn>/<ae> must not authenticate the host <sp-fqdn>.
            if isinstance(n, x509.UniformResourceIdentifier):
                try:
                    parts = urlsplit(n.value)
                    host = parts.hostname
                except ValueError:
                    continue
                if (host and "*" not in n.value and "://" in n.value and parts.path in ("", "/")
                        and not parts.query and not parts.fragment and parts.port is None):
                    have.append(host.lower())
    if want in have:
        return want
    if not have:
        raise _fail(
            R.WRONG_FLAVOUR,
            f"certificate has no subjectAltName entry of the form a {expected.flavour.value} certificate carries",
        )
    raise _fail(R.IDENTIFIER_MISMATCH, f"no subjectAltName entry exactly matches {want!r} (certificate asserts {have})")


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _same_cert_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.subject == b.subject and spki_der(a.public_key()) == spki_der(b.public_key())


def _build_path(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], x509.Certificate]:
    leaf = chain[0]
    for a in anchors:  # the peer's certificate is itself a configured (self-signed) trust anchor
        if leaf == a:
            return [], a
    pool = list(chain[1:])
    path = [leaf]
    cur = leaf
    while True:
        if len(path) > MAX_CHAIN_LENGTH:
            raise _fail(R.MALFORMED, f"certificate chain longer than {MAX_CHAIN_LENGTH}")
        if len(path) > 1:
            for a in anchors:
                if _same_cert_key(cur, a):
                    path.pop()
                    return path, a
        named = [a for a in anchors if a.subject == cur.issuer]
        for a in named:
            if _signed_by(cur, a):
                return path, a
        cands = [c for c in pool if c.subject == cur.issuer and all(c is not p for p in path)]
        nxt = next((c for c in cands if _signed_by(cur, c)), None)
        if nxt is None:
            if named or cands:
                raise _fail(R.BAD_SIGNATURE, f"signature of {_name(cur)!r} does not verify with its issuer's key")
            raise _fail(R.UNTRUSTED_ROOT, f"no path from {_name(cur)!r} to a configured trust anchor")
        if nxt.subject == nxt.issuer and _signed_by(nxt, nxt):
            raise _fail(R.UNTRUSTED_ROOT, f"chain ends at root {_name(nxt)!r}, which is not a configured trust anchor")
        path.append(nxt)
        cur = nxt


def _ext(c: x509.Certificate, cls: type) -> object | None:
    try:
        return c.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _validate_path(
    path: list[x509.Certificate],
    anchor: x509.Certificate,
    now: datetime,
    key_policy: KeyPolicy,
    required_eku: x509.ObjectIdentifier | None,
) -> None:
    certs = [*path, anchor] if path else [anchor]  # leaf first, anchor last
    leaf = certs[0]
    # Structure: extensions parse, no unknown critical extensions.
    for c in certs:
        for e in c.extensions:
            if e.critical and isinstance(e.value, x509.UnrecognizedExtension):
                raise _fail(R.MALFORMED, f"{_name(c)!r} has an unsupported critical extension {e.oid.dotted_string}")
    # Algorithms: key policy on every key, SHA-2 signatures on every certificate below the anchor.
    for c in certs:
        try:
            key_policy.check(c.public_key())
        except (UnsupportedKeyError, UnsupportedAlgorithm) as exc:
            raise _fail(R.UNSUPPORTED_ALGORITHM, f"{_name(c)!r}: {exc.args[0] if exc.args else exc}") from None
    for c in path:
        h = c.signature_hash_algorithm
        if not isinstance(h, _ALLOWED_SIG_HASHES):
            raise _fail(R.UNSUPPORTED_ALGORITHM, f"{_name(c)!r} is signed with a disallowed hash")
    # Validity periods.
    for c in certs:
        if now < c.not_valid_before_utc:
            raise _fail(R.NOT_YET_VALID, f"{_name(c)!r} is not valid before {c.not_valid_before_utc.isoformat()}")
        if now > c.not_valid_after_utc:
            raise _fail(R.EXPIRED, f"{_name(c)!r} expired at {c.not_valid_after_utc.isoformat()}")
    # Issuers: basicConstraints cA, pathLenConstraint, keyCertSign.
    issuers = certs[1:] if path else []
    for i, c in enumerate(issuers, start=1):
        bc = _ext(c, x509.BasicConstraints)
        is_anchor = c is anchor
        if bc is None:
            if not is_anchor:
                raise _fail(R.NOT_A_CA, f"{_name(c)!r} issues certificates but has no basicConstraints")
        else:
            assert isinstance(bc, x509.BasicConstraints)
            if not bc.ca:
                raise _fail(R.NOT_A_CA, f"{_name(c)!r} issues certificates but basicConstraints cA is FALSE")
            below = sum(1 for x in certs[1:i] if x.subject != x.issuer)  # non-self-issued intermediates below
            if bc.path_length is not None and below > bc.path_length:
                raise _fail(R.NOT_A_CA, f"{_name(c)!r} pathLenConstraint {bc.path_length} exceeded")
        ku = _ext(c, x509.KeyUsage)
        if ku is not None:
            assert isinstance(ku, x509.KeyUsage)
            if not ku.key_cert_sign:
                raise _fail(R.KEY_USAGE, f"{_name(c)!r} keyUsage lacks keyCertSign")
    # Leaf key usage (10.1.1.1: shall be included, at least digitalSignature).
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.digital_signature:  # type: ignore[attr-defined]
        raise _fail(R.KEY_USAGE, "peer certificate keyUsage is absent or lacks digitalSignature")
    if required_eku is not None:
        eku = _ext(leaf, x509.ExtendedKeyUsage)
        if eku is not None and required_eku not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:  # type: ignore[operator]
            raise _fail(R.KEY_USAGE, f"peer certificate extendedKeyUsage lacks {required_eku.dotted_string}")
    # Name constraints: each CA's constraints bind every certificate below it
    # (self-issued intermediates excepted, RFC 5280 6.1.3 (b)).
    for i, ca in enumerate(issuers, start=1):
        nc = _ext(ca, x509.NameConstraints)
        if nc is None:
            continue
        assert isinstance(nc, x509.NameConstraints)
        for j, below in enumerate(certs[:i]):
            if j > 0 and below.subject == below.issuer:
                continue
            why = first_violation(names_subject_to_constraints(below), nc)
            if why is not None:
                raise _fail(R.NAME_CONSTRAINT_VIOLATION, f"{_name(below)!r} violates constraints of {_name(ca)!r}: {why}")


def verify_peer_certificate(
    chain: Sequence[x509.Certificate],
    *,
    expected: PeerCertInfo,
    trust_anchors: Sequence[x509.Certificate],
    now: datetime,
    key_policy: KeyPolicy = DEFAULT_KEY_POLICY,
    required_eku: x509.ObjectIdentifier | None = None,
    crls: CRLSource = None,
    revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
    ocsp: OCSPStore | None = None,
) -> VerifiedPeer:
    """Verify a peer's certificate chain (leaf first) as TS-0003 8.1.2.5 prescribes.

    Returns the verified peer; raises :class:`CertificateVerificationError`
    (abort the handshake) otherwise.  ``now`` must be timezone-aware.
    ``required_eku`` (e.g. ``ExtendedKeyUsageOID.CLIENT_AUTH`` when verifying a
    TLS client) is enforced only if the leaf has an extendedKeyUsage extension.
    ``crls`` / ``revocation``: certificate status checking (8.1.2.2, step 4 of
    the module docstring); ``VerifiedPeer.revocation`` records the outcome.
    ``ocsp``: held OCSP responses consulted as a second status source
    (:func:`m2msec.pki.crl.check_path_revocation`).
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    policy = RevocationPolicy(revocation)
    if not chain:
        raise _fail(R.MALFORMED, "the peer sent no certificate")
    leaf = chain[0]
    if expected.flavour is CertificateFlavour.RAW_PUBLIC_KEY:
        try:
            verify_raw_public_key(leaf.public_key(), expected.identifier)
        except UnsupportedAlgorithm:
            raise _fail(R.UNSUPPORTED_ALGORITHM, "peer public key type is not supported") from None
        return VerifiedPeer(expected.flavour, expected.identifier, leaf)
    try:
        ident = _match_identifier(leaf, expected)
        if not trust_anchors:
            raise _fail(R.UNTRUSTED_ROOT, "no trust anchor is configured")
        path, anchor = _build_path(chain, trust_anchors)
        _validate_path(path, anchor, now, key_policy, required_eku)
        status = check_path_revocation([*path, anchor], crls=crls, policy=policy, now=now, ocsp=ocsp)
    except CertificateVerificationError:
        raise
    except IdentifierError:
        raise
    except (ValueError, TypeError) as exc:  # lazily parsed extension/field that is malformed
        raise _fail(R.MALFORMED, f"certificate cannot be parsed: {type(exc).__name__}") from None
    return VerifiedPeer(expected.flavour, ident, leaf, path, anchor, status)
