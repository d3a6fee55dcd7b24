"""End-to-End Security of Data - ESData (TS-0003 clause 8.5; TS-0004 6.3.4.2.38).

Public API::

    Source().seal(payload, serialization=..., recipients=[...], signers=[...], aad=..., enc=...)
    Target(key_source, certificate_verifier=...).open(envelope, expected_source_id=...)
    to_content_instance(envelope) / from_content_instance(resource)
"""

from __future__ import annotations

from m2msec.esdata.api import (
    ContentInstanceEnvelope,
    Source,
    Target,
    format_content_info,
    from_content_instance,
    parse_content_info,
    to_content_instance,
)
from m2msec.esdata.certverify import CertificateVerifier, certificate_identifiers, pki_verifier, x509_verifier
from m2msec.esdata.credentials import (
    CertificateRecipient,
    CertificateSigner,
    ChainedKeySource,
    InMemoryKeySource,
    KeySource,
    ResolvedKey,
    SymmetricRecipient,
    SymmetricSigner,
    Usage,
    certificate_kid,
)
from m2msec.esdata.errors import ESDataError, Reason
from m2msec.esdata.policy import DEFAULT_MAX_ENVELOPE_SIZE, Policy
from m2msec.esdata.storesource import StoreKeySource
from m2msec.esdata.types import ContentSecurity, Envelope, Opened, SecurityClass, VerifiedSignature

__all__ = [
    "DEFAULT_MAX_ENVELOPE_SIZE",
    "CertificateRecipient",
    "CertificateSigner",
    "CertificateVerifier",
    "ChainedKeySource",
    "ContentInstanceEnvelope",
    "ContentSecurity",
    "ESDataError",
    "Envelope",
    "InMemoryKeySource",
    "KeySource",
    "Opened",
    "Policy",
    "Reason",
    "ResolvedKey",
    "SecurityClass",
    "StoreKeySource",
    "Source",
    "SymmetricRecipient",
    "SymmetricSigner",
    "Target",
    "Usage",
    "VerifiedSignature",
    "certificate_identifiers",
    "certificate_kid",
    "format_content_info",
    "from_content_instance",
    "parse_content_info",
    "pki_verifier",
    "to_content_instance",
    "x509_verifier",
]
