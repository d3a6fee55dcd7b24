"""ESData credentials and key sources (TS-0003 clauses 8.5.2.2.2-8.5.2.2.4, 8.5.2.3.2;
SUID values of TS-0004 table 6.3.4.2.39-1).

A Source End-Point names its credentials explicitly (:class:`SymmetricRecipient`,
:class:`CertificateRecipient`, :class:`SymmetricSigner`, :class:`CertificateSigner`).
A Target End-Point looks credentials up by key identifier through a :class:`KeySource`
(``resolve(kid) -> ResolvedKey``).  Provisioned symmetric keys (SUID 14/15 pre-provisioned,
24/25 via an RSPF) and certificate private keys (SUID 44) ship here; MAF-distributed keys
(SUID 34/35) and ESCertKE-derived keys plug in as further ``KeySource`` implementations
without any change to this package.

SUID policy: a key with an "authenticated encryption" SUID (14/24/34/44) only unwraps or
directly decrypts content; a key with a "Signature-only" SUID (15/25/35/45) only computes
or checks signatures/MICs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Union, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from m2msec.esdata.errors import PolicyError, Reason, SealError, UnknownKidError


class Usage(str, Enum):
    ENCRYPT = "encrypt"  # Encryption-only / Nested (key management or direct CEK)
    SIGN = "sign"  # Signature-only (MIC or digital signature)


#: TS-0004 table 6.3.4.2.39-1: ESData SUIDs and the one use each permits.
SUID_USAGE: Mapping[int, Usage] = {
    14: Usage.ENCRYPT,  # pre-provisioned symmetric key
    24: Usage.ENCRYPT,  # RSPF-provisioned symmetric key
    34: Usage.ENCRYPT,  # MAF-distributed symmetric key
    44: Usage.ENCRYPT,  # certificate
    15: Usage.SIGN,
    25: Usage.SIGN,
    35: Usage.SIGN,
    45: Usage.SIGN,
}
SYMMETRIC_SUIDS = frozenset({14, 15, 24, 25, 34, 35})
CERTIFICATE_SUIDS = frozenset({44, 45})

# Algorithm families (TS-0003 tables 8.5.3.2-3, 8.5.3.2-4, 8.5.3.3-2).
KW_KEY_LEN = {"A128KW": 16, "A192KW": 24, "A256KW": 32}
ECDH_KW = frozenset({"ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW"})
RSA_KM = frozenset({"RSA-OAEP-256"})
ENC_KEY_LEN = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
HS_MIN_KEY_LEN = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2
RS_ALGS = frozenset({"RS256", "RS384", "RS512"})
ES_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
KEY_MANAGEMENT_ALGS = frozenset({"dir", *KW_KEY_LEN, *RSA_KM, *ECDH_KW})
CONTENT_ALGS = frozenset(ENC_KEY_LEN)
SIGNATURE_ALGS = frozenset({*HS_MIN_KEY_LEN, *RS_ALGS, *ES_CURVE})
MIN_RSA_BITS = 2048

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
KeyMaterial = Union[bytes, PrivateKey, PublicKey]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_kid(certificate: x509.Certificate) -> str:
    """kid of a certificate credential: base64url(SHA-256(DER)) - the RFC 7515 x5t#S256 value."""
    return b64url(hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())


def default_symmetric_algorithms(usage: Usage, key_len: int) -> frozenset[str]:
    if usage is Usage.ENCRYPT:
        algs = {a for a, n in KW_KEY_LEN.items() if n == key_len}
        if key_len in ENC_KEY_LEN.values():
            algs.add("dir")
        return frozenset(algs)
    return frozenset(a for a, n in HS_MIN_KEY_LEN.items() if key_len >= n)


def default_private_key_algorithms(key: PrivateKey, usage: Usage) -> frozenset[str]:
    if isinstance(key, rsa.RSAPrivateKey):
        return RSA_KM if usage is Usage.ENCRYPT else RS_ALGS
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if usage is Usage.ENCRYPT:
            return ECDH_KW
        return frozenset(a for a, c in ES_CURVE.items() if c == key.curve.name)
    raise PolicyError("only RSA and EC keys are supported", reason=Reason.KEY_USAGE)


def _check_suid(suid: int, usage: Usage, what: str) -> None:
    got = SUID_USAGE.get(int(suid))
    if got is None:
        raise PolicyError(f"SUID {int(suid)} is not an ESData SUID", reason=Reason.KEY_USAGE)
    if got is not usage:
        raise PolicyError(
            f"SUID {int(suid)} is for {got.value} keys and may not be used for {what}",
            reason=Reason.KEY_USAGE,
        )


@dataclass(frozen=True, repr=False)
class ResolvedKey:
    """What a Target needs to use one credential: key, allowed algorithms and SUID."""

    kid: str
    key: KeyMaterial
    algorithms: frozenset[str]
    suid: int
    certificate: x509.Certificate | None = None

    @property
    def usage(self) -> Usage:
        return SUID_USAGE[self.suid]

    @property
    def is_symmetric(self) -> bool:
        return isinstance(self.key, bytes)

    def __repr__(self) -> str:
        kind = f"{len(self.key)}-byte symmetric key" if isinstance(self.key, bytes) else type(self.key).__name__
        return f"ResolvedKey(kid={self.kid!r}, suid={self.suid}, algorithms={sorted(self.algorithms)}, key=<{kind} hidden>)"


@runtime_checkable
class KeySource(Protocol):
    """Looks a credential up by key identifier; raises :class:`UnknownKidError` when unknown."""

    def resolve(self, kid: str) -> ResolvedKey: ...


class InMemoryKeySource:
    """Provisioned symmetric keys and certificate private keys held in memory."""

    def __init__(self) -> None:
        self._keys: dict[str, ResolvedKey] = {}

    def __repr__(self) -> str:
        return f"InMemoryKeySource(kids={sorted(self._keys)})"

    def add_symmetric(
        self, kid: str, key: bytes, *, suid: int, algorithms: Iterable[str] | None = None
    ) -> ResolvedKey:
        if int(suid) not in SYMMETRIC_SUIDS:
            raise PolicyError(f"SUID {int(suid)} is not a symmetric ESData SUID", reason=Reason.KEY_USAGE)
        if not isinstance(key, bytes) or not key:
            raise PolicyError("symmetric key must be non-empty bytes", reason=Reason.KEY_USAGE)
        usage = SUID_USAGE[int(suid)]
        algs = frozenset(algorithms) if algorithms is not None else default_symmetric_algorithms(usage, len(key))
        entry = ResolvedKey(kid=kid, key=bytes(key), algorithms=algs, suid=int(suid))
        self._keys[kid] = entry
        return entry

    def add_certificate_key(
        self,
        private_key: PrivateKey,
        certificate: x509.Certificate,
        *,
        suid: int = 44,
        kid: str | None = None,
        algorithms: Iterable[str] | None = None,
    ) -> ResolvedKey:
        if int(suid) not in CERTIFICATE_SUIDS:
            raise PolicyError(f"SUID {int(suid)} is not a certificate ESData SUID", reason=Reason.KEY_USAGE)
        if private_key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
            raise PolicyError("private key does not match the certificate", reason=Reason.KEY_USAGE)
        usage = SUID_USAGE[int(suid)]
        algs = frozenset(algorithms) if algorithms is not None else default_private_key_algorithms(private_key, usage)
        kid = kid or certificate_kid(certificate)
        entry = ResolvedKey(kid=kid, key=private_key, algorithms=algs, suid=int(suid), certificate=certificate)
        self._keys[kid] = entry
        return entry

    def add_public_key(
        self, kid: str, public_key: PublicKey, *, suid: int = 45, algorithms: Iterable[str] | None = None
    ) -> ResolvedKey:
        """A raw public key configured for a Source End-Point (TS-0003 8.5.2.3.2.1, raw public
        key case): verifies signatures that carry this ``kid`` and no ``x5c``."""
        if int(suid) != 45:
            raise PolicyError("a configured public key verifies signatures only (SUID 45)", reason=Reason.KEY_USAGE)
        if isinstance(public_key, rsa.RSAPublicKey):
            default = RS_ALGS
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            default = frozenset(a for a, c in ES_CURVE.items() if c == public_key.curve.name)
        else:
            raise PolicyError("only RSA and EC public keys are supported", reason=Reason.KEY_USAGE)
        entry = ResolvedKey(kid=kid, key=public_key, algorithms=frozenset(algorithms) if algorithms is not None else default, suid=45)
        self._keys[kid] = entry
        return entry

    def add(self, entry: ResolvedKey) -> None:
        self._keys[entry.kid] = entry

    def resolve(self, kid: str) -> ResolvedKey:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKidError(f"unknown key identifier {kid!r}") from None


class ChainedKeySource:
    """Asks several key sources in turn (e.g. provisioned keys, then MAF-distributed keys)."""

    def __init__(self, *sources: KeySource) -> None:
        self._sources = sources

    def resolve(self, kid: str) -> ResolvedKey:
        for source in self._sources:
            try:
                return source.resolve(kid)
            except UnknownKidError:
                continue
        raise UnknownKidError(f"unknown key identifier {kid!r}")


# --- Source-side credentials -------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SymmetricRecipient:
    """Encrypt for holders of a provisioned (or MAF-distributed) symmetric key.

    ``alg`` is ``dir`` (the key is the CEK; single recipient only) or A128KW/A192KW/A256KW.
    """

    kid: str
    key: bytes
    alg: str = "A128KW"
    suid: int = 14

    def __post_init__(self) -> None:
        _check_suid(self.suid, Usage.ENCRYPT, "encryption")
        if self.alg == "dir":
            if len(self.key) not in ENC_KEY_LEN.values():
                raise SealError("a dir key must be 16, 24 or 32 bytes", reason=Reason.ALGORITHM_NOT_ALLOWED)
        elif self.alg in KW_KEY_LEN:
            if len(self.key) != KW_KEY_LEN[self.alg]:
                raise SealError(f"{self.alg} needs a {KW_KEY_LEN[self.alg]}-byte key", reason=Reason.ALGORITHM_NOT_ALLOWED)
        else:
            raise SealError(f"algorithm {self.alg!r} is not a symmetric key-management algorithm", reason=Reason.ALGORITHM_NOT_ALLOWED)

    def __repr__(self) -> str:
        return f"SymmetricRecipient(kid={self.kid!r}, alg={self.alg!r}, suid={self.suid}, key=<hidden>)"


@dataclass(frozen=True)
class CertificateRecipient:
    """Encrypt for the holder of a target end-point certificate (RSA-OAEP-256 or ECDH-ES+AxxxKW)."""

    certificate: x509.Certificate
    alg: str | None = None  # default: RSA-OAEP-256 for RSA, ECDH-ES+A128KW for EC
    kid: str | None = None  # default: certificate_kid(certificate)

    @property
    def effective_kid(self) -> str:
        return self.kid or certificate_kid(self.certificate)

    @property
    def effective_alg(self) -> str:
        pub = self.certificate.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            if pub.key_size < MIN_RSA_BITS:
                raise SealError("RSA recipient key shorter than 2048 bits", reason=Reason.ALGORITHM_NOT_ALLOWED)
            alg = self.alg or "RSA-OAEP-256"
            if alg not in RSA_KM:
                raise SealError(f"{alg!r} cannot be used with an RSA certificate", reason=Reason.ALGORITHM_NOT_ALLOWED)
            return alg
        if isinstance(pub, ec.EllipticCurvePublicKey):
            alg = self.alg or "ECDH-ES+A128KW"
            if alg not in ECDH_KW:
                raise SealError(f"{alg!r} cannot be used with an EC certificate", reason=Reason.ALGORITHM_NOT_ALLOWED)
            return alg
        raise SealError("recipient certificate key must be RSA or EC", reason=Reason.ALGORITHM_NOT_ALLOWED)


@dataclass(frozen=True, repr=False)
class SymmetricSigner:
    """MIC (HS256/384/512) with a provisioned or MAF-distributed symmetric key."""

    kid: str
    key: bytes
    alg: str = "HS256"
    suid: int = 15

    def __post_init__(self) -> None:
        _check_suid(self.suid, Usage.SIGN, "a MIC")
        if self.alg not in HS_MIN_KEY_LEN:
            raise SealError(f"{self.alg!r} is not a MIC algorithm", reason=Reason.ALGORITHM_NOT_ALLOWED)
        if len(self.key) < HS_MIN_KEY_LEN[self.alg]:
            raise SealError(f"{self.alg} needs a key of at least {HS_MIN_KEY_LEN[self.alg]} bytes", reason=Reason.ALGORITHM_NOT_ALLOWED)

    def __repr__(self) -> str:
        return f"SymmetricSigner(kid={self.kid!r}, alg={self.alg!r}, suid={self.suid}, key=<hidden>)"


@dataclass(frozen=True, repr=False)
class CertificateSigner:
    """Digital signature with the source end-point certificate; ``chain`` is leaf first."""

    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    alg: str | None = None  # default: RS256 for RSA, ES256/384/512 by curve
    include_kid: bool = True

    def __post_init__(self) -> None:
        if not self.chain:
            raise SealError("a certificate signer needs its certificate chain", reason=Reason.KEY_USAGE)
        object.__setattr__(self, "chain", tuple(self.chain))
        leaf_pub = self.chain[0].public_key()
        if self.private_key.public_key().public_numbers() != leaf_pub.public_numbers():  # type: ignore[union-attr]
            raise SealError("private key does not match the leaf certificate", reason=Reason.KEY_USAGE)
        self.effective_alg  # validates

    @property
    def effective_alg(self) -> str:
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise SealError("RSA signing key shorter than 2048 bits", reason=Reason.ALGORITHM_NOT_ALLOWED)
            alg = self.alg or "RS256"
            if alg not in RS_ALGS:
                raise SealError(f"{alg!r} cannot be used with an RSA key", reason=Reason.ALGORITHM_NOT_ALLOWED)
            return alg
        if isinstance(key, ec.EllipticCurvePrivateKey):
            default = {c: a for a, c in ES_CURVE.items()}.get(key.curve.name)
            alg = self.alg or default
            if alg is None or ES_CURVE.get(alg) != key.curve.name:
                raise SealError(f"{alg!r} does not match curve {key.curve.name}", reason=Reason.ALGORITHM_NOT_ALLOWED)
            return alg
        raise SealError("signing key must be RSA or EC", reason=Reason.ALGORITHM_NOT_ALLOWED)

    @property
    def kid(self) -> str:
        return certificate_kid(self.chain[0])

    def __repr__(self) -> str:
        return f"CertificateSigner(alg={self.effective_alg!r}, subject={self.chain[0].subject.rfc4514_string()!r}, key=<hidden>)"


Recipient = Union[SymmetricRecipient, CertificateRecipient]
Signer = Union[SymmetricSigner, CertificateSigner]

__all__ = [
    "CERTIFICATE_SUIDS",
    "SUID_USAGE",
    "SYMMETRIC_SUIDS",
    "CertificateRecipient",
    "CertificateSigner",
    "ChainedKeySource",
    "InMemoryKeySource",
    "KeySource",
    "Recipient",
    "ResolvedKey",
    "Signer",
    "SymmetricRecipient",
    "SymmetricSigner",
    "Usage",
    "certificate_kid",
]

