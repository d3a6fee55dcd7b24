"""A device enrols with the MEF and gets its oneM2M certificate; the operator then revokes it
(TS-0003 8.3.3 Pre-Provisioned Symmetric Key RSPF, 8.3.5 Enrolment Exchange, 10.3.1-10.3.2
Ke/KeID, 8.3.6 certificate enrolment with EST (RFC 7030); 8.1.2.2 certificate status by CRL).

    .venv/bin/python examples/mef_enrolment.py

An MEF runs in-process on 127.0.0.1 over a temporary SQLite store, with its CA (a development
CA kept in the store) and a CRL server.  The device was provisioned with Kpm/KpmID; it runs
the Enrolment Exchange over TLS-PSK (getting KeID and Ke, shown only as a fingerprint) and, in
the same session, EST enrolment for an AE-ID certificate.  The device encrypts a reading for a
dashboard AE with its usage-constrained ESData key (SUID 24, named by its KeID); the dashboard
fetches that key from the MEF on first sight and opens it.  A relying party fetches the MEF CA's
CRLs from the certificate's distribution point and accepts the certificate; the operator
revokes the enrolee; the next CRL lists the certificate and the relying party refuses it; the
dashboard's re-check with the MEF forgets the ESData key; the revoked device can no longer enrol.  The application code is between the ``----`` markers;
the rest is set-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from m2msec.esdata import Source, Target
from m2msec.esdata.errors import UnknownKidError
from m2msec.mef import (
    EnroleeConfig,
    ESTClientError,
    MEFKeyFetcher,
    MEFServer,
    MEFState,
    TargetConfig,
    TargetGrant,
    est_enrol,
    mef_tls_config,
)
from m2msec.mef.esdatakeys import MEFESDataKeySource, esdata_recipient
from m2msec.mef.est import DevCAAuthority, ESTProfile, ESTService, SecurityType, load_dev_ca, store_dev_ca
from m2msec.mef.est_crl import ESTCRLPublisher, crl_url_for
from m2msec.pki import (
    CRLHTTPServer,
    CertificateFlavour,
    CertificateVerificationError,
    CRLFetcher,
    CRLStore,
    DevCA,
    PeerCertInfo,
    RevocationPolicy,
    crl_number,
    distribution_points,
    verify_peer_certificate,
)
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials

SP = "sp.example.com"
MEF_FQDN = f"mef.{SP}"
DEVICE = f"//{SP}/id-in/Cthermometer"  # the enrolee and the identifier its certificate carries
KPM_ID = f"kpm-thermometer@{MEF_FQDN}"
DASHBOARD = f"//{SP}/id-in/Cdashboard"  # an AE that reads the device's encrypted data (an Enrolment Target)


def now() -> datetime:
    return datetime.now(timezone.utc)


def fingerprint(key: bytes) -> str:
    return f"sha256:{hashlib.sha256(key).hexdigest()[:16]} ({len(key)} octets)"


async def main(workdir: Path) -> int:
    # Set-up (the operator): store, MEF CA, the enrolee with its Kpm and EST profile, CRL server.
    kpm = os.urandom(32)  # pre-provisioned in the device and the MEF
    dashboard_psk = os.urandom(32)  # pre-configured between the dashboard and the MEF
    store = open_store(f"sqlite:///{workdir / 'mef.db'}", KeyEncryptionKey.generate(), clock=now)
    store_dev_ca(store, DevCA.create("example MEF CA", now=now(), permit_dns=[SP], permit_uri=[SP], intermediate=True))
    ca = load_dev_ca(store)  # the CA's keys live in the store, sealed under its KEK
    assert ca is not None
    state = MEFState(store, MEF_FQDN, now, (ca.trust_anchor,))
    est = ESTService(state, DevCAAuthority(ca, now))
    state.add_enrolee(EnroleeConfig(DEVICE, kpm_id=KPM_ID, expiry_seconds=3600,
                                    targets=(TargetGrant(DASHBOARD, (24,)),)), kpm=kpm)  # SUID 24: ESData encryption
    state.add_target(TargetConfig(DASHBOARD, psk_id="dashboard"), psk=dashboard_psk)
    est.set_profile(ESTProfile(DEVICE, CertificateFlavour.AE_ID, (DEVICE,), (SecurityType.SAEF, SecurityType.ESPRIM)))
    crls = ESTCRLPublisher(store, ca, now)
    crl_server = await CRLHTTPServer(crls.sources(), clock=now).start()
    ca.crl_url = crl_url_for(f"http://{crl_server.host}:{crl_server.port}/crl", ca.issuing_signer)  # into each cert
    mef = MEFServer(state, est=est)
    host, port = await mef.start()
    print(f"MEF {MEF_FQDN} on {host}:{port}; CRLs at {crl_server.url('root')} and {crl_server.url('intermediate')}")
    try:
        # ---- Device: Enrolment Exchange + EST over the PSK RSPF (TLS-PSK with KpmID/Kpm)
        tls = mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), kpm))
        enrolment, cert = await est_enrol(host, port, tls)
        cert.install(workdir / "device")  # key.pem (0600), cert.pem, chain.pem, trust anchors
        # ----
        print(f"enrolled as {enrolment.enrolee_id}: KeID {enrolment.ke_id}, Ke {fingerprint(enrolment.ke)}, "
              f"KreID {enrolment.kre_id}")
        print(f"EST certificate serial {cert.serial}, identifiers {cert.identifiers}, issuer "
              f"{cert.certificate.issuer.rfc4514_string()}, SHA-256 {cert.certificate.fingerprint(hashes.SHA256()).hex()[:16]}")
        print(f"  for {[t.value for t in cert.security_types]}, CRL distribution point {distribution_points(cert.certificate)}")

        # ---- Device: a reading encrypted for the dashboard (kid = KeID, key from Ke, SUID 24)
        reading = b'{"temperature": 21.5}'
        envelope = Source().seal(reading, serialization="compact",
                                 recipients=[esdata_recipient(enrolment.ke, enrolment.ke_id, DASHBOARD)])
        # ---- Dashboard: fetches the key for that KeID from the MEF on first sight, opens it
        keys = MEFESDataKeySource(MEFKeyFetcher(host, port, mef_tls_config(psk=PSKCredentials(b"dashboard", dashboard_psk)),
                                                target_id=DASHBOARD, mef_fqdn=MEF_FQDN, clock=now))
        opened = await keys.open(Target(keys), envelope)
        # ----
        print(f"dashboard opened {opened.payload!r} from {keys.enrolee_id(enrolment.ke_id)} "
              f"(key fetched from the MEF for KeID {opened.decrypted_with})")

        # ---- Relying party (e.g. a CSE in certificate SAEF): fetch the CRLs, check the certificate
        rp_crls = CRLStore()
        fetcher = CRLFetcher(rp_crls, [ca.trust_anchor, *ca.chain], clock=now)
        urls = [*distribution_points(cert.certificate), crl_server.url("root")]  # leaf's CRL + the root's

        async def accepts() -> str:
            for url in urls:
                result = await fetcher.fetch(url)
                if not result.ok:
                    raise RuntimeError(f"CRL fetch failed: {result}")
            try:
                verify_peer_certificate([cert.certificate, *cert.chain], expected=PeerCertInfo(CertificateFlavour.AE_ID, DEVICE),
                                        trust_anchors=[ca.trust_anchor], now=now(), crls=rp_crls,
                                        revocation=RevocationPolicy.REQUIRE)
            except CertificateVerificationError as exc:
                return f"refused ({exc.reason_code.name})"
            return "accepted"
        # ----
        before = await accepts()
        print(f"relying party, CRL #{crl_number(crls.crl())}: "
              f"certificate {before}")

        # ---- Operator: revoke the enrolee (Ke/Kre deleted, its EST certificates revoked)
        keys_removed = state.revoke_enrolee(DEVICE)
        # ----
        crl = crls.crl()
        entry = crl.get_revoked_certificate_by_serial_number(cert.certificate.serial_number)
        print(f"operator revoked {DEVICE}: {keys_removed} keys removed; CRL "
              f"#{crl_number(crl)} lists serial "
              f"{cert.serial}: {entry is not None}")
        after = await accepts()
        print(f"relying party after re-fetching the CRL: certificate {after}")
        counts = await keys.recheck()  # the dashboard asks the MEF again about the keys it holds
        try:
            Target(keys).open(envelope)
            dashboard = "still opens"
        except UnknownKidError:
            dashboard = "key forgotten"
        print(f"dashboard re-check with the MEF: {counts['revoked']} key(s) revoked; the old envelope: {dashboard}")
        try:
            await est_enrol(host, port, tls)
        except ESTClientError as exc:  # the MEF refuses the revoked enrolee
            refused = f"refused ({exc})"
        else:
            refused = "NOT refused"
        print(f"revoked device enrols again: {refused}")
        if (before != "accepted" or entry is None or after != "refused (REVOKED)" or not refused.startswith("refused")
                or opened.payload != reading or dashboard != "key forgotten"):
            print("FAIL: unexpected outcome")
            return 1
    finally:
        await mef.close()
        await crl_server.close()
        store.close()
    print("OK: MEF enrolment, EST certificate, an ESData key from the MEF, revocation (CRL, MEF re-check)")
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        rc = asyncio.run(asyncio.wait_for(main(Path(d)), 30))
    sys.exit(rc)
