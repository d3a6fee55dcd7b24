"""Security Association Establishment Frameworks (TS-0003 clause 8.2).

- :mod:`m2msec.saef.config`       Credential / Association Configuration, Kpsa directories (8.1.2.3, 8.1.2.4, 8.2.2)
- :mod:`m2msec.saef.framework`    Certificate-Based (8.2.2.2) and Provisioned Symmetric Key (8.2.2.1) end-points
- :mod:`m2msec.saef.context`      the security context bound to the peer identity (8.2.1, 7.2.1, 10.4)
- :mod:`m2msec.saef.http`         oneM2M HTTP server/client over an SAEF association (h11 + :mod:`m2msec.net.http_binding`)
- :mod:`m2msec.tls.pkiverify`     the TLS <-> PKI verify hook (8.1.2.5), re-exported here
"""

from __future__ import annotations

from m2msec.saef.config import (
    KPSA_NAMESPACE,
    AssociationConfiguration,
    CredentialConfiguration,
    EntityRole,
    InMemoryKpsaDirectory,
    KpsaDirectory,
    KpsaEntry,
    PeerKind,
    StoreKpsaDirectory,
)
from m2msec.saef.context import (
    OriginatorNotAuthenticated,
    SAEFError,
    SecurityContext,
    absolute_id,
    credential_id,
)
from m2msec.saef.framework import (
    SAEFEndpoint,
    certificate_client,
    certificate_server,
    combined_server,
    connect,
    connect_dtls,
    psk_client,
    psk_server,
    serve,
    serve_dtls,
)
from m2msec.tls.pkiverify import pki_verify_hook

__all__ = [
    "KPSA_NAMESPACE",
    "AssociationConfiguration",
    "CredentialConfiguration",
    "EntityRole",
    "InMemoryKpsaDirectory",
    "KpsaDirectory",
    "KpsaEntry",
    "OriginatorNotAuthenticated",
    "PeerKind",
    "SAEFEndpoint",
    "SAEFError",
    "SecurityContext",
    "StoreKpsaDirectory",
    "absolute_id",
    "certificate_client",
    "certificate_server",
    "combined_server",
    "connect",
    "connect_dtls",
    "credential_id",
    "pki_verify_hook",
    "psk_client",
    "psk_server",
    "serve",
    "serve_dtls",
]
