"""Errors of the certificate layer (TS-0003 clauses 8.1.2.2, 8.1.2.5, 10.1.1, 10.1.4).

Every error names the failure precisely; none carries key material.
"""

from __future__ import annotations

from enum import Enum

from m2msec.errors import M2MSecError, ParseError
from m2msec.onem2m.rsc import ResponseStatusCode


class VerificationReason(str, Enum):
    """Why a peer certificate was refused (one code per distinct failure)."""

    IDENTIFIER_MISMATCH = "IDENTIFIER_MISMATCH"
    WRONG_FLAVOUR = "WRONG_FLAVOUR"
    UNTRUSTED_ROOT = "UNTRUSTED_ROOT"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    NAME_CONSTRAINT_VIOLATION = "NAME_CONSTRAINT_VIOLATION"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    NOT_A_CA = "NOT_A_CA"
    KEY_USAGE = "KEY_USAGE"
    MALFORMED = "MALFORMED"
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"
    # Certificate status (TS-0003 8.1.2.2, RFC 5280 6.3); see m2msec.pki.crl.
    REVOKED = "REVOKED"  # a certificate of the path is listed on its issuer's CRL
    REVOCATION_UNKNOWN = "REVOCATION_UNKNOWN"  # policy "require": no current CRL for an issuer
    CRL_INVALID = "CRL_INVALID"  # a CRL for an issuer is unusable: signature, cRLSign, unknown critical extension,
    # delta or indirect CRL, disallowed signature hash
    OCSP_INVALID = "OCSP_INVALID"  # a stapled OCSP response fails verification (m2msec.pki.ocsp)


class CertificateVerificationError(M2MSecError):
    """The peer certificate (chain) does not satisfy TS-0003 clause 8.1.2.5.

    The (D)TLS handshake must be aborted.  ``reason_code`` is a
    :class:`VerificationReason`; ``rsc`` is ORIGINATOR_NOT_AUTHENTICATED.
    """

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED

    def __init__(self, reason_code: VerificationReason, message: str) -> None:
        super().__init__(f"{reason_code.value}: {message}")
        self.reason_code: VerificationReason = reason_code
        self.detail: str = message


class IssuanceError(M2MSecError):
    """A certificate cannot be issued (policy, name constraints, bad request)."""

    default_rsc = ResponseStatusCode.BAD_REQUEST


class UnsupportedKeyError(IssuanceError):
    """The public key's type or size is outside the key policy."""


class NameConstraintError(IssuanceError):
    """An identifier lies outside the CA's permitted name subtrees."""


class CSRError(IssuanceError):
    """A certificate signing request is malformed or fails proof of possession."""


class CRLError(IssuanceError):
    """A revocation or CRL operation of the CA, or a CRL handed to a CRL store, is refused."""


class CertificateParseError(ParseError):
    """Bytes that are not a well-formed certificate / identifier encoding."""
