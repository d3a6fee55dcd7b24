"""Demo step: an AE gets its oneM2M certificate from the MEF over EST, then runs ESCertKE.

TS-0003 8.3.6 (certificate provisioning, RFC 7030 EST with the MEF as RA in front of a CA),
10.1.1/10.1.4 (certificate and CSR profiles), 8.7 (ESCertKE).  The AE enrols with the
Pre-Provisioned Symmetric Key RSPF (TLS-PSK, Kpm/KpmID), receives a CertificateEnrolment
instruction with a one-time challengePassword, fetches ``cacerts`` and ``csrattrs``,
generates a P-256 key, sends its CSR to ``simpleenroll`` and installs the AE-ID
certificate; that certificate then authenticates it in an ESCertKE procedure with a
second AE.  (The refusals — wrong challengePassword, identifiers not entitled, bad proof of
possession, weak keys — are in tests/mef/test_est_*.py.)
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

Rows = list[tuple[str, str]]

SP = "m2msec.example"
MEF_FQDN = f"mef.{SP}"
KPM_ID = f"kpm-demo-device@{MEF_FQDN}"
DEVICE_ID = f"//{SP}/id-in/Cdemo-device"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def run_est(workdir: Path) -> Rows:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from m2msec.escertke import InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint, TerminatorInfo
    from m2msec.mef import EnroleeConfig, MEFServer, MEFState, mef_tls_config
    from m2msec.mef.est import DevCAAuthority, ESTProfile, ESTService, SecurityType, load_dev_ca, store_dev_ca
    from m2msec.mef.est_client import est_enrol
    from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
    from m2msec.store import KeyEncryptionKey, open_store
    from m2msec.tls.engine import CertCredentials, PSKCredentials

    workdir.mkdir(parents=True, exist_ok=True)
    kpm = os.urandom(32)
    store = open_store(f"sqlite:///{workdir / 'mef.db'}", KeyEncryptionKey.generate(), clock=_now)
    rows: Rows = []
    try:
        mef_ca = DevCA.create("m2msec demo MEF CA", now=_now() - timedelta(minutes=5), permit_dns=[SP],
                              permit_uri=[SP], intermediate=True)
        store_dev_ca(store, mef_ca)  # the CA keys live in the store, encrypted under its KEK
        ca = load_dev_ca(store)
        assert ca is not None
        state = MEFState(store, MEF_FQDN, _now, (ca.trust_anchor,))
        est = ESTService(state, DevCAAuthority(ca, _now))
        state.add_enrolee(EnroleeConfig(DEVICE_ID, kpm_id=KPM_ID, expiry_seconds=3600), kpm=kpm)
        est.set_profile(ESTProfile(DEVICE_ID, CertificateFlavour.AE_ID, (DEVICE_ID,),
                                   (SecurityType.SAEF, SecurityType.ESPRIM)))

        loop = asyncio.new_event_loop()  # the MEF runs on its own loop (its PSK lookup is synchronous)
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        server = MEFServer(state, est=est)
        host, port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        try:
            psk = mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), kpm))
            _, prov = asyncio.run(asyncio.wait_for(est_enrol(host, port, psk), 30))
            prov.install(workdir / "device")
            cert = prov.certificate
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            rows += [
                ("MEF (EST server and RA)", f"{MEF_FQDN} on {host}:{port}, reached over the PSK RSPF (KpmID {KPM_ID})"),
                ("EST operations", "cacerts, csrattrs, simpleenroll (challengePassword from the enrolment instruction)"),
                ("issued certificate", f"AE-ID flavour, SAN {[str(v.value) for v in san.value]}"),
                ("issuer", cert.issuer.rfc4514_string()),
                ("installed", f"{workdir / 'device'} (key.pem mode {oct((workdir / 'device' / 'key.pem').stat().st_mode & 0o777)})"),
                ("fingerprint (SHA-256)", cert.fingerprint(hashes.SHA256()).hex()[:16] + "…"),
            ]
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

        # The new certificate authenticates the device in ESCertKE with another AE.
        ter_id = f"https://{SP}/id-in/Cdemo-peer"
        peer = ca.issue(CertificateFlavour.AE_ID, [ter_id], now=_now())
        terminator = TerminatingEndPoint(
            CertCredentials(peer.private_key, peer.certificate, tuple(peer.chain)),  # type: ignore[arg-type]
            [InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, DEVICE_ID), (ca.trust_anchor,), identity="Cdemo-device")],
            clock=_now,
        )
        initiator = InitiatingEndPoint(prov.credentials(), clock=_now)
        proc = initiator.initiate(TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, ter_id), prov.trust_anchors,
                                                 identity="Cdemo-peer"))
        m3 = proc.receive_message_2(terminator.handle("Cdemo-device", proc.message_1()))
        result = proc.receive_message_4(terminator.handle("Cdemo-device", m3))
        theirs = terminator.keys.for_peer("Cdemo-device")
        if theirs is None or theirs.key != result.key:
            raise RuntimeError("ESCertKE with the EST certificate did not agree a key")
        rows.append(("ESCertKE with the EST certificate", f"pairwiseE2EKeyID {result.kid}, both ends agree"))
    finally:
        store.close()
    return rows
