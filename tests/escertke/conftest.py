"""Fixtures of the ESCertKE tests: a DevCA, two end-points' certificates, a second
(untrusted) CA, a movable clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint, TerminatorInfo
from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
from m2msec.tls import CertCredentials

SP = "m2m.example.com"
INI_ID = "Cae-ini"  # the Initiator's AE-ID (Notify From)
TER_ID = "Cae-ter"
INI_CERT_ID = f"https://{SP}/id-in/Cae-ini"
TER_CERT_ID = f"https://{SP}/id-in/Cae-ter"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class PKI:
    ca: DevCA
    other: DevCA
    ini: CertCredentials
    ter: CertCredentials
    rogue: CertCredentials  # issued by ``other`` with the Initiator's identifier
    ini_key_pem: bytes
    ter_key_pem: bytes


def creds(issued: object) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))  # type: ignore[attr-defined]


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


def terminator_info(pki: PKI, *, identifier: str = TER_CERT_ID, anchor: DevCA | None = None,
                    address: str | None = None) -> TerminatorInfo:
    return TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, identifier), ((anchor or pki.ca).trust_anchor,),
                          identity=TER_ID, address=address)


def initiator_info(pki: PKI, *, identifier: str = INI_CERT_ID, anchor: DevCA | None = None) -> InitiatorInfo:
    return InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, identifier), ((anchor or pki.ca).trust_anchor,),
                         identity=INI_ID)


@pytest.fixture
def ends(pki: PKI, clock: Clock) -> tuple[InitiatingEndPoint, TerminatingEndPoint]:
    ini = InitiatingEndPoint(pki.ini, clock=clock, keys=ESCertKEKeys(clock=clock))
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock, keys=ESCertKEKeys(clock=clock))
    return ini, ter
