"""Glue between the TLS engine and the oneM2M certificate verification (TS-0003 8.1.2.5, 8.2.2.2).

:func:`pki_verify_hook` builds the ``verify_peer`` hook that makes the
:class:`~m2msec.tls.engine.TLSEngine` run
:func:`m2msec.pki.verify_peer_certificate` during the handshake, as the
*authoritative* verifier (``TLSConfig.verify_peer_authoritative``): OpenSSL's
own path-validation verdicts are ignored, the chain OpenSSL assembled from the
peer's Certificate message is checked against the configured flavour,
identifier and trust anchors at the injected clock's time, and a failure
aborts the handshake.  The caller gets :class:`~m2msec.tls.engine.TLSHandshakeError`
(reason ``PEER_REJECTED``) whose ``__cause__`` is the
:class:`~m2msec.pki.CertificateVerificationError` with its ``reason_code``
(IDENTIFIER_MISMATCH, WRONG_FLAVOUR, UNTRUSTED_ROOT, EXPIRED,
NAME_CONSTRAINT_VIOLATION, ...).

Certificate status (TS-0003 8.1.2.2): the hook passes its ``crls`` (a
:class:`~m2msec.pki.crl.CRLStore`, refreshed by its owner) and ``revocation``
policy (``"off"``, ``"if-available"`` - the default -, ``"require"``) to the
verification; failures REVOKED, REVOCATION_UNKNOWN, CRL_INVALID.

The fatal alert sent to the peer follows RFC 5246 7.2.2: ``certificate_expired``
for EXPIRED, ``unknown_ca`` for UNTRUSTED_ROOT, ``certificate_revoked`` for
REVOKED, ``certificate_unknown`` for REVOCATION_UNKNOWN (status could not be
established), ``bad_certificate`` otherwise (CRL_INVALID included).

OCSP: ``ocsp`` (an :class:`~m2msec.pki.ocsp.OCSPStore`) adds held OCSP responses as a
second status source.  :class:`OCSPStapleCheck` is the client's ``check_ocsp_staple``
for OCSP stapling (RFC 6066 8): the stapled response is verified like any other
(:func:`m2msec.pki.ocsp.verify_response`, without nonce) against the leaf and its
issuer from the verified chain; REVOKED aborts the handshake, as does an invalid
response (OCSP_INVALID) and - with ``require=True`` - a missing or UNKNOWN one
(REVOCATION_UNKNOWN); a verified response also goes into ``store`` if given.  :class:`StaplePolicy` is the
client-side setting of the services (``"off"``, ``"if-present"``, ``"require"``) and
:func:`staple_check` turns it into the ``check_ocsp_staple`` value.

This is the one place where TLS and PKI meet; :mod:`m2msec.saef` and the
``m2msec tls`` CLI both use it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cryptography import x509

from m2msec.pki import CertificateVerificationError, PeerCertInfo, VerificationReason, VerifiedPeer
from m2msec.pki import verify_peer_certificate
from m2msec.pki.crl import CRLSource, RevocationPolicy, as_store
from m2msec.pki.ocsp import DEFAULT_MAX_AGE, OCSPResponseError, OCSPResult, OCSPStatus, OCSPStore, verify_response

__all__ = ["Clock", "OCSPStapleCheck", "PKIVerifyHook", "StaplePolicy", "pki_verify_hook", "staple_check",
           "tls_alert_for"]

Clock = Callable[[], datetime]

_ALERTS: dict[VerificationReason, str] = {
    VerificationReason.EXPIRED: "certificate_expired",
    VerificationReason.UNTRUSTED_ROOT: "unknown_ca",
    VerificationReason.REVOKED: "certificate_revoked",
    VerificationReason.REVOCATION_UNKNOWN: "certificate_unknown",
}


def tls_alert_for(reason: VerificationReason) -> str:
    """The TLS alert description sent when the peer's certificate fails with ``reason``."""
    return _ALERTS.get(reason, "bad_certificate")


class PKIVerifyHook:
    """Callable ``verify_peer`` hook: ``hook(chain) -> VerifiedPeer`` or raise."""

    authoritative = True

    def __init__(self, expected: PeerCertInfo, trust_anchors: Sequence[x509.Certificate], clock: Clock,
                 *, required_eku: x509.ObjectIdentifier | None = None, crls: CRLSource = None,
                 revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
                 ocsp: OCSPStore | None = None) -> None:
        if not trust_anchors:
            raise ValueError("pki verification needs at least one trust anchor")
        self.expected = expected
        self.trust_anchors = tuple(trust_anchors)
        self.clock = clock
        self.required_eku = required_eku
        self.crls = as_store(crls)  # a CRLStore is kept by reference: its owner's refreshes apply
        self.revocation = RevocationPolicy(revocation)
        self.ocsp = ocsp  # kept by reference, like the CRL store

    def __repr__(self) -> str:
        return (f"PKIVerifyHook(flavour={self.expected.flavour.value}, identifier={self.expected.identifier!r}, "
                f"anchors={len(self.trust_anchors)}, revocation={self.revocation.value})")

    def __call__(self, chain: list[x509.Certificate]) -> VerifiedPeer:
        try:
            return verify_peer_certificate(chain, expected=self.expected, trust_anchors=self.trust_anchors,
                                           now=self.clock(), required_eku=self.required_eku, crls=self.crls,
                                           revocation=self.revocation, ocsp=self.ocsp)
        except CertificateVerificationError as exc:
            exc.tls_alert = tls_alert_for(exc.reason_code)  # type: ignore[attr-defined]
            raise


def pki_verify_hook(expected: PeerCertInfo, trust_anchors: Sequence[x509.Certificate], clock: Clock,
                    *, required_eku: x509.ObjectIdentifier | None = None, crls: CRLSource = None,
                    revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
                    ocsp: OCSPStore | None = None) -> PKIVerifyHook:
    """A ``verify_peer`` hook running TS-0003 8.1.2.5 verification against ``expected``.

    Use it with ``TLSConfig(verify_peer=hook, verify_peer_authoritative=True,
    trust_anchors=...)`` (see :func:`pki_tls_kwargs`).
    """
    return PKIVerifyHook(expected, trust_anchors, clock, required_eku=required_eku, crls=crls,
                         revocation=revocation, ocsp=ocsp)


def pki_tls_kwargs(expected: PeerCertInfo, trust_anchors: Sequence[x509.Certificate], clock: Clock,
                   **kw: Any) -> dict[str, Any]:
    """``TLSConfig`` keyword arguments that verify the peer with :func:`pki_verify_hook`."""
    return {"verify_peer": pki_verify_hook(expected, trust_anchors, clock, **kw),
            "verify_peer_authoritative": True, "trust_anchors": tuple(trust_anchors)}


__all__ += ["pki_tls_kwargs"]


class OCSPStapleCheck:
    """``TLSConfig.check_ocsp_staple`` for a client: verify the server's stapled OCSP response.

    ``check(der, chain) -> OCSPResult | None`` (None: no staple, or nothing to check because
    the peer's certificate is itself a trust anchor) or raise
    :class:`~m2msec.pki.CertificateVerificationError` (see the module docstring).
    """

    def __init__(self, clock: Clock, *, require: bool = False, store: OCSPStore | None = None,
                 max_age: Any = DEFAULT_MAX_AGE) -> None:
        self.clock = clock
        self.require = require
        self.store = store
        self.max_age = max_age

    def __repr__(self) -> str:
        return f"OCSPStapleCheck(require={self.require})"

    def __call__(self, der: bytes, chain: list[x509.Certificate]) -> OCSPResult | None:
        if len(chain) < 2:
            return None
        leaf, issuer = chain[0], chain[1]
        what = f"serial {leaf.serial_number:x}"
        if not der:
            if self.require:
                raise CertificateVerificationError(VerificationReason.REVOCATION_UNKNOWN,
                                                   f"the server stapled no OCSP response for {what}")
            return None
        try:
            res = verify_response(der, leaf, issuer, now=self.clock(), max_age=self.max_age)
        except OCSPResponseError as exc:
            raise CertificateVerificationError(VerificationReason.OCSP_INVALID,
                                               f"stapled OCSP response for {what}: {exc}") from exc
        if self.store is not None:
            self.store.add(der)
        if res.status is OCSPStatus.REVOKED:
            reason = res.revocation_reason.value if res.revocation_reason is not None else "unspecified"
            when = res.revocation_time.isoformat() if res.revocation_time is not None else "?"
            raise CertificateVerificationError(VerificationReason.REVOKED,
                                               f"{what} was revoked at {when} (reason {reason}, stapled OCSP response)")
        if res.status is OCSPStatus.UNKNOWN and self.require:
            raise CertificateVerificationError(VerificationReason.REVOCATION_UNKNOWN,
                                               f"the stapled OCSP response says unknown for {what}")
        return res


class StaplePolicy(str, enum.Enum):
    """What a client does with the server's stapled OCSP response (RFC 6066 8)."""

    OFF = "off"  # no status_request, no check
    IF_PRESENT = "if-present"  # ask; a staple must verify and not say REVOKED; none is fine
    REQUIRE = "require"  # ask; a verified GOOD staple is required ("must-staple")


def staple_check(policy: StaplePolicy | str, clock: Clock, *, store: OCSPStore | None = None) -> OCSPStapleCheck | None:
    """``TLSConfig.check_ocsp_staple`` for ``policy`` (None for ``"off"``; ValueError for another word)."""
    p = StaplePolicy(policy)
    if p is StaplePolicy.OFF:
        return None
    return OCSPStapleCheck(clock, require=p is StaplePolicy.REQUIRE, store=store)
