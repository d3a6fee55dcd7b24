"""A remotely provisioned MAF Client end to end with the real MEF (m2msec.mef) and the real MAF:
the Enrolee enrols with the MEF (MAF Enrolment), opens the MAF Handshake with KeID/Km, the MAF
fetches Km through ``/fetchCredentials/<KeID>/21`` (FetcherMEFClient) and assigns a KmID."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))

from _mefhelp import Clock, ThreadedMEF, make_state  # noqa: E402

from m2msec.keys import derive_km  # noqa: E402
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService  # noqa: E402
from m2msec.maf.mef import FetcherMEFClient  # noqa: E402
from m2msec.maf.server import MAFServer  # noqa: E402
from m2msec.maf.service import NS  # noqa: E402
from m2msec.mef import EnroleeConfig, EnrolmentRequest, MAFPreference, MEFKeyFetcher, TargetConfig, enrol  # noqa: E402
from m2msec.mef import mef_tls_config  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.store import KeyEncryptionKey, open_store  # noqa: E402
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError  # noqa: E402

MAF = "maf.m2m.example.com"
MEF_FQDN = "mef.m2m.example.com"
ADMIN = "sp.m2m.example.com"


@dataclass
class RealMEF:
    """A real MEF (its own loop thread) with one Enrolee allowed MAF Enrolment, and a MAF service
    on its own store that fetches Km from it (FetcherMEFClient)."""

    state: Any
    mef: ThreadedMEF
    fetcher: MEFKeyFetcher
    svc: MAFService
    store: Any

    async def enrol(self, kpm_id: str, kpm: bytes) -> Any:
        return await enrol(self.mef.host, self.mef.port, mef_tls_config(psk=PSKCredentials(kpm_id.encode(), kpm)),
                           EnrolmentRequest(maf_enrolment=True))


@contextmanager
def real_mef(tmp_path: Path, enrolee: str, kpm_id: str, kpm: bytes) -> Iterator[RealMEF]:
    state = make_state(tmp_path, Clock())
    state.add_enrolee(EnroleeConfig(enrolee, kpm_id=kpm_id,
                                    mafs=(MAFPreference(MAF, "https://maf/keyreg", "https://maf/keyret",
                                                        "https://maf/clientreg"),)), kpm=kpm)
    state.add_target(TargetConfig(MAF, psk_id="maf-psk"), psk=b"k" * 32)
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.generate())
    try:
        with ThreadedMEF(state) as mef:
            fetcher = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(b"maf-psk", b"k" * 32)),
                                    target_id=MAF, mef_fqdn=MEF_FQDN)
            svc = MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=lambda: datetime.now(UTC),
                             mef=FetcherMEFClient(fetcher))
            yield RealMEF(state, mef, fetcher, svc, store)
    finally:
        store.close()


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


def test_an_enrolee_the_mef_revokes_loses_its_maf_kmid(tmp_path: Path) -> None:
    """The MAF keeps the Km a KeID gave it under the KmID it assigned; after ``mef enrolee
    revoke`` its periodic re-check (here every 0.3 s) asks the real MEF again, which refuses the
    KeID: the KmID is deleted, its open session ends at its next procedure (4106), new MAF
    Handshakes with the KmID or the KeID fail, and the MAF audits it.  Before the revocation a
    pass finds the Km valid and changes nothing."""
    import asyncio
    import time

    from m2msec.maf import MAFResponseError
    from m2msec.onem2m.rsc import ResponseStatusCode as RSC

    enrolee = "/id-in/Cmafdev"
    with real_mef(tmp_path, enrolee, "kpm-maf", b"m" * 32) as rm:
        async def main() -> str:
            e = await rm.enrol("kpm-maf", b"m" * 32)
            km = e.km(MAF)
            async with MAFServer(rm.svc, mef_recheck_interval=0.3) as srv:
                def config(identity: str) -> MAFClientConfig:
                    return MAFClientConfig(MAF, ADMIN, "127.0.0.1", srv.port,
                                           psk=PSKCredentials(identity.encode(), km), timeout=5)

                async with MAFClient(config(e.ke_id)) as c:
                    reg = await c.register(datetime.now(UTC) + timedelta(days=1))
                kmid = reg.assigned_symm_key_id
                assert kmid and rm.fetcher.fetches == 1
                assert await rm.svc.recheck_mef_credentials() == {"checked": 1, "valid": 1, "revoked": 0,
                                                                  "unreachable": 0}
                assert rm.fetcher.fetches == 2  # asked the MEF, not the fetcher's cache
                async with MAFClient(config(kmid)) as session:
                    await session.update_registration(labels=["before"], reg_id=reg.maf_client_reg_id)
                    rm.state.revoke_enrolee(enrolee)
                    deadline = time.monotonic() + 10
                    while rm.store.find_credential(NS.KM, kmid.lower()) is not None:
                        assert time.monotonic() < deadline, "the re-check did not remove the KmID"
                        await asyncio.sleep(0.05)
                    with pytest.raises(MAFResponseError) as ei:
                        await session.update_registration(labels=["after"], reg_id=reg.maf_client_reg_id)
                    assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED
                    assert not session.connected
                for identity in (kmid, e.ke_id):
                    with pytest.raises(TLSHandshakeError):
                        async with MAFClient(config(identity)):
                            pass
            return e.ke_id

        keid = asyncio.run(asyncio.wait_for(main(), 30))
        rows = [a for a in rm.store.list_audit(limit=None) if a.action == "mef-revoked"]
        assert len(rows) == 1 and rows[0].subject == enrolee and rows[0].details["keID"] == keid
        assert rm.store.find_record(NS.KEID_GONE, keid.lower()) is not None


def test_an_unreachable_mef_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A re-check pass whose MEF does not answer keeps every Km (and says so at WARNING); a MEF
    that answers for the KeID (the in-memory stand-in) keeps it too, one that revoked it drops it."""
    import asyncio
    import logging
    import socket

    from m2msec.maf import InMemoryMEF
    from m2msec.maf.protocol import ClientRegistrationRequest, Procedure
    from m2msec.maf.service import MAFPeer

    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.generate())
    try:
        mem = InMemoryMEF(MAF)
        keid = "ab" * 16 + "@" + MEF_FQDN
        km = mem.enrol(keid, b"e" * 32, lifetime=timedelta(days=1), enrolee_id="/id-in/Cdev")
        svc = MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=lambda: datetime.now(UTC), mef=mem)
        peer = MAFPeer("keid", "/id-in/Cdev", f"10-{keid}", keid=keid, pending_km=km,
                       km_expires_at=datetime.now(UTC) + timedelta(days=1))
        reg = svc.run(Procedure.CLIENT_REGISTRATION, peer,
                      ClientRegistrationRequest(MAF, datetime.now(UTC) + timedelta(days=1), ADMIN), lambda: (b"", b""))
        kmid = reg.assigned_symm_key_id.lower()
        assert asyncio.run(svc.recheck_mef_credentials())["valid"] == 1
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        svc.mef = FetcherMEFClient(MEFKeyFetcher("127.0.0.1", dead, mef_tls_config(psk=PSKCredentials(b"p", b"k" * 32)),
                                                 target_id=MAF, mef_fqdn=MEF_FQDN, timeout=2))
        with caplog.at_level(logging.WARNING, logger="m2msec.maf.service"):
            assert asyncio.run(svc.recheck_mef_credentials())["unreachable"] == 1
        assert store.find_credential(NS.KM, kmid) is not None
        assert "not answered" in caplog.text
        svc.mef = mem
        mem.revoke(keid)
        assert asyncio.run(svc.recheck_mef_credentials())["revoked"] == 1
        assert store.find_credential(NS.KM, kmid) is None
        assert svc.psk_lookup(keid.encode(), None) is None  # the KeID is refused without asking
    finally:
        store.close()


def test_a_keid_the_mef_revoked_fails_its_next_maf_handshake_at_once(tmp_path: Path) -> None:
    """The MAF asks the MEF at every KeID handshake (never the fetcher's cache): right after
    ``mef enrolee revoke`` the KeID no longer opens a MAF session, without waiting for a re-check."""
    import asyncio

    enrolee = "/id-in/Cmafdev2"
    with real_mef(tmp_path, enrolee, "kpm-maf2", b"n" * 32) as rm:
        async def main() -> None:
            e = await rm.enrol("kpm-maf2", b"n" * 32)
            async with MAFServer(rm.svc) as srv:
                cfg = MAFClientConfig(MAF, ADMIN, "127.0.0.1", srv.port,
                                      psk=PSKCredentials(e.ke_id.encode(), e.km(MAF)), timeout=5)
                async with MAFClient(cfg):
                    pass
                rm.state.revoke_enrolee(enrolee)
                with pytest.raises(TLSHandshakeError):
                    async with MAFClient(cfg):
                        pass
            assert rm.fetcher.fetches == 2

        asyncio.run(asyncio.wait_for(main(), 30))
