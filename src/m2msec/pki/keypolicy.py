"""Key types and the key policy for oneM2M certificates (TS-0003 clause 10.1.1.1, 10.1.1.3).

TS-0003 10.1.1.1 demands id-ecPublicKey on secp256r1 (uncompressed points) and
SHA-256; :data:`STRICT_ONEM2M` enforces exactly that.  m2msec's default policy
(:data:`DEFAULT_KEY_POLICY`) also admits P-384 and RSA >= 2048 bits so that
deployments with existing PKIs work; Ed25519/Ed448/DSA/other curves are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from m2msec.pki.errors import UnsupportedKeyError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(str, Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


def generate_private_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = 2048 if key_type is KeyType.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signature_hash_for(key: object) -> hashes.HashAlgorithm:
    """SHA-256 for P-256 and RSA (10.1.1.3), SHA-384 for P-384."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP384R1):
            return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True)
class KeyPolicy:
    curves: frozenset[str] = field(default_factory=lambda: frozenset({"secp256r1", "secp384r1"}))
    allow_rsa: bool = True
    min_rsa_bits: int = 2048

    def check(self, public_key: object) -> None:
        """Raise :class:`UnsupportedKeyError` unless ``public_key`` is allowed."""
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in self.curves:
                raise UnsupportedKeyError(f"elliptic curve {public_key.curve.name} is not allowed")
            return
        if isinstance(public_key, rsa.RSAPublicKey):
            if not self.allow_rsa:
                raise UnsupportedKeyError("RSA keys are not allowed by this policy")
            if public_key.key_size < self.min_rsa_bits:
                raise UnsupportedKeyError(
                    f"RSA key of {public_key.key_size} bits is below the minimum {self.min_rsa_bits}"
                )
            return
        raise UnsupportedKeyError(f"public key type {type(public_key).__name__} is not allowed")


DEFAULT_KEY_POLICY = KeyPolicy()
STRICT_ONEM2M = KeyPolicy(curves=frozenset({"secp256r1"}), allow_rsa=False)
