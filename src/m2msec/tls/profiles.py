"""oneM2M (D)TLS 1.2 suite profiles (TS-0003 clause 10.2.1-10.2.3).

TS-0003 10.2.1: TLS 1.2 over TCP, DTLS 1.2 over UDP, SNI supported by all
implementations.  10.2.2: the TLS-PSK-based frameworks (provisioned symmetric
key SAEF, MAF-based SAEF, pre-shared key RSPF, GBA RSPF) use RFC 4279 PSK key
exchange with at least ``TLS_PSK_WITH_AES_128_CBC_SHA256`` (TLS) and
``TLS_PSK_WITH_AES_128_CCM_8`` (DTLS).  10.2.3: the certificate-based
frameworks use ECDHE_ECDSA with at least
``TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256`` (TLS) and
``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`` (DTLS).  The clause lists no further
(optional, stronger) suites, so the profile is exactly these four.

Profile decisions that the clause leaves open (see the report / docs/profile.md):

* protocol version pinned: min = max = TLS 1.2 (0x0303) or DTLS 1.2 (0xFEFD);
* OpenSSL rates the 64-bit CCM_8 tag as below security level 1, so contexts
  whose suite list contains a CCM_8 suite append ``:@SECLEVEL=0``; every other
  context keeps the library default;
* ECDHE groups ``P-256:P-384`` (RFC 8422 curves; RFC 7251 CCM_8 suites are
  specified for P-256), signature algorithms ``ECDSA+SHA256:ECDSA+SHA384:
  ECDSA+SHA512`` in certificate mode;
* DTLS default path MTU 1200 bytes of UDP payload (fits the IPv6 minimum
  link MTU of 1280 with IP/UDP headers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DTLS1_2_VERSION",
    "TLS1_2_VERSION",
    "CipherSuite",
    "TLS_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_PSK_WITH_AES_128_CCM_8",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    "ALL_SUITES",
    "Transport",
    "AuthMode",
    "ECDHE_GROUPS",
    "SIGNATURE_ALGORITHMS",
    "DEFAULT_DTLS_MTU",
    "suites_for",
    "cipher_string",
]

#: TLS 1.2 wire version (pyOpenSSL ``SSL.TLS1_2_VERSION``).
TLS1_2_VERSION = 0x0303
#: DTLS 1.2 wire version; pyOpenSSL has no constant for it.
DTLS1_2_VERSION = 0xFEFD


class Transport(str, enum.Enum):
    TLS = "tls"  # TLS 1.2 over TCP
    DTLS = "dtls"  # DTLS 1.2 over UDP


class AuthMode(str, enum.Enum):
    PSK = "psk"  # TS-0003 10.2.2
    CERTIFICATE = "certificate"  # TS-0003 10.2.3


@dataclass(frozen=True)
class CipherSuite:
    """One IANA cipher suite with its OpenSSL name and code point."""

    iana_name: str
    openssl_name: str
    code: int
    rfc: str

    @property
    def ccm8(self) -> bool:
        return self.iana_name.endswith("_CCM_8")


TLS_PSK_WITH_AES_128_CBC_SHA256 = CipherSuite(
    "TLS_PSK_WITH_AES_128_CBC_SHA256", "PSK-AES128-CBC-SHA256", 0x00AE, "RFC 5487"
)
TLS_PSK_WITH_AES_128_CCM_8 = CipherSuite(
    "TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8", 0xC0A8, "RFC 6655"
)
TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 = CipherSuite(
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256", 0xC023, "RFC 5289"
)
TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 = CipherSuite(
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", "ECDHE-ECDSA-AES128-CCM8", 0xC0AE, "RFC 7251"
)

ALL_SUITES: tuple[CipherSuite, ...] = (
    TLS_PSK_WITH_AES_128_CBC_SHA256,
    TLS_PSK_WITH_AES_128_CCM_8,
    TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
)

#: Profile table: (transport, mode) -> mandatory suite (TS-0003 10.2.2 / 10.2.3).
_PROFILE: dict[tuple[Transport, AuthMode], CipherSuite] = {
    (Transport.TLS, AuthMode.PSK): TLS_PSK_WITH_AES_128_CBC_SHA256,
    (Transport.DTLS, AuthMode.PSK): TLS_PSK_WITH_AES_128_CCM_8,
    (Transport.TLS, AuthMode.CERTIFICATE): TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
    (Transport.DTLS, AuthMode.CERTIFICATE): TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
}

ECDHE_GROUPS = "P-256:P-384"
SIGNATURE_ALGORITHMS = "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512"
DEFAULT_DTLS_MTU = 1200


def suites_for(transport: Transport, modes: tuple[AuthMode, ...] | list[AuthMode]) -> list[CipherSuite]:
    """The profile suites for ``transport`` and each auth mode, in the given order."""
    return [_PROFILE[(Transport(transport), AuthMode(m))] for m in modes]


def cipher_string(suites: list[CipherSuite] | tuple[CipherSuite, ...]) -> str:
    """OpenSSL TLS 1.2 cipher string; ``@SECLEVEL=0`` only when a CCM_8 suite is present."""
    if not suites:
        raise ValueError("empty suite list")
    s = ":".join(x.openssl_name for x in suites)
    if any(x.ccm8 for x in suites):
        s += ":@SECLEVEL=0"
    return s

# RFC 5705 exporter labels and length (TS-0003 clause 10.3.1).
# The values live in m2msec.keys (the one place for TS-0003 10.3); re-exported here.
from m2msec.keys import EXPORT_LENGTH as EXPORTER_LENGTH  # noqa: E402
from m2msec.keys import LABEL_BOOTSTRAP as EXPORTER_BOOTSTRAP  # noqa: E402
from m2msec.keys import LABEL_CONNECTION as EXPORTER_CONNECTION  # noqa: E402
from m2msec.keys import LABEL_ESCERTKE as EXPORTER_ESCERTKE  # noqa: E402
__all__ += ["EXPORTER_BOOTSTRAP", "EXPORTER_CONNECTION", "EXPORTER_ESCERTKE", "EXPORTER_LENGTH"]
