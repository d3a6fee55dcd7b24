"""TLS 1.2 / DTLS 1.2 for the oneM2M security frameworks (TS-0003 clauses 10.2, 10.3.1).

- :mod:`m2msec.tls.profiles` the suite profiles of 10.2.2/10.2.3 and the 10.3.1 exporter labels
- :mod:`m2msec.tls.psk`      TLS-PSK callbacks on pyOpenSSL contexts (RFC 4279)
- :mod:`m2msec.tls.engine`   sans-I/O ``TLSEngine`` on memory BIOs (PSK / certificate, TLS / DTLS)
- :mod:`m2msec.tls.aio`      asyncio stream adapter (TCP)
- :mod:`m2msec.tls.dtls`     asyncio datagram adapter (UDP)
- :mod:`m2msec.tls.dtls_cookie` stateless HelloVerifyRequest cookie exchange of DTLS servers (RFC 6347 4.2.1)
- :mod:`m2msec.tls.cli`      ``m2msec tls server|client``
"""

from __future__ import annotations

from m2msec.tls.engine import (
    CertCredentials,
    PSKCredentials,
    Role,
    TLSConfig,
    TLSContext,
    TLSEngine,
    TLSError,
    TLSFailureReason,
    TLSHandshakeError,
    TLSState,
)
from m2msec.tls.profiles import AuthMode, Transport

__all__ = [
    "AuthMode",
    "CertCredentials",
    "PSKCredentials",
    "Role",
    "TLSConfig",
    "TLSContext",
    "TLSEngine",
    "TLSError",
    "TLSFailureReason",
    "TLSHandshakeError",
    "TLSState",
    "Transport",
]
