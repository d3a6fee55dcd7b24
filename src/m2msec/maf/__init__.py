"""MAF Security Framework (TS-0003 8.8; 10.3.1, 10.3.5, 10.6).

- :mod:`m2msec.maf.protocol`    sans-I/O messages of 8.8.2.3-8.8.2.10, strict JSON, SUID rules, MAFError
- :mod:`m2msec.maf.service`     the MAF's procedures over the store (handshake identities, transactions, audit)
- :mod:`m2msec.maf.server`      asyncio TLS (PSK or certificate MAF Handshake) + h11 HTTP server, ``maf.toml``
- :mod:`m2msec.maf.client`      MAFClient with the 8.8.3 client configuration
- :mod:`m2msec.maf.mef`         the MEFClient interface (Km for a KeID) and an in-memory MEF
- :mod:`m2msec.maf.keysources`  MAF-based ESPrim (SUID 33), ESData (34/35) and SAEF (32) key plumbing
- :mod:`m2msec.maf.cli`         ``m2msec maf serve|clients|keys|revoke|add-client``

Wire format: ``docs/maf-protocol.md``.
"""

from __future__ import annotations

from m2msec.maf.client import MAFClient, MAFClientConfig, MAFResponseError, RegisteredKey, RetrievedKey
from m2msec.maf.mef import InMemoryMEF, MEFClient
from m2msec.maf.protocol import MAF_SUIDS, MAFError, Procedure
from m2msec.maf.server import MAFServer, MAFServerConfig, load_config
from m2msec.maf.service import AdminConfig, MAFPeer, MAFService

__all__ = [
    "MAF_SUIDS",
    "AdminConfig",
    "InMemoryMEF",
    "MAFClient",
    "MAFClientConfig",
    "MAFError",
    "MAFPeer",
    "MAFResponseError",
    "MAFServer",
    "MAFServerConfig",
    "MAFService",
    "MEFClient",
    "Procedure",
    "RegisteredKey",
    "RetrievedKey",
    "load_config",
]
