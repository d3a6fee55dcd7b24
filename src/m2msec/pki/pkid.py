"""Public key identifiers for raw public keys (TS-0003 clause 10.1.2).

The identifier is an RFC 6920 "Named Information" hash over the DER
SubjectPublicKeyInfo (RFC 6920 section 2: "the hash SHOULD be calculated over
the public key in an X.509 SubjectPublicKeyInfo structure"), with one of the
hash algorithms sha-256, sha-256-128 or sha-256-120 (truncation keeps the
leftmost bits).  m2msec writes it as an ``ni`` URI with an empty authority,
``ni:///sha-256;<base64url without padding>`` (RFC 6920 section 3), and accepts
an authority and query parameters when parsing a configured identifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from m2msec.pki.errors import CertificateParseError

# RFC 6920 section 9.4 "Named Information Hash Algorithm Registry", the subset 10.1.2 allows.
NI_ALGORITHMS: dict[str, int] = {"sha-256": 32, "sha-256-128": 16, "sha-256-120": 15}
DEFAULT_NI_ALGORITHM = "sha-256"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise CertificateParseError("ni digest is not base64url")
    if len(text) % 4 == 1:  # no base64 text has this length (binascii.Error otherwise)
        raise CertificateParseError("ni digest is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ni_uri(data: bytes, algorithm: str = DEFAULT_NI_ALGORITHM) -> str:
    """``ni:///<alg>;<digest>`` of arbitrary bytes (RFC 6920 section 3)."""
    if algorithm not in NI_ALGORITHMS:
        raise ValueError(f"unsupported ni hash algorithm {algorithm!r}")
    digest = hashlib.sha256(data).digest()[: NI_ALGORITHMS[algorithm]]
    return f"ni:///{algorithm};{_b64url(digest)}"


def spki_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_identifier(public_key: object, algorithm: str = DEFAULT_NI_ALGORITHM) -> str:
    """The TS-0003 10.1.2 public key identifier of ``public_key`` (an ni URI)."""
    return ni_uri(spki_der(public_key), algorithm)


@dataclass(frozen=True)
class NiIdentifier:
    algorithm: str
    digest: bytes


def parse_ni(identifier: str) -> NiIdentifier:
    """Parse an ``ni://[authority]/<alg>;<digest>[?query]`` URI (one of the 10.1.2 algorithms)."""
    if not identifier.lower().startswith("ni://"):
        raise CertificateParseError("public key identifier is not an ni URI")
    rest = identifier[5:]
    slash = rest.find("/")
    if slash < 0:
        raise CertificateParseError("ni URI has no path")
    path = rest[slash + 1 :].split("?", 1)[0]
    alg, sep, value = path.partition(";")
    alg = alg.lower()
    if not sep or alg not in NI_ALGORITHMS:
        raise CertificateParseError(f"ni hash algorithm {alg!r} is not one of {sorted(NI_ALGORITHMS)}")
    digest = _b64url_decode(value)
    if len(digest) != NI_ALGORITHMS[alg]:
        raise CertificateParseError("ni digest has the wrong length for its algorithm")
    return NiIdentifier(alg, digest)


def matches_public_key_identifier(public_key: object, identifier: str) -> bool:
    """10.1.2 matching: recompute the digest with the identifier's algorithm and compare."""
    ni = parse_ni(identifier)
    check = hashlib.sha256(spki_der(public_key)).digest()[: NI_ALGORITHMS[ni.algorithm]]
    return hmac.compare_digest(check, ni.digest)
