"""ESData Target/Source policy (TS-0003 clause 8.5.3: the algorithm tables 8.5.3.2-1 to
8.5.3.3-2 are the ceiling; a deployment may only narrow them).

Never allowed, whatever the configuration: ``none``, ``RSA1_5``, RSA-OAEP with SHA-1,
AES-CBC-HMAC content encryption, PS*/EdDSA signatures (not in the ESData tables), ``zip``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from m2msec.esdata.credentials import CONTENT_ALGS, KEY_MANAGEMENT_ALGS, SIGNATURE_ALGS
from m2msec.esdata.errors import PolicyError

DEFAULT_MAX_ENVELOPE_SIZE = 1024 * 1024  # 1 MiB, as received (before any base64 decoding)


def _subset(name: str, values: Iterable[str], ceiling: frozenset[str]) -> frozenset[str]:
    got = frozenset(values)
    extra = got - ceiling
    if extra:
        raise PolicyError(f"{name}: {sorted(extra)} not permitted by the ESData profile")
    return got


@dataclass(frozen=True)
class Policy:
    key_management: frozenset[str] = field(default=KEY_MANAGEMENT_ALGS)
    content_encryption: frozenset[str] = field(default=CONTENT_ALGS)
    signature: frozenset[str] = field(default=SIGNATURE_ALGS)
    max_envelope_size: int = DEFAULT_MAX_ENVELOPE_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_management", _subset("key_management", self.key_management, KEY_MANAGEMENT_ALGS))
        object.__setattr__(
            self, "content_encryption", _subset("content_encryption", self.content_encryption, CONTENT_ALGS)
        )
        object.__setattr__(self, "signature", _subset("signature", self.signature, SIGNATURE_ALGS))
        if self.max_envelope_size <= 0:
            raise PolicyError("max_envelope_size must be positive")
