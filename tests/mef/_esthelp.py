"""Shared set-up of the EST tests: an MEF (PSK + certificate RSPF) with its DevCA kept in the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from _mefhelp import ENROLEE, KPM, KPM_ID, MEF_FQDN, Clock, ThreadedMEF, configure_default, make_state

from m2msec.mef import EnroleeConfig, MEFState, mef_tls_config
from m2msec.mef.est import DevCAAuthority, ESTProfile, ESTService, SecurityType, load_dev_ca, store_dev_ca
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSConfig

SP = "m2m.example.com"
AE_ID = f"//{SP}/id-in/Cdevice1"  # the PSK enrolee's certificate identifier (AE-ID flavour)
AE_ALT = f"//{SP}/id-in/Cdevice1-alt"  # the MEF adds this one
CERT_ENROLEE = f"//{SP}/id-in/Ccertdev"  # a certificate-RSPF enrolee (manufacturer certificate)
CERT_ENROLEE_EST_ID = f"//{SP}/id-in/Ccertdev-op"  # the identifier its MEF-provisioned certificate carries


@dataclass
class World:
    clock: Clock
    state: MEFState
    est: ESTService
    ca: DevCA  # the MEF CA as loaded back from the store
    maker: DevCA  # a manufacturer CA (certificate RSPF bootstrap certificates)
    mef_creds: CertCredentials
    maker_dev: CertCredentials

    def psk_tls(self) -> TLSConfig:
        return mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), KPM))

    def cert_tls(self, creds: CertCredentials) -> TLSConfig:
        return mef_tls_config(credentials=creds, mef_fqdn=MEF_FQDN, mef_anchors=(self.ca.trust_anchor,),
                              clock=self.clock)

    def mef(self, **kw: Any) -> ThreadedMEF:
        return ThreadedMEF(self.state, credentials=self.mef_creds, est=self.est, **kw)


def creds(issued: Any) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


def make_world(tmp: Path, *, types: tuple[SecurityType, ...] = (SecurityType.SAEF, SecurityType.ESPRIM)) -> World:
    clock = Clock()
    past = clock.now - timedelta(hours=1)
    mef_ca = DevCA.create("MEF CA", now=past, permit_dns=[SP], permit_uri=[SP], intermediate=True)
    maker = DevCA.create("Maker", now=past, permit_uri=[SP])
    state = make_state(tmp, clock, (maker.trust_anchor, mef_ca.trust_anchor))
    store_dev_ca(state.store, mef_ca)
    loaded = load_dev_ca(state.store)
    assert loaded is not None
    est = ESTService(state, DevCAAuthority(loaded, clock))
    configure_default(state)  # ENROLEE with Kpm (PSK RSPF), Enrolee B target
    est.set_profile(ESTProfile(ENROLEE, F.AE_ID, (AE_ID,), types, added_identifiers=(AE_ALT,)))
    state.add_enrolee(EnroleeConfig(CERT_ENROLEE, cert=PeerCertInfo(F.AE_ID, CERT_ENROLEE),
                                    cert_anchors_pem=(maker.trust_anchor.public_bytes(Encoding.PEM).decode(),)))
    est.set_profile(ESTProfile(CERT_ENROLEE, F.AE_ID, (CERT_ENROLEE_EST_ID,), (SecurityType.SAEF,)))
    return World(clock, state, est, loaded, maker, creds(mef_ca.issue(F.FQDN, [MEF_FQDN], now=past)),
                 creds(maker.issue(F.AE_ID, [CERT_ENROLEE], now=past)))

