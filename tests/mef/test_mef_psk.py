"""Pre-Provisioned Symmetric Key RSPF end to end on 127.0.0.1 (TS-0003 8.3.2.1) and every refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _mefhelp import (
    B_PSK,
    B_PSK_ID,
    ENROLEE,
    ENROLEE_B,
    KPM,
    KPM_ID,
    MEF_FQDN,
    Clock,
    ThreadedMEF,
    configure_default,
    make_state,
    run,
)

from m2msec.keys import derive_kpsa, derive_usage_key
from m2msec.mef import (
    EnroleeConfig,
    EnrolmentRequest,
    MEFClientError,
    MEFKeyFetcher,
    MEFKpsaDirectory,
    TargetConfig,
    enrol,
    load_enrolment,
    mef_tls_config,
    save_enrolment,
)
from m2msec.mef.state import NS_KE, NS_KRE
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.saef import InMemoryKpsaDirectory, StoreKpsaDirectory, connect, psk_client, psk_server, serve
from m2msec.tls import TLSFailureReason, TLSHandshakeError
from m2msec.tls.engine import PSKCredentials


def kpm_tls(ident: str = KPM_ID, key: bytes = KPM) -> Any:
    return mef_tls_config(psk=PSKCredentials(ident.encode(), key))


def fetcher(m: ThreadedMEF, target_id: str = ENROLEE_B, psk_id: str = B_PSK_ID, psk: bytes = B_PSK,
            **kw: Any) -> MEFKeyFetcher:
    return MEFKeyFetcher(m.host, m.port, mef_tls_config(psk=PSKCredentials(psk_id.encode(), psk)),
                         target_id=target_id, mef_fqdn=MEF_FQDN, **kw)


@pytest.fixture
def mef(tmp_path: Path) -> Any:
    clock = Clock()
    state = make_state(tmp_path, clock)
    configure_default(state)
    with ThreadedMEF(state) as m:
        m.clock = clock
        yield m
    state.store.close()


def test_enrol_fetch_kpsa_and_psk_saef(mef: ThreadedMEF) -> None:
    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        assert e.ke_id.endswith("@" + MEF_FQDN) and e.enrolee_id == ENROLEE
        stored = mef.state.store.get_credential(NS_KE, e.ke_id)
        assert stored.secret == e.ke and stored.expires_at == e.expiry
        assert mef.state.store.get_credential(NS_KRE, e.kre_id).secret == e.kre
        assert e.direct_key(ENROLEE_B, 23) == derive_usage_key(e.ke, 23, ENROLEE_B)
        # Enrolee B's PSK-SAEF server fetches the unknown KeID from the MEF (SUID 22)
        f = fetcher(mef)
        directory = MEFKpsaDirectory(f, InMemoryKpsaDirectory())
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(reader: Any, writer: Any, ctx: Any) -> None:
            got.set_result(ctx)
            writer.write(await reader.read(100))
            await writer.drain()

        srv = await serve(psk_server(directory, id_b=ENROLEE_B), handler)
        try:
            reader, writer, cctx = await connect(psk_client(e.kpsa_entry(ENROLEE_B)), "127.0.0.1",
                                                 srv.sockets[0].getsockname()[1])
            writer.write(b"ping")
            assert await reader.read(100) == b"ping"
            writer.close()
            sctx = await got
        finally:
            srv.close()
        assert cctx.peer_id == ENROLEE_B
        assert sctx.peer_id == ENROLEE and sctx.psk_identity == e.ke_id  # EnroleeID from the MEF
        assert f.fetches == 1
        # cached: no second fetch
        assert (await f.fetch(e.ke_id, 22)).key == derive_kpsa(e.ke, ENROLEE_B)
        assert f.fetches == 1
        u = await f.fetch(e.ke_id, 23)
        assert u.key == derive_usage_key(e.ke, 23, ENROLEE_B) and f.fetches == 2
        # usage-constrained key for SUID 24 was not granted
        with pytest.raises(MEFClientError) as ei:
            await f.fetch(e.ke_id, 24)
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE

    run(go)


def test_enrolee_store_roundtrip_and_reauth_fetch(mef: ThreadedMEF) -> None:
    """Enrolee B enrols itself; its Kre then authenticates it for MEF Key Retrieval."""
    mef.state.add_enrolee(EnroleeConfig(ENROLEE_B, kpm_id="kpm-b", expiry_seconds=600), kpm=b"b" * 32)

    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        save_enrolment(mef.state.store, e, namespace="device.enrolment")
        again = load_enrolment(mef.state.store, e.ke_id, namespace="device.enrolment")
        assert again is not None and again.ke == e.ke and again.kre == e.kre and again.direct_keys == e.direct_keys
        eb = await enrol(mef.host, mef.port, kpm_tls("kpm-b", b"b" * 32))
        f = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=eb.reauth_psk()), target_id=ENROLEE_B,
                          mef_fqdn=MEF_FQDN)
        assert (await f.fetch(e.ke_id, 22)).key == derive_kpsa(e.ke, ENROLEE_B)
        # a Kre session may not claim another identity
        f2 = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=eb.reauth_psk()), target_id="//x/id-in/Cother",
                           mef_fqdn=MEF_FQDN)
        with pytest.raises(MEFClientError) as ei:
            await f2.fetch(e.ke_id, 22)
        assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED

    run(go)


def test_unknown_kpm_id_and_wrong_kpm(mef: ThreadedMEF) -> None:
    async def go() -> None:
        with pytest.raises(TLSHandshakeError):
            await enrol(mef.host, mef.port, kpm_tls("nobody@mef"))
        with pytest.raises(TLSHandshakeError) as ei:
            await enrol(mef.host, mef.port, kpm_tls(KPM_ID, b"\x01" * 32))
        assert ei.value.reason in (TLSFailureReason.PSK_MISMATCH, TLSFailureReason.BAD_RECORD_MAC,
                                   TLSFailureReason.PEER_ALERT)

    run(go)
    reasons = {getattr(e, "reason", None) for e in mef.server.handshake_errors}
    assert TLSFailureReason.UNKNOWN_PSK_IDENTITY in reasons
    assert mef.state.store.list_credentials(NS_KE) == []


def test_token_required_single_use(mef: ThreadedMEF) -> None:
    mef.state.add_enrolee(EnroleeConfig("/id-in/Ctok", kpm_id="kpm-tok", token_required=True), kpm=b"t" * 32)
    tok = mef.state.issue_token("/id-in/Ctok")
    other = mef.state.issue_token(ENROLEE)

    async def go() -> None:
        tls = kpm_tls("kpm-tok", b"t" * 32)
        with pytest.raises(MEFClientError) as ei:
            await enrol(mef.host, mef.port, tls)  # missing
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        with pytest.raises(MEFClientError):
            await enrol(mef.host, mef.port, tls, EnrolmentRequest(token="forged"))
        with pytest.raises(MEFClientError):
            await enrol(mef.host, mef.port, tls, EnrolmentRequest(token=other))  # another enrolee's token
        e = await enrol(mef.host, mef.port, tls, EnrolmentRequest(token=tok))
        assert e.enrolee_id == "/id-in/Ctok"
        with pytest.raises(MEFClientError) as ei:
            await enrol(mef.host, mef.port, tls, EnrolmentRequest(token=tok))  # reused
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE

    run(go)
    kes = mef.state.store.list_credentials(NS_KE, where={"enrolee_id": "/id-in/Ctok"})
    assert len(kes) == 1  # refused exchanges left nothing behind
    # the refused "other" token was consumed? no: the transaction rolled back
    assert mef.state.store.list_records("mef.token") != []


def test_target_authorisation(mef: ThreadedMEF) -> None:
    mef.state.add_target(TargetConfig("//m2m.example.com/id-in/Cstranger", psk_id="stranger"), psk=b"s" * 32)

    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        stranger = fetcher(mef, "//m2m.example.com/id-in/Cstranger", "stranger", b"s" * 32)
        with pytest.raises(MEFClientError) as ei:
            await stranger.fetch(e.ke_id, 22)
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        liar = fetcher(mef, ENROLEE_B, "stranger", b"s" * 32)  # claims B's ID on the stranger's PSK
        with pytest.raises(MEFClientError) as ei:
            await liar.fetch(e.ke_id, 22)
        assert ei.value.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED
        with pytest.raises(MEFClientError) as ei:  # the enrolee's own Kpm session cannot fetch
            await MEFKeyFetcher(mef.host, mef.port, kpm_tls(), target_id=ENROLEE, mef_fqdn=MEF_FQDN).fetch(e.ke_id, 22)
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        b = fetcher(mef)
        with pytest.raises(MEFClientError) as ei:
            await b.fetch("00" * 16 + "@" + MEF_FQDN, 22)
        assert ei.value.rsc is RSC.NOT_FOUND

    run(go)


def test_malformed_requests(mef: ThreadedMEF) -> None:
    from m2msec.mef.client import _http
    from m2msec.tls.aio import open_connection

    async def raw(target: str, method: str = "GET", origin: str | None = ENROLEE_B) -> tuple[int, dict[str, str]]:
        tls = mef_tls_config(psk=PSKCredentials(B_PSK_ID.encode(), B_PSK))
        reader, writer = await open_connection(mef.host, mef.port, tls)
        try:
            hdrs = [("X-M2M-RI", "r1")] + ([("X-M2M-Origin", origin)] if origin else [])
            status, headers, _ = await _http(reader, writer, method, target, hdrs, b"", "mef")
        finally:
            writer.close()
        return status, headers

    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        for t in (f"/fetchCredentials/{e.ke_id}/99", f"/fetchCredentials/{e.ke_id}/abc",
                  "/fetchCredentials/nothex@" + MEF_FQDN + "/22", f"/fetchCredentials/{e.ke_id}",
                  "/fetchCredentials/" + e.ke_id.split("@")[0] + "@evil.example.com/22"):
            status, h = await raw(t)
            assert (status, h["x-m2m-rsc"]) == (400, "4000"), t
            assert h["x-m2m-ri"] == "r1"
        status, h = await raw(f"/fetchCredentials/{e.ke_id}/22", origin=None)
        assert h["x-m2m-rsc"] == "4000"
        status, h = await raw(f"/fetchCredentials/{e.ke_id}/22", method="DELETE")
        assert h["x-m2m-rsc"] == "4005"
        status, h = await raw("/elsewhere")
        assert h["x-m2m-rsc"] == "4004"
        status, h = await raw("/enrolment", method="POST")  # a target cannot enrol
        assert h["x-m2m-rsc"] == "4103"
        with pytest.raises(MEFClientError) as ei:  # malformed enrolment body
            from m2msec.mef.client import _http as h2
            reader, writer = await open_connection(mef.host, mef.port, kpm_tls())
            try:
                st, hh, body = await h2(reader, writer, "POST", "/enrolment", [], b'{"x":1}', "mef")
            finally:
                writer.close()
            raise MEFClientError(body.decode(), rsc=RSC(int(hh["x-m2m-rsc"])))
        assert ei.value.rsc is RSC.BAD_REQUEST

    run(go)


def test_expired_enrolment_and_revocation(mef: ThreadedMEF) -> None:
    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        f = fetcher(mef, max_cache_seconds=0)
        await f.fetch(e.ke_id, 22)
        mef.clock.advance(3601)  # Enrolment Expiry (10.7) is 3600 s
        with pytest.raises(MEFClientError) as ei:
            await fetcher(mef).fetch(e.ke_id, 22)
        assert ei.value.rsc is RSC.NOT_FOUND
        e2 = await enrol(mef.host, mef.port, kpm_tls())
        assert mef.state.revoke_enrolee(ENROLEE) == 2
        with pytest.raises(MEFClientError) as ei:
            await fetcher(mef).fetch(e2.ke_id, 22)
        assert ei.value.rsc is RSC.NOT_FOUND
        with pytest.raises(MEFClientError) as ei:
            await enrol(mef.host, mef.port, kpm_tls())
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE

    run(go)


def test_store_backed_kpsa_directory_caches_with_lifetime(mef: ThreadedMEF, tmp_path: Path) -> None:
    async def go() -> None:
        e = await enrol(mef.host, mef.port, kpm_tls())
        local = StoreKpsaDirectory(mef.state.store, namespace="b.kpsa")
        d = MEFKpsaDirectory(fetcher(mef), local)
        entry = await d.prefetch(e.ke_id)
        assert entry.kpsa == derive_kpsa(e.ke, ENROLEE_B) and entry.peer_id == ENROLEE
        cred = mef.state.store.get_credential("b.kpsa", e.ke_id)
        assert cred.expires_at == e.expiry
        assert d.lookup("not-ours@elsewhere.example.com") is None
        assert d.lookup("00" * 16 + "@" + MEF_FQDN) is None and d.errors

    run(go)


def test_remote_maf_enrolment_instruction_and_km_fetch(mef: ThreadedMEF) -> None:
    from m2msec.keys import derive_km
    from m2msec.mef import InstructionType, MAFPreference

    maf_fqdn = "maf.m2m.example.com"
    mef.state.add_enrolee(EnroleeConfig("/id-in/Cmafdev", kpm_id="kpm-maf",
                                        mafs=(MAFPreference(maf_fqdn, "https://maf/keyreg", "https://maf/keyret",
                                                            "https://maf/clientreg"),)), kpm=b"m" * 32)
    mef.state.add_target(TargetConfig(maf_fqdn, psk_id="maf-psk"), psk=b"k" * 32)

    async def go() -> None:
        tls = kpm_tls("kpm-maf", b"m" * 32)
        without = await enrol(mef.host, mef.port, tls, EnrolmentRequest(maf_enrolment=False))
        assert without.instructions == ()
        e = await enrol(mef.host, mef.port, tls, EnrolmentRequest(maf_enrolment=True))
        (ins,) = e.instructions
        assert ins.type is InstructionType.MAF_ENROLMENT
        assert ins.params["MAFID"] == maf_fqdn and ins.params["CredentialType"] == "SymmetricKey"
        assert ins.params["MAFKeyRegistrationURI"] == "https://maf/keyreg"
        assert ins.params["MAFClientRegistrationURI"] == "https://maf/clientreg"
        maf = fetcher(mef, maf_fqdn, "maf-psk", b"k" * 32)
        km = await maf.fetch_km(e.ke_id)
        assert km.key == derive_km(e.ke, maf_fqdn) == e.km(maf_fqdn)
        assert km.enrolee_id == "/id-in/Cmafdev"
        with pytest.raises(MEFClientError) as ei:  # no MAF enrolment was instructed in that exchange
            await maf.fetch_km(without.ke_id)
        assert ei.value.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        with pytest.raises(MEFClientError):  # the MAF may not fetch Kpsa either
            await maf.fetch(e.ke_id, 22)

    run(go)


def test_reenrolment_with_kre(mef: ThreadedMEF) -> None:
    async def go() -> None:
        first = await enrol(mef.host, mef.port, kpm_tls())
        second = await enrol(mef.host, mef.port, mef_tls_config(psk=first.reauth_psk()))
        assert second.enrolee_id == ENROLEE and second.ke_id != first.ke_id and second.ke != first.ke
        assert mef.state.store.get_credential(NS_KE, second.ke_id).metadata["credential"] == f"kre:{first.kre_id}"

    run(go)
