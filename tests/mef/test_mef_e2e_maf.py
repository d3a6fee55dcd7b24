"""Remotely provisioned Km used end to end with real processes: `m2msec mef serve` and
`m2msec maf serve` ([mef] in maf.toml).  The AE enrols through the MEF (PSK RSPF), opens the
MAF Handshake with KeID/Km; the MAF process fetches Km from the MEF process
(/fetchCredentials/<KeID>/21) and registers the AE under the Enrolee-ID."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mef_process import MAFWithMEFProcess, MEFProcess  # noqa: E402

from m2msec.keys import derive_km  # noqa: E402
from m2msec.maf import MAFClient, MAFClientConfig  # noqa: E402
from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError  # noqa: E402

MEF_FQDN = "mef.m2m.example.com"
MAF = "maf.m2m.example.com"
ADMIN = "sp.m2m.example.com"
AE = "Cproc-ae1"
KPM = "5a" * 32
MAF_PSK = "6b" * 32


def test_enrol_then_maf_registration_across_processes(tmp_path: Path) -> None:
    mef = MEFProcess(tmp_path / "mef", MEF_FQDN)
    mef.admin("enrolee", "add", "--enrolee-id", AE, "--kpm-id", "kpm-proc", "--kpm-hex", KPM,
              "--maf", f"{MAF},https://{MAF}/keyReg,https://{MAF}/keyRetr,https://{MAF}/clientReg")
    mef.admin("enrolee", "add", "--enrolee-id", "Cno-maf", "--kpm-id", "kpm-nomaf", "--kpm-hex", "7c" * 32)
    mef.admin("target", "add", "--target-id", MAF, "--psk-id", "maf-psk", "--psk-hex", MAF_PSK)
    with mef:
        maf = MAFWithMEFProcess(tmp_path / "maf", maf_fqdn=MAF, admin_fqdn=ADMIN, mef_fqdn=MEF_FQDN,
                                mef_port=mef.port, psk_identity="maf-psk", psk_hex=MAF_PSK)
        maf_port = maf.port
        try:
            async def main() -> None:
                e = await enrol("127.0.0.1", mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-proc", bytes.fromhex(KPM))),
                                EnrolmentRequest(maf_enrolment=True))
                km = e.km(MAF)
                assert km == derive_km(e.ke, MAF)

                def client(identity: str, key: bytes) -> MAFClient:
                    return MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", maf_port,
                                                     psk=PSKCredentials(identity.encode(), key)))

                # rejection paths first: the MAF asks the MEF, the MEF refuses or the PSK differs
                with pytest.raises(TLSHandshakeError):  # right KeID, wrong Km
                    async with client(e.ke_id, bytes(32)):
                        pass
                with pytest.raises(TLSHandshakeError):  # a KeID the MEF never issued
                    async with client("ab" * 16 + "@" + MEF_FQDN, km):
                        pass
                other = await enrol("127.0.0.1", mef.port,
                                    mef_tls_config(psk=PSKCredentials(b"kpm-nomaf", bytes.fromhex("7c" * 32))))
                with pytest.raises(TLSHandshakeError):  # enrolee not granted for this MAF: MEF refuses SUID 21
                    async with client(other.ke_id, derive_km(other.ke, MAF)):
                        pass

                async with client(e.ke_id, km) as c:
                    reg = await c.register(datetime.now(UTC) + timedelta(days=1))
                assert reg.maf_client_id == AE and reg.assigned_symm_key_id.endswith("@" + MAF)
                async with client(reg.assigned_symm_key_id, km) as c:  # the assigned KmID, same Km
                    key = await c.register_key(SUID.MAF_ESDATA_SIGN, ["//x/a"], datetime.now(UTC) + timedelta(hours=1))
                assert key.response.source_maf_client_id == AE

            asyncio.run(asyncio.wait_for(main(), 40))
        finally:
            maf.stop()
