"""MAF deployment cases: certificate MAF Handshake, remotely provisioned clients (MEF), two MAF
instances on one database, and an independent exporter check with ``openssl s_client``."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, AE1, AE2, KEK, KMS, MAF, FakeClock, connected, kmid, make_service, make_store, run, running

from m2msec.keys import derive_km, maf_key_id
from m2msec.maf import InMemoryMEF, MAFClient, MAFClientConfig, MAFResponseError
from m2msec.maf.service import NS
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.store import open_store
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSHandshakeError

OPENSSL = shutil.which("openssl")
AEC = "//sp.example.com/CAEC"


@pytest.fixture()
def env(tmp_path: Path):
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    yield clock, store, tmp_path
    store.close()


def test_certificate_maf_handshake(env) -> None:
    clock, store, _ = env
    ca = DevCA.create("MAF test CA", now=clock.now - timedelta(days=1), permit_dns=["example.com"],
                      permit_uri=["sp.example.com"], intermediate=True)
    maf_cert = ca.issue(F.FQDN, [MAF], now=clock.now - timedelta(hours=1))
    ae_cert = ca.issue(F.AE_ID, [AEC], now=clock.now - timedelta(hours=1))
    stranger = ca.issue(F.AE_ID, ["//sp.example.com/CAEX"], now=clock.now - timedelta(hours=1))
    svc = make_service(store, clock, client_trust_anchors=[ca.trust_anchor])
    svc.add_cert_client(AEC, PeerCertInfo(F.AE_ID, AEC))

    def cfg(port: int, issued) -> MAFClientConfig:  # type: ignore[no-untyped-def]
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                               credentials=CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain)),
                               maf_trust_anchors=(ca.trust_anchor,), clock=clock)

    async def main() -> None:
        creds = CertCredentials(maf_cert.private_key, maf_cert.certificate, tuple(maf_cert.chain))
        async with running(svc, credentials=creds) as srv:
            async with MAFClient(cfg(srv.port, ae_cert)) as c, connected(srv.port, AE2) as t:
                reg = await c.register(clock.now + timedelta(days=1))
                assert reg.maf_client_id == AEC
                await t.register(clock.now + timedelta(days=1))
                key = await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
                assert (await t.retrieve_key(key.key_id)).source_id == AEC
                k2 = await t.register_key(SUID.MAF_SAEF, [AEC], clock.now + timedelta(hours=1))
                assert (await c.retrieve_key(k2.key_id)).key == k2.key
            with pytest.raises(TLSHandshakeError):  # certificate not configured at the MAF
                async with MAFClient(cfg(srv.port, stranger)):
                    pass
            other_ca = DevCA.create("Other CA", now=clock.now - timedelta(days=1), permit_dns=["example.com"],
                                    permit_uri=["sp.example.com"])
            with pytest.raises(TLSHandshakeError):  # the client does not trust the MAF's CA
                bad = MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                      credentials=CertCredentials(ae_cert.private_key, ae_cert.certificate,
                                                                  tuple(ae_cert.chain)),
                                      maf_trust_anchors=(other_ca.trust_anchor,), clock=clock)
                async with MAFClient(bad):
                    pass

    run(main)


def test_remotely_provisioned_client(env) -> None:
    clock, store, _ = env
    mef = InMemoryMEF(MAF)
    svc = make_service(store, clock, mef=mef)
    keid1, ke1 = "11" * 16 + "@mef.example.com", bytes([7]) * 32
    keid2, ke2 = "22" * 16 + "@mef.example.com", bytes([8]) * 32
    km1 = mef.enrol(keid1, ke1, lifetime=timedelta(days=2), enrolee_id=AE1.replace("CAE1", "CAER"))
    assert km1 == derive_km(ke1, MAF)
    aer = "//sp.example.com/CAER"

    async def main() -> None:
        async with running(svc) as srv:
            c = MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                          psk=PSKCredentials(keid1.encode(), km1)))
            async with c:
                reg = await c.register(clock.now + timedelta(days=1))
                assert reg.maf_client_id == aer and reg.assigned_symm_key_id
                assert reg.assigned_symm_key_id.endswith("@" + MAF)
                assert c.psk_identity == reg.assigned_symm_key_id
                assert mef.calls == [keid1]
            # later handshakes use the assigned KmID; the MEF is not asked again
            async with c:
                key = await c.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], clock.now + timedelta(hours=1))
                assert key.response.source_maf_client_id == aer
            assert mef.calls == [keid1]
            cred = store.get_credential(NS.KM, reg.assigned_symm_key_id.lower())
            assert cred.metadata["client_id"] == aer and cred.expires_at == clock.now + timedelta(days=2)
            # Registration Update with a new Km (re-enrolment: new KeID) gives a new KmID
            old = reg.assigned_symm_key_id
            km2 = mef.enrol(keid2, ke2, lifetime=timedelta(days=3), enrolee_id=aer)
            c2 = MAFClient(MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=srv.port,
                                           psk=PSKCredentials(keid2.encode(), km2)))
            async with c2:
                up = await c2.update_registration(labels=["rekeyed"], reg_id=reg.maf_client_reg_id)
                assert up.assigned_symm_key_id and up.assigned_symm_key_id != old
            async with c2:  # the new KmID works, the old one no longer does
                await c2.update_registration(labels=["again"], reg_id=reg.maf_client_reg_id)
            with pytest.raises(TLSHandshakeError):
                async with connected(srv.port, identity=old, km=km1):
                    pass
            # an unknown KeID, and a KeID whose Km lifetime is over
            with pytest.raises(TLSHandshakeError):
                async with connected(srv.port, identity="33" * 16 + "@mef.example.com", km=km1):
                    pass
            keid3 = "44" * 16 + "@mef.example.com"
            km3 = mef.enrol(keid3, bytes([9]) * 32, lifetime=timedelta(seconds=-1))
            with pytest.raises(TLSHandshakeError):
                async with connected(srv.port, identity=keid3, km=km3):
                    pass
            # a KeID session of another Enrolee cannot re-key someone else's registration
            keid4 = "55" * 16 + "@mef.example.com"
            km4 = mef.enrol(keid4, bytes([10]) * 32, enrolee_id="//sp.example.com/CAEZ")
            async with connected(srv.port, identity=keid4, km=km4) as c4:
                with pytest.raises(MAFResponseError) as ei:
                    await c4.update_registration(labels=["x"], reg_id=reg.maf_client_reg_id)
                assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            # a KeID the MEF does not name: the client ID is the KmID's Credential-ID
            keid5 = "66" * 16 + "@mef.example.com"
            km5 = mef.enrol(keid5, bytes([11]) * 32)
            async with connected(srv.port, identity=keid5, km=km5) as c5:
                r5 = await c5.register(clock.now + timedelta(days=1))
                assert r5.maf_client_id == f"11-{r5.assigned_symm_key_id}"

    run(main)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_instances_one_database(env, backend: str, request: pytest.FixtureRequest) -> None:
    clock, sqlite_store, tmp = env
    if backend == "sqlite":
        store = sqlite_store
        store2 = make_store(tmp / "maf.db", clock)  # a second instance: its own store object, same database
    else:
        url = request.getfixturevalue("pg_server").create_database()
        store = open_store(url, KEK, clock=clock)
        store2 = open_store(url, KEK, clock=clock)
    svc1 = make_service(store, clock)
    svc2 = make_service(store2, clock, provision=False)

    async def main() -> None:
        async with running(svc1) as s1, running(svc2) as s2:
            async with connected(s1.port, AE1) as a, connected(s2.port, AE2) as b:
                await a.register(clock.now + timedelta(days=1))
                await b.register(clock.now + timedelta(days=1))
                key = await a.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
                got = await b.retrieve_key(key.key_id)
                assert got.key == key.key and got.source_id == AE1
            async with connected(s2.port, AE1) as a2:  # the registration made through instance 1
                with pytest.raises(MAFResponseError) as ei:
                    await a2.register(clock.now + timedelta(days=1))
                assert ei.value.rsc is RSC.ORIGINATOR_HAS_ALREADY_REGISTERED
                await a2.deregister_key(key.key_id)
            async with connected(s1.port, AE2) as b1:
                with pytest.raises(MAFResponseError) as ei:
                    await b1.retrieve_key(key.key_id)
                assert ei.value.rsc is RSC.NOT_FOUND

    try:
        run(main)
    finally:
        store2.close()
        if store is not sqlite_store:
            store.close()


@pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")
def test_exporter_key_equals_openssl_keymatexport(env) -> None:
    """openssl s_client is the MAF Client: the key the MAF stores for an exporter Key Registration
    equals openssl's -keymatexport EXPORTER-oneM2M-Connection on the same session, split per 10.3.1."""
    clock, store, _ = env
    svc = make_service(store, clock)

    async def main() -> tuple[str, bytes]:
        async with running(svc) as srv:
            async with connected(srv.port, AE1) as c:
                await c.register(clock.now + timedelta(days=1))
            body = json.dumps({"mafFQDN": MAF, "expirationTime": "20300101T180000", "adminFQDN": ADMIN,
                               "suid": 33, "targetIDs": [AE2]}).encode()
            request = (b"POST /maf/keyRegistration HTTP/1.1\r\nHost: " + MAF.encode() +
                       b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
                       str(len(body)).encode() + b"\r\n\r\n" + body)
            proc = await asyncio.create_subprocess_exec(
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2", "-psk", KMS[AE1].hex(),
                "-psk_identity", kmid(AE1), "-cipher", "PSK-AES128-CBC-SHA256", "-ign_eof",
                "-keymatexport", "EXPORTER-oneM2M-Connection", "-keymatexportlen", "48",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(request), 20)
            return out.decode("latin-1"), out

    text, _ = run(main)
    material = bytes.fromhex(text.split("Keying material: ", 1)[1].split()[0])
    assert len(material) == 48
    rsp, _end = json.JSONDecoder().raw_decode(text, text.index('{"relativeKeyID"'))
    assert rsp["relativeKeyID"] == material[:16].hex()
    stored = store.get_credential(NS.KEY, rsp["relativeKeyID"]).secret
    assert stored == material[16:]
    assert store.get_record(NS.KEY_REG, rsp["relativeKeyID"]).doc["keyID"] == maf_key_id(material[:16], MAF)
    assert "HTTP/1.1 201" in text and "X-M2M-RSC: 2001" in text.replace("x-m2m-rsc", "X-M2M-RSC")
