"""M2M Enrolment Function: Remote Security Provisioning Frameworks (TS-0003 8.3, 10.3.1-10.3.4, 10.3.7, 10.7).

* :mod:`m2msec.mef.protocol` - wire messages (tables 8.3.2.1-1 to -6), the
  ``/fetchCredentials/<KeID>/<SUID>`` target, SUID -> key, the MEF's decision;
* :mod:`m2msec.mef.state` - store-backed Bootstrap Instruction Configuration,
  Enrolment-Tokens, Ke/Kre (one transaction per enrolment);
* :mod:`m2msec.mef.server` - :class:`MEFServer` (PSK and certificate RSPFs, MEF Key Retrieval);
* :mod:`m2msec.mef.client` - the enrolee (:func:`enrol`) and the Enrolment Target
  (:class:`MEFKeyFetcher`, :class:`MEFKpsaDirectory` for PSK SAEF);
* :mod:`m2msec.mef.est` - Certificate Enrolment with EST (8.3.6, RFC 7030): :class:`ESTService`
  (the MEF as EST server and RA), :class:`CertificateAuthority` / :class:`DevCAAuthority`;
  :mod:`m2msec.mef.est_client` - the enrolee (:func:`est_enrol`); :mod:`m2msec.mef.estder` - CsrAttrs DER;
* :mod:`m2msec.mef.cli` - ``m2msec mef serve|enrol|enrolee|target|est-ca|est-enrol``.

Wire format: ``docs/mef-protocol.md``.
"""

from __future__ import annotations

from m2msec.mef.client import (
    Enrolment,
    FetchedCredential,
    MEFClientError,
    MEFKeyFetcher,
    MEFKpsaDirectory,
    enrol,
    load_enrolment,
    mef_tls_config,
    save_enrolment,
)
from m2msec.mef.protocol import (
    DirectKey,
    EnrolmentRequest,
    EnrolmentResponse,
    Instruction,
    InstructionType,
    MAFPreference,
    TargetGrant,
    credential_for,
    fetch_target,
    parse_fetch_target,
)
from m2msec.mef.est import CertificateAuthority, DevCAAuthority, ESTProfile, ESTService, SecurityType
from m2msec.mef.est_client import ESTClientError, ProvisionedCertificate, est_enrol
from m2msec.mef.server import MEFServer
from m2msec.mef.state import EnroleeConfig, MEFError, MEFState, SessionPeer, TargetConfig

__all__ = [
    "CertificateAuthority",
    "DevCAAuthority",
    "DirectKey",
    "ESTClientError",
    "ESTProfile",
    "ESTService",
    "EnroleeConfig",
    "Enrolment",
    "EnrolmentRequest",
    "EnrolmentResponse",
    "FetchedCredential",
    "Instruction",
    "InstructionType",
    "MAFPreference",
    "MEFClientError",
    "MEFError",
    "MEFKeyFetcher",
    "MEFKpsaDirectory",
    "MEFServer",
    "MEFState",
    "ProvisionedCertificate",
    "SecurityType",
    "SessionPeer",
    "TargetConfig",
    "TargetGrant",
    "credential_for",
    "enrol",
    "est_enrol",
    "fetch_target",
    "load_enrolment",
    "mef_tls_config",
    "parse_fetch_target",
    "save_enrolment",
]
