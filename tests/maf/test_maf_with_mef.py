"""A remotely provisioned MAF Client end to end with the real MEF (m2msec.mef) and the real MAF:
the Enrolee enrols with the MEF (MAF Enrolment), opens the MAF Handshake with KeID/Km, the MAF
fetches Km through ``/fetchCredentials/<KeID>/21`` (FetcherMEFClient) and assigns a KmID."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))

from _mefhelp import Clock, ThreadedMEF, make_state  # noqa: E402

from m2msec.keys import derive_km  # noqa: E402
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService  # noqa: E402
from m2msec.maf.mef import FetcherMEFClient  # noqa: E402
from m2msec.maf.server import MAFServer  # noqa: E402
from m2msec.mef import EnroleeConfig, EnrolmentRequest, MAFPreference, MEFKeyFetcher, TargetConfig, enrol  # noqa: E402
from m2msec.mef import mef_tls_config  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.store import KeyEncryptionKey, open_store  # noqa: E402
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError  # noqa: E402

MAF = "maf.m2m.example.com"
MEF_FQDN = "mef.m2m.example.com"
ADMIN = "sp.m2m.example.com"


def test_remote_maf_enrolment_then_maf_registration(tmp_path: Path) -> None:
    mclock = Clock()
    state = make_state(tmp_path, mclock)
    state.add_enrolee(EnroleeConfig("/id-in/Cmafdev", kpm_id="kpm-maf",
                                    mafs=(MAFPreference(MAF, "https://maf/keyreg", "https://maf/keyret",
                                                        "https://maf/clientreg"),)), kpm=b"m" * 32)
    state.add_target(TargetConfig(MAF, psk_id="maf-psk"), psk=b"k" * 32)
    with ThreadedMEF(state) as mef:
        fetcher = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"maf-psk", b"k" * 32)),
                                target_id=MAF, mef_fqdn=MEF_FQDN)
        store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.generate())
        svc = MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=lambda: datetime.now(UTC),
                         mef=FetcherMEFClient(fetcher))
        import asyncio

        async def main() -> None:
            e = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"kpm-maf", b"m" * 32)),
                            EnrolmentRequest(maf_enrolment=True))
            km = e.km(MAF)
            assert km == derive_km(e.ke, MAF)
            async with MAFServer(svc) as srv:
                c = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", srv.port,
                                              psk=PSKCredentials(e.ke_id.encode(), km)))
                async with c:
                    reg = await c.register(datetime.now(UTC) + timedelta(days=1))
                assert reg.maf_client_id == "/id-in/Cmafdev" and reg.assigned_symm_key_id
                async with c:  # now with the assigned KmID
                    assert c.psk_identity == reg.assigned_symm_key_id
                    key = await c.register_key(SUID.MAF_ESDATA_SIGN, ["//x/a", "//x/b"],
                                               datetime.now(UTC) + timedelta(hours=1))
                    assert key.response.source_maf_client_id == "/id-in/Cmafdev"
                with pytest.raises(TLSHandshakeError):  # a KeID the MEF does not know
                    bad = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", srv.port,
                                                    psk=PSKCredentials(("ab" * 16 + "@" + MEF_FQDN).encode(), km)))
                    async with bad:
                        pass

        try:
            asyncio.run(asyncio.wait_for(main(), 30))
        finally:
            store.close()
