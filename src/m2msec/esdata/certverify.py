"""Source End-Point certificate verification for ESData signatures (TS-0003 clause
8.5.2.3.2.1 "Associating Public Key Certificate with Source End-Point", applying the
certificate verification of 8.1.2.5: path validation to a configured trust anchor plus an
exact match of the expected Source End-Point identifier).

A :data:`CertificateVerifier` is any callable ``(chain, expected_source_id) -> None`` that
raises to reject.  :func:`x509_verifier` is the stand-alone one built on
``cryptography.x509.verification``; :func:`pki_verifier` adapts
``m2msec.pki.verify_peer_certificate`` when that module is available.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from m2msec.esdata.errors import UntrustedCertificateError

CertificateVerifier = Callable[[list[x509.Certificate], str], None]
Clock = Callable[[], datetime]


def certificate_identifiers(certificate: x509.Certificate) -> set[str]:
    """Identifiers a certificate asserts: every URI and DNS subjectAltName value."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.UniformResourceIdentifier), *san.get_values_for_type(x509.DNSName)}


def x509_verifier(
    trust_anchors: Sequence[x509.Certificate],
    *,
    clock: Clock,
    max_chain_depth: int = 4,
) -> CertificateVerifier:
    """Path validation (RFC 5280 via ``cryptography``) to ``trust_anchors`` at ``clock()``,
    then an exact, case-sensitive match of ``expected_source_id`` against the leaf's URI or
    DNS subjectAltName values.  The leaf needs no particular extended key usage (ESData
    signing certificates are not TLS client certificates)."""
    if not trust_anchors:
        raise ValueError("at least one trust anchor is required")
    store = Store(list(trust_anchors))

    def verify(chain: list[x509.Certificate], expected_source_id: str) -> None:
        if not chain:
            raise UntrustedCertificateError("empty certificate chain")
        verifier = (
            PolicyBuilder()
            .store(store)
            .time(clock())
            .max_chain_depth(max_chain_depth)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            verifier.verify(chain[0], list(chain[1:]))
        except VerificationError as exc:
            raise UntrustedCertificateError(f"signer certificate path validation failed: {exc}") from None
        if expected_source_id not in certificate_identifiers(chain[0]):
            raise UntrustedCertificateError(
                f"signer certificate does not carry the expected identifier {expected_source_id!r}"
            )

    return verify


def pki_verifier(
    *,
    trust_anchors: Sequence[x509.Certificate],
    clock: Clock,
    flavour: str = "ae-id",
    crls: object = None,
    revocation: str = "if-available",
) -> CertificateVerifier:
    """Adapter from ``m2msec.pki.verify_peer_certificate`` (TS-0003 8.1.2.5 in full:
    flavour-specific identifier match, path validation, name constraints, key policy,
    and the certificate status check of 8.1.2.2 with ``crls`` - a
    :class:`m2msec.pki.CRLStore` or CRLs - under the ``revocation`` policy
    ``"off"`` / ``"if-available"`` / ``"require"``).

    ``flavour`` is the Source End-Point certificate flavour (``ae-id``, ``cse-id``,
    ``node-id``, ``device``, ``fqdn``); the expected identifier comes from the Target."""
    from m2msec.pki import CertificateFlavour, PeerCertInfo, RevocationPolicy, verify_peer_certificate  # noqa: PLC0415
    from m2msec.pki.crl import as_store  # noqa: PLC0415

    flav = CertificateFlavour(flavour)
    store = as_store(crls)  # type: ignore[arg-type]
    policy = RevocationPolicy(revocation)

    def verify(chain: list[x509.Certificate], expected_source_id: str) -> None:
        try:
            verify_peer_certificate(
                chain, expected=PeerCertInfo(flav, expected_source_id), trust_anchors=list(trust_anchors), now=clock(),
                crls=store, revocation=policy,
            )
        except Exception as exc:  # noqa: BLE001 - the pki layer's own error hierarchy
            raise UntrustedCertificateError(f"signer certificate refused: {exc}") from None

    return verify
