"""Fixtures of the ESCertKE tests: a DevCA, two end-points' certificates, a second
(untrusted) CA, a movable clock.  Plain helpers live in ``_escertke_support``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from _escertke_support import INI_CERT_ID, PKI, SP, TER_CERT_ID, Clock, creds, initiator_info

from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, TerminatingEndPoint
from m2msec.pki import CertificateFlavour, DevCA


@pytest.fixture(scope="session")
def pki() -> PKI:
    from m2msec.pki.ca import private_key_pem

    now = datetime.now(UTC)
    ca = DevCA.create("ESCertKE SP", now=now, permit_uri=[SP], permit_dns=[SP], intermediate=True)
    other = DevCA.create("Other SP", now=now, permit_uri=[SP], permit_dns=[SP])
    ini = ca.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=now)
    ter = ca.issue(CertificateFlavour.AE_ID, [TER_CERT_ID], now=now)
    rogue = other.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=now)
    return PKI(ca, other, creds(ini), creds(ter), creds(rogue), private_key_pem(ini.private_key),
               private_key_pem(ter.private_key))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ends(pki: PKI, clock: Clock) -> tuple[InitiatingEndPoint, TerminatingEndPoint]:
    ini = InitiatingEndPoint(pki.ini, clock=clock, keys=ESCertKEKeys(clock=clock))
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock, keys=ESCertKEKeys(clock=clock))
    return ini, ter
