"""ESData rejections (TS-0003 clause 8.5; TS-0004 6.3.4.2.38).

Every refusal of an ESData Target or Source End-Point raises an :class:`ESDataError`
subclass carrying a machine-readable :class:`Reason` and the oneM2M RSC to answer with.
Messages name the failure; they never contain key material or plaintext.
"""

from __future__ import annotations

from enum import Enum

from m2msec.errors import M2MSecError, ParseError, UnknownKeyError
from m2msec.onem2m.rsc import ResponseStatusCode


class Reason(str, Enum):
    """Why an envelope (or a sealing request) was refused."""

    MALFORMED = "MALFORMED"  # not a well-formed envelope for the stated serialization
    TOO_LARGE = "TOO_LARGE"  # over the configured size limit
    UNKNOWN_KID = "UNKNOWN_KID"  # no credential known for any kid in the envelope
    NO_USABLE_CREDENTIAL = "NO_USABLE_CREDENTIAL"  # nothing in the envelope addressed to us
    ALGORITHM_NOT_ALLOWED = "ALGORITHM_NOT_ALLOWED"  # alg/enc outside policy or key's algorithms
    KEY_USAGE = "KEY_USAGE"  # SUID/key type does not permit this use
    DECRYPTION_FAILED = "DECRYPTION_FAILED"  # wrong key, tampered ciphertext/AAD/header/tag
    BAD_SIGNATURE = "BAD_SIGNATURE"  # signature/MIC does not verify
    UNTRUSTED_CERTIFICATE = "UNTRUSTED_CERTIFICATE"  # signer chain or identifier refused
    UNSUPPORTED = "UNSUPPORTED"  # a feature this profile refuses (zip, compact AAD, crit ...)
    WRONG_CLASS = "WRONG_CLASS"  # e.g. an unsigned inner payload where a signature was required
    ENCRYPTION_FAILED = "ENCRYPTION_FAILED"  # the Source could not build the envelope


class ESDataError(M2MSecError):
    """Base class of every ESData refusal; ``reason`` says which one."""

    default_rsc = ResponseStatusCode.BAD_REQUEST
    default_reason: Reason = Reason.MALFORMED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        rsc: ResponseStatusCode | None = None,
    ) -> None:
        super().__init__(message, rsc=rsc)
        self.reason: Reason = reason if reason is not None else self.default_reason

    def __str__(self) -> str:
        return f"[{int(self.rsc)} {self.rsc.name} {self.reason.value}] {self.args[0]}"


class MalformedEnvelopeError(ESDataError, ParseError):
    default_reason = Reason.MALFORMED
    default_rsc = ResponseStatusCode.BAD_REQUEST


class EnvelopeTooLargeError(MalformedEnvelopeError):
    default_reason = Reason.TOO_LARGE


class UnknownKidError(ESDataError, UnknownKeyError):
    """No credential is held for the key identifier(s) ``kids`` the envelope names (a Target
    that fetches keys on demand, e.g. from the MAF, fetches these and opens again)."""

    default_reason = Reason.UNKNOWN_KID
    default_rsc = ResponseStatusCode.NOT_FOUND

    def __init__(self, message: str, *, kids: tuple[str, ...] = (), reason: Reason | None = None,
                 rsc: ResponseStatusCode | None = None) -> None:
        super().__init__(message, reason=reason, rsc=rsc)
        self.kids: tuple[str, ...] = tuple(kids)


class NoUsableCredentialError(ESDataError):
    default_reason = Reason.NO_USABLE_CREDENTIAL
    default_rsc = ResponseStatusCode.NOT_FOUND


class PolicyError(ESDataError):
    """An algorithm, key usage or feature refused by policy."""

    default_reason = Reason.ALGORITHM_NOT_ALLOWED
    default_rsc = ResponseStatusCode.BAD_REQUEST


class DecryptionError(ESDataError):
    default_reason = Reason.DECRYPTION_FAILED
    default_rsc = ResponseStatusCode.BAD_REQUEST


class SignatureError(ESDataError):
    default_reason = Reason.BAD_SIGNATURE
    default_rsc = ResponseStatusCode.BAD_REQUEST


class UntrustedCertificateError(ESDataError):
    default_reason = Reason.UNTRUSTED_CERTIFICATE
    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED


class SealError(ESDataError):
    """The Source End-Point refused or failed to build an envelope."""

    default_reason = Reason.ENCRYPTION_FAILED
    default_rsc = ResponseStatusCode.BAD_REQUEST
