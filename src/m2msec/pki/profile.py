"""Certificate and CSR profiles (TS-0003 clauses 10.1.1 and 10.1.4).

Leaf certificates: X.509 v3; basicConstraints cA=FALSE (critical); keyUsage
(critical) digitalSignature (10.1.1.1) plus keyAgreement for EC keys /
keyEncipherment for RSA keys (so the same certificate serves ESData
encryption to a target certificate); extendedKeyUsage id-kp-serverAuth +
id-kp-clientAuth (an entity is TLS client or server depending on who
initiates); subjectAltName carries the flavour's identifier (see
:mod:`m2msec.pki.identifiers`), critical when the subject is empty;
subjectKeyIdentifier and authorityKeyIdentifier.  Signature hash SHA-256
(SHA-384 for a P-384 issuer).

CSRs (10.1.4): subjectPublicKeyInfo plus an extensionRequest attribute with the
subjectAltName of the requested identifier(s).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from m2msec.pki.identifiers import CertificateFlavour, DeviceId, san_entry
from m2msec.pki.keypolicy import PrivateKey, signature_hash_for

LEAF_EKUS = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def leaf_subject(flavour: CertificateFlavour, identifiers: Sequence[str]) -> x509.Name:
    """CN = the first identifier (device IDs as ``device <oid>``); empty if it would exceed 64 chars."""
    ident = identifiers[0]
    if flavour is CertificateFlavour.DEVICE:
        cn = f"device {DeviceId.parse(ident).dotted}"
    elif flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
        cn = ident.lower()
    else:
        cn = san_entry(flavour, ident).value  # type: ignore[attr-defined]
    if len(cn) > 64:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def leaf_key_usage(public_key: object) -> x509.KeyUsage:
    is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=is_ec,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_leaf(
    *,
    flavour: CertificateFlavour,
    identifiers: Sequence[str],
    public_key: object,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    key_usage: x509.KeyUsage | None = None,
    basic_constraints_ca: bool = False,
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None = None,
    crl_urls: Sequence[str] = (),
    ocsp_urls: Sequence[str] = (),
) -> x509.Certificate:
    """Sign a leaf of ``flavour`` for ``identifiers`` (no policy checks: see DevCA.issue).

    ``extended_key_usage``: the EKU OIDs (default :data:`LEAF_EKUS`).  ``crl_urls``:
    a non-critical cRLDistributionPoints extension with one distribution point
    whose fullName is these URIs (RFC 5280 4.2.1.13; omitted when empty).  ``ocsp_urls``: a
    non-critical authorityInfoAccess extension with one id-ad-ocsp access description per URI
    (RFC 5280 4.2.2.1, RFC 6960; omitted when empty).
    """
    if not identifiers:
        raise ValueError("at least one identifier is required")
    names = [san_entry(flavour, i) for i in identifiers]
    subject = leaf_subject(flavour, identifiers)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=basic_constraints_ca, path_length=None), critical=True)
        .add_extension(key_usage or leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(extended_key_usage or LEAF_EKUS)), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if crl_urls:
        builder = builder.add_extension(_distribution_points(crl_urls), critical=False)
    if ocsp_urls:
        aia = x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u))
            for u in ocsp_urls])
        builder = builder.add_extension(aia, critical=False)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def build_ca_cert(
    *,
    subject: x509.Name,
    public_key: object,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    path_length: int | None,
    name_constraints: x509.NameConstraints | None,
    not_before: datetime,
    not_after: datetime,
    crl_urls: Sequence[str] = (),
) -> x509.Certificate:
    """A root (issuer_cert None: self-signed) or intermediate CA certificate.

    ``crl_urls`` (intermediates only): a non-critical cRLDistributionPoints extension with one
    distribution point whose fullName is these URIs - where the CRL of the *issuing* CA (the
    one that covers this certificate) is published (RFC 5280 4.2.1.13).
    """
    if crl_urls and issuer_cert is None:
        raise ValueError("a self-signed root has no CRL distribution point (no CRL covers it)")
    issuer_name = subject if issuer_cert is None else issuer_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    if crl_urls:
        builder = builder.add_extension(_distribution_points(crl_urls), critical=False)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def _distribution_points(crl_urls: Sequence[str]) -> x509.CRLDistributionPoints:
    dp = x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(u) for u in crl_urls],
                                relative_name=None, reasons=None, crl_issuer=None)
    return x509.CRLDistributionPoints([dp])


def build_csr(
    private_key: PrivateKey,
    flavour: CertificateFlavour,
    identifiers: Sequence[str],
    *,
    extended_key_usage: Sequence[x509.ObjectIdentifier] = (),
    challenge_password: str | None = None,
) -> x509.CertificateSigningRequest:
    """A 10.1.4 CSR: SPKI + subjectAltName with the identifier(s) in the flavour's name type.

    Optionally an extendedKeyUsage extension and a PKCS#9 challengePassword attribute
    (the CSR attributes an EST server asks for, TS-0003 8.3.6.2.2 step 2).
    """
    names = [san_entry(flavour, i) for i in identifiers]
    subject = leaf_subject(flavour, identifiers)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
    )
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    if challenge_password is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge_password.encode("utf-8"))
    return builder.sign(private_key, signature_hash_for(private_key))


def default_validity(now: datetime, days: int) -> tuple[datetime, datetime]:
    return now - timedelta(minutes=5), now + timedelta(days=days)
