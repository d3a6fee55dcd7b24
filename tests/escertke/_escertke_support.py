"""Shared helpers of the ESCertKE tests (a module with a unique name: test files import it
directly, since every test folder's conftest is a module called ``conftest``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from m2msec.escertke import InitiatorInfo, TerminatorInfo
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


def terminator_info(pki: PKI, *, identifier: str = TER_CERT_ID, anchor: DevCA | None = None,
                    address: str | None = None) -> TerminatorInfo:
    return TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, identifier), ((anchor or pki.ca).trust_anchor,),
                          identity=TER_ID, address=address)


def initiator_info(pki: PKI, *, identifier: str = INI_CERT_ID, anchor: DevCA | None = None) -> InitiatorInfo:
    return InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, identifier), ((anchor or pki.ca).trust_anchor,),
                         identity=INI_ID)
