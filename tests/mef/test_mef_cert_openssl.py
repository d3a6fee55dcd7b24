"""Certificate-Based RSPF (TS-0003 8.3.2.2) and an independent check of Ke/KeID with openssl s_client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _mefhelp import ENROLEE_B, KPM, KPM_ID, MEF_FQDN, Clock, ThreadedMEF, configure_default, make_state, run

from m2msec.keys import derive_kpsa, split_exported
from m2msec.mef import EnroleeConfig, MEFKeyFetcher, TargetConfig, TargetGrant, enrol, mef_tls_config
from m2msec.mef.state import NS_KE
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.tls import TLSHandshakeError
from m2msec.tls.engine import CertCredentials

SP = "m2m.example.com"
AE_CERT_ID = f"//{SP}/id-in/Ccertdev"


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    now = datetime.now(UTC) - timedelta(hours=1)
    ca = DevCA.create("Example SP", now=now, permit_dns=[SP], permit_uri=[SP])
    other = DevCA.create("Other SP", now=now, permit_dns=[SP], permit_uri=[SP])
    return {"ca": ca, "mef": ca.issue(F.FQDN, [MEF_FQDN], now=now), "dev": ca.issue(F.AE_ID, [AE_CERT_ID], now=now),
            "stranger": ca.issue(F.AE_ID, [f"//{SP}/id-in/Cunconfigured"], now=now),
            "forged": other.issue(F.AE_ID, [AE_CERT_ID], now=now), "b": ca.issue(F.AE_ID, [ENROLEE_B], now=now)}


def creds(issued: Any) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


def test_certificate_rspf(tmp_path: Path, pki: dict[str, Any]) -> None:
    clock = Clock()
    root = pki["ca"].trust_anchor
    state = make_state(tmp_path, clock, (root,))
    state.add_enrolee(EnroleeConfig(AE_CERT_ID, cert=PeerCertInfo(F.AE_ID, AE_CERT_ID),
                                    targets=(TargetGrant(ENROLEE_B, (22,)),)))
    state.add_target(TargetConfig(ENROLEE_B, cert=PeerCertInfo(F.AE_ID, ENROLEE_B)))

    def tls(issued: Any) -> Any:
        return mef_tls_config(credentials=creds(issued), mef_fqdn=MEF_FQDN, mef_anchors=(root,), clock=clock)

    with ThreadedMEF(state, credentials=creds(pki["mef"])) as m:
        async def go() -> None:
            e = await enrol(m.host, m.port, tls(pki["dev"]))
            assert e.enrolee_id == AE_CERT_ID
            assert state.store.get_credential(NS_KE, e.ke_id).metadata["credential"].startswith("cert:ae-id|")
            f = MEFKeyFetcher(m.host, m.port, tls(pki["b"]), target_id=ENROLEE_B, mef_fqdn=MEF_FQDN)
            assert (await f.fetch(e.ke_id, 22)).key == derive_kpsa(e.ke, ENROLEE_B)
            for bad in ("stranger", "forged"):  # unconfigured enrolee / untrusted issuer
                with pytest.raises(TLSHandshakeError):
                    await enrol(m.host, m.port, tls(pki[bad]))
            # the enrolee refuses an MEF certificate for another FQDN
            wrong = mef_tls_config(credentials=creds(pki["dev"]), mef_fqdn="other." + SP, mef_anchors=(root,),
                                   clock=clock)
            with pytest.raises(TLSHandshakeError):
                await enrol(m.host, m.port, wrong)

        run(go)
    assert len(state.store.list_credentials(NS_KE)) == 1
    state.store.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_ke_matches_openssl_exporter(tmp_path: Path) -> None:
    """openssl s_client is the enrolee: its -keymatexport output gives Ke/RelativeKeID of the session."""
    clock = Clock()
    state = make_state(tmp_path, clock)
    configure_default(state)
    body = json.dumps({"CertificateEnrolmentIndication": False, "MAFEnrolmentIndication": False,
                       "RemoteManagementIndication": False}).encode()
    request = (b"POST /enrolment HTTP/1.1\r\nHost: mef\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with ThreadedMEF(state) as m:
        proc = subprocess.run(
            ["openssl", "s_client", "-tls1_2", "-connect", f"{m.host}:{m.port}", "-psk", KPM.hex(),
             "-psk_identity", KPM_ID, "-cipher", "PSK-AES128-CBC-SHA256", "-keymatexport",
             "EXPORTER-oneM2M-Bootstrap", "-keymatexportlen", "48", "-ign_eof"],
            input=request, capture_output=True, timeout=20)
    out = proc.stdout.decode("latin-1")
    mat = re.search(r"Keying material:\s*([0-9A-Fa-f]{96})", out)
    assert mat, out[-2000:]
    ke, rel = split_exported(bytes.fromhex(mat.group(1)))
    doc, _ = json.JSONDecoder().raw_decode(out[out.index('{"Status"'):])
    assert doc["KeID"] == f"{rel.hex()}@{MEF_FQDN}"
    assert state.store.get_credential(NS_KE, doc["KeID"]).secret == ke
    state.store.close()
