"""ESData vocabulary: security classes, contentSecurity values and envelope/result types
(TS-0003 clause 8.5.2.1; TS-0004 6.3.4.2.38 m2m:contentSecurity and its notes 3-5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography import x509

from m2msec.onem2m.enums import ContentSecurity  # one definition for the library (TS-0004 6.3.4.2.38)


class SecurityClass(str, Enum):
    ENCRYPT = "enc"  # Encryption only (8.5.2.2)
    SIGN = "sign"  # Signature only (8.5.2.3)
    SIGN_ENCRYPT = "sign-enc"  # Nested Sign-then-Encrypt (8.5.2.4)


#: CLI / human names of the serializations, in contentSecurity order.
SERIALIZATION_NAMES: dict[str, ContentSecurity] = {
    "compact": ContentSecurity.JOSE_COMPACT,
    "json": ContentSecurity.JOSE_JSON,
    "json-b64": ContentSecurity.JOSE_JSON_BASE64,
    "xml": ContentSecurity.XML,
    "xml-b64": ContentSecurity.XML_BASE64,
}

MEDIA_JOSE = "application/jose"
MEDIA_JOSE_JSON = "application/jose+json"
MEDIA_XENC = "application/xenc+xml"
MEDIA_XML = "application/xml"


def envelope_media_type(cs: ContentSecurity, security_class: SecurityClass) -> str:
    """Media type of the envelope itself (TS-0004 6.3.4.2.38 notes 3-5).

    For XML: application/xenc+xml when the outer layer is XML-Enc, application/xml for a
    bare XML-DSig (Signature-only).  For contentSecurity 3/5 the envelope is this media type
    after base64 decoding."""
    if cs is ContentSecurity.JOSE_COMPACT:
        return MEDIA_JOSE
    if cs in (ContentSecurity.JOSE_JSON, ContentSecurity.JOSE_JSON_BASE64):
        return MEDIA_JOSE_JSON
    if cs.is_xml:
        return MEDIA_XML if security_class is SecurityClass.SIGN else MEDIA_XENC
    raise ValueError("contentSecurity 0 has no envelope")


@dataclass(frozen=True)
class Envelope:
    """An ESData Envelope as it travels: ``data`` is the exact octets (ASCII for compact and
    base64 forms, UTF-8 JSON, XML)."""

    data: bytes
    content_security: ContentSecurity
    security_class: SecurityClass
    content_type: str | None = None  # media type of the payload before ESData (if given)

    @property
    def media_type(self) -> str:
        return envelope_media_type(self.content_security, self.security_class)

    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass(frozen=True)
class VerifiedSignature:
    """One signature/MIC that verified, and the credential it verified with."""

    alg: str
    kid: str | None
    suid: int | None = None  # for MICs: the SUID of the symmetric key
    certificate_chain: tuple[x509.Certificate, ...] = ()  # for digital signatures, leaf first
    source_id: str | None = None  # the identifier the certificate was verified against


@dataclass(frozen=True)
class Opened:
    """What a Target End-Point obtained from an envelope (TS-0003 8.5.2.2.1 E.2, 8.5.2.3.1 C.3)."""

    payload: bytes
    security_class: SecurityClass
    content_security: ContentSecurity
    aad: bytes | None = None
    content_type: str | None = None
    decrypted_with: str | None = None  # kid of the credential that opened the JWE / XML-Enc
    key_management: str | None = None  # alg
    content_encryption: str | None = None  # enc
    signatures: tuple[VerifiedSignature, ...] = field(default=())

    def __repr__(self) -> str:  # do not print plaintext by accident
        return (
            f"Opened(class={self.security_class.value}, cs={int(self.content_security)}, "
            f"payload=<{len(self.payload)} bytes>, decrypted_with={self.decrypted_with!r}, "
            f"signatures={[s.alg for s in self.signatures]})"
        )
