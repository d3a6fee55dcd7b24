"""oneM2M certificates: flavours, a development CA, CSRs and peer verification.

TS-0003 clauses 8.1.2 (certificate-based frameworks: flavours, path validation,
certificate status with CRLs and OCSP, credential configuration, certificate verification) and 10.1 (certificate
profiles, public key identifiers, CSR profile).
"""

from __future__ import annotations

from m2msec.pki.ca import DevCA, IssuedCertificate, build_name_constraints
from m2msec.pki.crl import (
    CRLStore,
    RevocationPolicy,
    RevocationStatus,
    crl_number,
    delta_base_number,
    is_delta_crl,
    load_crl_files,
    load_crls,
)
from m2msec.pki.crl_fetch import (
    CRLFetcher,
    CRLFetchError,
    CRLRefresher,
    FetchOutcome,
    FetchResult,
    distribution_points,
    freshest_crl_points,
    load_https_ca,
    verify_fetched_crl,
)
from m2msec.pki.crl_http import CRL_MEDIA_TYPE, CRLHTTPServer
from m2msec.pki.ocsp import (
    OCSPFailure,
    OCSPResponder,
    OCSPResponseError,
    OCSPResult,
    OCSPStatus,
    OCSPStore,
    verify_response,
)
from m2msec.pki.ocsp_http import OCSPClient, OCSPFetchError, OCSPHTTPServer
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain
from m2msec.pki.errors import (
    CertificateParseError,
    CertificateVerificationError,
    CRLError,
    CSRError,
    IssuanceError,
    NameConstraintError,
    UnsupportedKeyError,
    VerificationReason,
)
from m2msec.pki.identifiers import (
    AE_ID_URI_SCHEME,
    CertificateFlavour,
    DeviceId,
    canonical_identifier,
    identifiers_of,
    san_entry,
)
from m2msec.pki.keypolicy import DEFAULT_KEY_POLICY, STRICT_ONEM2M, KeyPolicy, KeyType, generate_private_key
from m2msec.pki.pkid import matches_public_key_identifier, ni_uri, public_key_identifier
from m2msec.pki.profile import build_csr
from m2msec.pki.verify import PeerCertInfo, VerifiedPeer, verify_peer_certificate, verify_raw_public_key

__all__ = [
    "AE_ID_URI_SCHEME",
    "CRLHTTPServer",
    "CRL_MEDIA_TYPE",
    "CRLError",
    "CRLFetchError",
    "CRLFetcher",
    "CRLRefresher",
    "CRLStore",
    "CSRError",
    "CertificateFlavour",
    "CertificateParseError",
    "CertificateVerificationError",
    "DEFAULT_KEY_POLICY",
    "DevCA",
    "DeviceId",
    "FetchOutcome",
    "FetchResult",
    "IssuanceError",
    "IssuedCertificate",
    "KeyPolicy",
    "KeyType",
    "NameConstraintError",
    "OCSPClient",
    "OCSPStapler",
    "stapler_for_chain",
    "OCSPFailure",
    "OCSPFetchError",
    "OCSPHTTPServer",
    "OCSPResponder",
    "OCSPResponseError",
    "OCSPResult",
    "OCSPStatus",
    "OCSPStore",
    "PeerCertInfo",
    "RevocationPolicy",
    "RevocationStatus",
    "STRICT_ONEM2M",
    "UnsupportedKeyError",
    "VerificationReason",
    "VerifiedPeer",
    "build_csr",
    "build_name_constraints",
    "canonical_identifier",
    "distribution_points",
    "generate_private_key",
    "identifiers_of",
    "crl_number",
    "delta_base_number",
    "freshest_crl_points",
    "is_delta_crl",
    "load_crl_files",
    "load_crls",
    "load_https_ca",
    "matches_public_key_identifier",
    "ni_uri",
    "public_key_identifier",
    "san_entry",
    "verify_peer_certificate",
    "verify_fetched_crl",
    "verify_response",
    "verify_raw_public_key",
]
