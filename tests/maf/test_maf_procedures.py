"""MAF procedures (TS-0003 8.8.2.3-8.8.2.10) against a real MAF server on 127.0.0.1."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from _mafhelp import ADMIN, AE1, AE2, AE3, KMS, MAF, FakeClock, connected, make_service, make_store, run, running

from m2msec.keys import LABEL_CONNECTION, maf_key_id
from m2msec.maf import MAFResponseError, Procedure
from m2msec.maf.service import NS
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError


@pytest.fixture()
def env(tmp_path: Path):
    clock = FakeClock()
    store = make_store(tmp_path / "maf.db", clock)
    svc = make_service(store, clock)
    yield clock, store, svc
    store.close()


def test_client_registration_lifecycle(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c:
            rsp = await c.register(clock.now + timedelta(days=10), labels=["dev", "ae1"])
            assert rsp.maf_client_id == AE1 and rsp.admin_fqdn == ADMIN
            assert rsp.expiration_time == clock.now + timedelta(days=10)
            assert rsp.assigned_symm_key_id is None and rsp.labels == ("dev", "ae1")
            cfg = await c.retrieve_configuration()
            assert cfg == {"fqdn": MAF, "adminFQDN": ADMIN, "httpPort": 8443}
            up = await c.update_registration(expiration_time=clock.now + timedelta(days=20))
            assert up.expiration_time == clock.now + timedelta(days=20) and up.labels is None
            up2 = await c.update_registration(labels=["x"])
            assert up2.labels == ("x",) and up2.expiration_time is None
            rec = store.get_record(NS.REG, rsp.maf_client_reg_id)
            assert rec.doc["labels"] == ["x"] and rec.expires_at == clock.now + timedelta(days=20)
            # a second registration for the same stakeholder is refused
            with pytest.raises(MAFResponseError) as ei:
                await c.register(clock.now + timedelta(days=1))
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_ALREADY_REGISTERED
            await c.deregister()
            assert store.find_record(NS.REG, rsp.maf_client_reg_id) is None
            with pytest.raises(MAFResponseError) as ei:
                await c.retrieve_configuration(rsp.maf_client_reg_id)
            assert ei.value.rsc is RSC.NOT_FOUND
            # registration is possible again after de-registration
            await c.register(clock.now + timedelta(days=1))

    run(main)
    actions = [(a.action, a.outcome) for a in store.list_audit(actor="maf", newest_first=False)]
    assert ("client_registration", "ok") in actions and ("client_registration", "refused 4117") in actions
    assert ("deregistration", "ok") in actions


def test_registration_refusals(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2:
            reg = await c1.register(clock.now + timedelta(days=1))
            rid = reg.maf_client_reg_id
            # registration by one client updated / read / ended by another
            for coro in (c2.update_registration(labels=["evil"], reg_id=rid), c2.retrieve_configuration(rid),
                         c2.deregister(rid)):
                with pytest.raises(MAFResponseError) as ei:
                    await coro
                assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            assert store.get_record(NS.REG, rid).doc["labels"] == []
            # unknown stakeholder, expiry in the past, unknown registration
            with pytest.raises(MAFResponseError) as ei:
                await c2.register(clock.now + timedelta(days=1), admin_fqdn="nobody.example.com")
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            with pytest.raises(MAFResponseError) as ei:
                await c2.register(clock.now - timedelta(seconds=1))
            assert ei.value.rsc is RSC.CONTENTS_UNACCEPTABLE
            with pytest.raises(MAFResponseError) as ei:
                await c2.deregister("0" * 32)
            assert ei.value.rsc is RSC.NOT_FOUND
            # a stakeholder without a client configuration
            reg2 = await c2.register(clock.now + timedelta(days=1), admin_fqdn="other.example.com")
            with pytest.raises(MAFResponseError) as ei:
                await c2.retrieve_configuration(reg2.maf_client_reg_id)
            assert ei.value.rsc is RSC.NOT_FOUND
            # the MAF caps the lifetime
            reg3 = await c2.register(clock.now + timedelta(days=5000))
            assert reg3.expiration_time == clock.now + svc.max_registration_lifetime

    run(main)


def test_expired_registration_is_gone(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c:
            reg = await c.register(clock.now + timedelta(hours=1))
            clock.advance(hours=2)
            with pytest.raises(MAFResponseError) as ei:
                await c.update_registration(labels=["late"])
            assert ei.value.rsc is RSC.NOT_FOUND
            with pytest.raises(MAFResponseError) as ei:
                await c.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            assert ei.value.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED
            assert reg.maf_client_reg_id  # and a new registration is accepted
            await c.register(clock.now + timedelta(hours=1))

    run(main)


def test_handshake_refusals(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv:
            with pytest.raises(TLSHandshakeError):  # unknown KmID
                async with connected(srv.port, identity=f"nobody@{MAF}", km=b"\x00" * 32):
                    pass
            with pytest.raises(TLSHandshakeError) as ei:  # wrong Km
                async with connected(srv.port, AE1, km=KMS[AE2]):
                    pass
            assert ei.value.reason in (TLSFailureReason.PSK_MISMATCH, TLSFailureReason.BAD_RECORD_MAC,
                                       TLSFailureReason.PEER_ALERT)
            with pytest.raises(TLSHandshakeError):  # a KeID without a MEF
                async with connected(srv.port, identity="00" * 16 + "@mef.example.com", km=b"\x00" * 32):
                    pass

    run(main)
    assert any(a.action == "handshake" for a in store.list_audit(actor="maf"))


def test_key_registration_exporter_and_retrieval(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2, \
                connected(srv.port, AE3) as c3:
            for c in (c1, c2, c3):
                await c.register(clock.now + timedelta(days=1))
            kc, kcid = c1.export_kc()
            reg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=5), labels=["esprim"])
            assert reg.key == kc and reg.key_id == maf_key_id(kcid, MAF) == f"{kcid.hex()}@{MAF}"
            assert reg.response.source_maf_client_id == AE1 and reg.response.target_ids == (AE2,)
            got = await c2.retrieve_key(reg.key_id)
            assert got.key == kc and got.suid is SUID.MAF_ESPRIM and got.source_id == AE1
            assert got.expires_at == clock.now + timedelta(hours=5) and got.response.labels == ("esprim",)
            # not an authorised target
            with pytest.raises(MAFResponseError) as ei:
                await c3.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            # a second exporter key on the same session would reuse the RelativeKeyID
            with pytest.raises(MAFResponseError) as ei:
                await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=5))
            assert ei.value.rsc is RSC.CONFLICT
            # ... also after the first one was de-registered: RelativeKeyIDs are never reused
            await c1.deregister_key(reg.key_id)
            with pytest.raises(MAFResponseError) as ei:
                await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=5))
            assert ei.value.rsc is RSC.CONFLICT
            with pytest.raises(MAFResponseError) as ei:
                await c2.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.NOT_FOUND
            # a new session gives a new Kc/KcID
            await c1.connect()
            reg2 = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=5))
            assert reg2.key_id != reg.key_id and reg2.key != reg.key
            # expired key registrations are gone
            clock.advance(hours=6)
            with pytest.raises(MAFResponseError) as ei:
                await c2.retrieve_key(reg2.key_id)
            assert ei.value.rsc is RSC.NOT_FOUND

    run(main)
    for a in store.list_audit():
        assert "keyValue" not in a.details and all(not isinstance(v, bytes) for v in a.details.values())


def test_key_registration_client_value_update_deregistration(env) -> None:
    clock, store, svc = env
    value = bytes(range(32))

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2, \
                connected(srv.port, AE3) as c3:
            for c in (c1, c2, c3):
                await c.register(clock.now + timedelta(days=1))
            reg = await c1.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], clock.now + timedelta(hours=1),
                                        key_value=value)
            assert reg.key == value and reg.relative_key_id != c1.export_kc()[1].hex()
            assert (await c2.retrieve_key(reg.key_id)).key == value
            # update by another client: refused, nothing changes
            with pytest.raises(MAFResponseError) as ei:
                await c2.update_key(reg.key_id, target_ids=[AE2, AE3])
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            with pytest.raises(MAFResponseError) as ei:
                await c2.deregister_key(reg.key_id)
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            with pytest.raises(MAFResponseError) as ei:
                await c3.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
            up = await c1.update_key(reg.key_id, target_ids=[AE2, AE3], expiration_time=clock.now + timedelta(hours=3))
            assert up.target_ids == (AE2, AE3) and up.labels is None
            assert up.expiration_time == clock.now + timedelta(hours=3)
            got = await c3.retrieve_key(reg.key_id)
            assert got.key == value and got.expires_at == clock.now + timedelta(hours=3)
            clock.advance(hours=2)  # still live thanks to the update (credential expiry moved too)
            assert (await c2.retrieve_key(reg.key_id)).key == value
            await c1.deregister_key(reg.key_id)
            with pytest.raises(MAFResponseError) as ei:
                await c3.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.NOT_FOUND
            with pytest.raises(MAFResponseError) as ei:
                await c1.update_key(reg.key_id, labels=["gone"])
            assert ei.value.rsc is RSC.NOT_FOUND

    run(main)


def test_suid_rules(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            exp = clock.now + timedelta(hours=1)
            v = bytes(32)
            cases = [
                (SUID.MAF_SAEF, [AE2, AE3]), (SUID.MAF_ESPRIM, [AE2, AE3]), (SUID.MAF_ESPRIM, []),
                (SUID.MAF_ESDATA_SIGN, []), (SUID.PRE_PROVISIONED_ESPRIM, [AE2]), (SUID.RSPF_MAF, [AE2]),
                (SUID.CERTIFICATE_ESDATA_ENCRYPT, [AE2]), (SUID.MAF_ESDATA_ENCRYPT, None),
            ]
            for suid, targets in cases:
                with pytest.raises(MAFResponseError) as ei:
                    await c1.register_key(suid, targets, exp, key_value=v)
                assert ei.value.rsc is RSC.CONTENTS_UNACCEPTABLE, (suid, targets)
            ok = await c1.register_key(SUID.MAF_ESDATA_SIGN, [AE2, AE3, AE1], exp, key_value=v)
            with pytest.raises(MAFResponseError) as ei:  # ESPrim update to two targets
                k = await c1.register_key(SUID.MAF_SAEF, [AE2], exp, key_value=v)
                await c1.update_key(k.key_id, target_ids=[AE2, AE3])
            assert ei.value.rsc is RSC.CONTENTS_UNACCEPTABLE
            with pytest.raises(MAFResponseError) as ei:  # key registration with another stakeholder
                await c1.register_key(SUID.MAF_ESDATA_SIGN, [AE2], exp, key_value=v, admin_fqdn="other.example.com")
            assert ei.value.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED
            assert ok.response.target_ids == (AE2, AE3, AE1)

    run(main)
    assert len(store.list_records(NS.KEY_REG)) == 2


def test_unregistered_target_cannot_retrieve(env) -> None:
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1, connected(srv.port, AE2) as c2:
            await c1.register(clock.now + timedelta(days=1))
            reg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            with pytest.raises(MAFResponseError) as ei:
                await c2.retrieve_key(reg.key_id)
            assert ei.value.rsc is RSC.SERVICE_SUBSCRIPTION_NOT_ESTABLISHED
            await c2.register(clock.now + timedelta(days=1))
            assert (await c2.retrieve_key(reg.key_id)).key == reg.key

    run(main)


@pytest.mark.parametrize("body,rsc", [
    (b"not json", 4000),
    (b"[]", 4000),
    (b"\xff\xfe", 4000),
    (b'{"relativeKeyID": "00"}', 4000),
    (b'{"relativeKeyID": "' + b"0" * 32 + b'", "extra": 1}', 4000),
    (b'{"relativeKeyID": "' + b"0" * 32 + b'", "relativeKeyID": "' + b"1" * 32 + b'"}', 4000),
    (b'{"relativeKeyID": "' + b"A" * 32 + b'"}', 4000),
    (b'{"relativeKeyID": NaN}', 4000),
    (b'{"relativeKeyID": "' + b"0" * 32 + b'"}', 4004),
])
def test_malformed_retrieval_bodies(env, body: bytes, rsc: int) -> None:
    clock, store, svc = env

    async def main() -> tuple[int, int, bytes]:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            return await c1.raw(Procedure.KEY_RETRIEVAL, body)

    status, got, out = run(main)
    assert got == rsc and status == RSC(rsc).http_status and b'"rsc":%d' % rsc in out


@pytest.mark.parametrize("path,method,ctype,rsc", [
    ("/maf/nothing", "POST", "application/json", 4004),
    ("/maf/keyRetrieval", "GET", "application/json", 4005),
    ("/maf/keyRetrieval", "POST", "text/plain", 4015),
])
def test_http_refusals(env, path: str, method: str, ctype: str, rsc: int) -> None:
    clock, store, svc = env

    async def main() -> tuple[int, int, bytes]:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            return await c1.raw(path, b"{}", method=method, content_type=ctype)

    assert run(main)[1] == rsc


def test_key_registration_bad_bodies(env) -> None:
    clock, store, svc = env

    async def main() -> list[int]:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            base = ('{"mafFQDN":"%s","expirationTime":"20300101T130000","adminFQDN":"%s","suid":34,'
                    '"targetIDs":["%s"]' % (MAF, ADMIN, AE2))
            out = []
            for tail in (',"keyValue":"AAAA"}', ',"keyValue":"not base64!"}', ',"suid":"34"}', ',"labels":"x"}',
                         ',"targetIDs":["a","a"]}'):
                out.append((await c1.raw(Procedure.KEY_REGISTRATION, (base + tail).encode()))[1])
            # wrong MAF-FQDN
            out.append((await c1.raw(Procedure.KEY_REGISTRATION,
                                     (base.replace(MAF, "other-maf.example.com") + "}").encode()))[1])
            # the good one
            out.append((await c1.raw(Procedure.KEY_REGISTRATION, (base + "}").encode()))[1])
            return out

    assert run(main) == [4000, 4000, 4000, 4000, 4000, 4000, 2001]


def test_exporter_matches_label(env) -> None:
    """The server's Kc is the RFC 5705 export with EXPORTER-oneM2M-Connection (split per 10.3.1)."""
    clock, store, svc = env

    async def main() -> None:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            raw = c1._writer.engine.export_keying_material(LABEL_CONNECTION, 48)  # type: ignore[union-attr]
            reg = await c1.register_key(SUID.MAF_SAEF, [AE2], clock.now + timedelta(hours=1))
            assert reg.key == raw[16:] and reg.relative_key_id == raw[:16].hex()
            assert store.get_credential(NS.KEY, reg.relative_key_id).secret == raw[16:]

    run(main)


def test_admin_revoke_and_listing(env) -> None:
    clock, store, svc = env

    async def main() -> str:
        async with running(svc) as srv, connected(srv.port, AE1) as c1:
            await c1.register(clock.now + timedelta(days=1))
            reg = await c1.register_key(SUID.MAF_ESPRIM, [AE2], clock.now + timedelta(hours=1))
            return reg.key_id

    key_id = run(main)
    keys = svc.list_keys()
    assert [k["keyID"] for k in keys] == [key_id]
    clients = {c["client_id"]: c for c in svc.list_clients()}
    assert set(clients) == {AE1, AE2, AE3, "//sp.example.com/CAE4"} and len(clients[AE1]["registrations"]) == 1
    assert svc.revoke_key(key_id) is True and svc.list_keys() == []
    assert svc.revoke_key(key_id) is False
    assert KMS[AE1].hex() not in repr(clients)
