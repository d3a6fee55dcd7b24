"""RSPF-provisioned Kpsa on the gateway's SAEF listener, in process (TS-0003 8.3.2.1, 8.2.2.1, 7.2.1;
profile M28).

A real :class:`~m2msec.mef.server.MEFServer` (SQLite store) runs on the **same event loop** as the
gateway's :class:`~m2msec.gateway.saef.SAEFListener`: a PSK callback that waited for the MEF on
that loop would deadlock, so every association that completes here shows that Kpsa is fetched
before the engine reads the ClientKeyExchange (``psk_prefetch``).  AEs enrol (PSK RSPF) with a
grant (``/id-in``, SUID 22), derive Kpsa for the CSE and open TLS-PSK associations with
psk_identity = KeID; requests reach a recording stand-in CSE, attributed to the Enrolee-ID.
Refusals: a KeID not granted for this CSE (4103), one the MEF never issued (4004), an Enrolee that
is no AE of this CSE, a wrong Kpsa, an unreachable MEF (the listener keeps serving).  Revocation
at the MEF and the Enrolment Expiry end an open association at its next request.  Then
gateway.toml: ``[saef]`` with ``[mef]`` only.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from _saef_support import (
    BASE,
    CSE_ID,
    CSE_NAME,
    SP_ID,
    RecordingCSE,
    empty_receiver,
    run,
    utc_now,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))
from _mefhelp import MEF_FQDN, make_state
from _saef_keepalive import SAEFKeepAlive

from m2msec.gateway.app import build
from m2msec.gateway.config import ConfigError, SAEFConfig, load_config
from m2msec.gateway.saef import SAEFListener, build_endpoint
from m2msec.gateway.saefmaf import maf_bound_ae_id
from m2msec.gateway.saefmef import MEFSAEFDirectory
from m2msec.gateway.server import Gateway
from m2msec.keys import derive_usage_key
from m2msec.mef import (
    EnroleeConfig,
    MEFKeyFetcher,
    MEFServer,
    TargetConfig,
    TargetGrant,
    enrol,
    mef_tls_config,
)
from m2msec.mef.client import Enrolment
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive
from m2msec.saef import KpsaEntry, psk_client
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

CSE = "/" + CSE_ID
AE1, AE2 = "Cmef-ae1", "Cmef-ae2"
AE_ABS = f"{SP_ID}/{CSE_ID}/Cmef-abs"  # an Enrolee-ID in absolute form: bound as the CSE reads it
NOGRANT = "Cmef-nogrant"  # granted SUID 22 for another CSE only
CSE_ENROLEE = "/id-mn"  # an Enrolee that is a CSE: no AE of this CSE
STATIC_KID, STATIC_KPSA, STATIC_AE = "static@sp.m2m.example.com", os.urandom(32), "Cstatic"
CSE_PSK = b"c" * 32


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset


def _kpm(who: str) -> tuple[str, bytes]:
    return f"kpm-{who.strip('/').replace('/', '-')}", who.encode().ljust(32, b"k")[:32]


@dataclass
class Rig:
    mef_port: int
    state: object
    cse: RecordingCSE
    saef: SAEFListener
    mef: MEFSAEFDirectory
    clock: Clock

    async def enrol(self, who: str) -> Enrolment:
        kpm_id, kpm = _kpm(who)
        return await enrol("127.0.0.1", self.mef_port, mef_tls_config(psk=PSKCredentials(kpm_id.encode(), kpm)))

    async def open(self, entry: KpsaEntry) -> SAEFKeepAlive:
        return await SAEFKeepAlive.connect(psk_client(entry, id_b=CSE), self.saef.host, self.saef.port)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def rig(tmp_path: Path, *, mef_port: int | None = None) -> AsyncIterator[Rig]:
    """``mef_port``: point the gateway's MEF fetcher there instead of at the running MEF."""
    clock = Clock()
    state = make_state(tmp_path, clock)  # type: ignore[arg-type]
    for who, cse in ((AE1, CSE), (AE2, CSE), (AE_ABS, CSE), (NOGRANT, "/id-other"), (CSE_ENROLEE, CSE)):
        kpm_id, kpm = _kpm(who)
        state.add_enrolee(EnroleeConfig(who, kpm_id=kpm_id, targets=(TargetGrant(cse, (22,)),),
                                        expiry_seconds=3600), kpm=kpm)
    state.add_target(TargetConfig(CSE, psk_id="cse"), psk=CSE_PSK)
    server = MEFServer(state)
    cse = RecordingCSE()
    try:
        _host, port = await server.start()
        async with AEEndpoint(cse) as ep:
            fetcher = MEFKeyFetcher("127.0.0.1", mef_port or port, mef_tls_config(psk=PSKCredentials(b"cse", CSE_PSK)),
                                    target_id=CSE, mef_fqdn=MEF_FQDN, clock=clock, timeout=2.0)
            mef = MEFSAEFDirectory(fetcher, bind=lambda s: maf_bound_ae_id(s, cse_id=CSE_ID, sp_id=SP_ID),
                                   clock=clock, negative_ttl=30.0)
            cfg = SAEFConfig(host="127.0.0.1", port=0, psk=(KpsaEntry(STATIC_KID, STATIC_KPSA, peer_id=STATIC_AE),))
            async with Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(),
                               sp_id=SP_ID) as gw, \
                    SAEFListener(gw, build_endpoint(cfg, clock=utc_now, mef=mef), sp_id=SP_ID, mef=mef,
                                 config=cfg) as lst:
                yield Rig(port, state, cse, lst, mef, clock)
    finally:
        await server.close()
        state.store.close()  # type: ignore[attr-defined]


def retrieve(fr: str | None, rqi: str) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to=BASE, fr=fr, rqi=rqi, rvi="3")


async def assert_ended(r: Rig, s: SAEFKeepAlive, ae: str, rqi: str) -> None:
    """The next request on ``s``: 4106 in the TS-0009 form, closed, not forwarded."""
    a = await s.send(retrieve(ae, rqi))
    assert (a.status, a.rsc) == (403, 4106)
    assert a.headers["connection"].lower() == "close"
    assert b"MEF" in a.body
    assert await s.closed_by_server()
    assert rqi not in [q.rqi for q in r.cse.seen]


def test_enrolee_is_bound_to_the_enrolee_id_the_mef_returns(tmp_path: Path) -> None:
    async def go() -> tuple[Rig, list[int], list[int]]:
        async with rig(tmp_path) as r:
            e1, ea = await r.enrol(AE1), await r.enrol(AE_ABS)
            s = await r.open(e1.kpsa_entry(CSE))
            assert s.ctx.peer_id == CSE and s.ctx.psk_identity == e1.ke_id
            first = [(await s.send(retrieve(AE1, "m1"))).rsc, (await s.send(retrieve(None, "m2"))).rsc,
                     (await s.send(retrieve(f"{SP_ID}/{CSE_ID}/{AE1}", "m3"))).rsc,
                     (await s.send(retrieve(AE2, "x1"))).rsc]
            s.close()
            assert r.mef.fetches == 1
            entry = r.mef.lookup(e1.ke_id)
            assert entry is not None and entry.peer_id == AE1 and entry.kpsa == e1.direct_key(CSE, 22)
            # a second association: no new fetch; the absolute Enrolee-ID is bound as the CSE reads it
            s = await r.open(e1.kpsa_entry(CSE))
            second = [(await s.send(retrieve(AE1, "m4"))).rsc]
            s.close()
            s = await r.open(ea.kpsa_entry(CSE))
            second.append((await s.send(retrieve("Cmef-abs", "m5"))).rsc)
            s.close()
            assert r.mef.fetches == 2
            return r, first, second

    r, first, second = run(go)
    assert first == [2000, 2000, 2000, 4106] and second == [2000, 2000]
    assert [(q.rqi, q.fr) for q in r.cse.seen] == [("m1", AE1), ("m2", AE1), ("m3", f"{SP_ID}/{CSE_ID}/{AE1}"),
                                                   ("m4", AE1), ("m5", "Cmef-abs")]
    assert r.saef.rejections == [(AE1, AE2, 4106)]


def test_refusals_fail_the_handshake_and_the_listener_goes_on(tmp_path: Path) -> None:
    async def go() -> Rig:
        async with rig(tmp_path) as r:
            e1, nogrant, cse_enrolee = await r.enrol(AE1), await r.enrol(NOGRANT), await r.enrol(CSE_ENROLEE)
            refused = [
                KpsaEntry(nogrant.ke_id, derive_usage_key(nogrant.ke, 22, CSE)),  # not granted for this CSE: 4103
                KpsaEntry("ab" * 16 + "@" + MEF_FQDN, os.urandom(32)),  # never issued: 4004
                KpsaEntry(cse_enrolee.ke_id, cse_enrolee.direct_key(CSE, 22)),  # the Enrolee is a CSE
                KpsaEntry(e1.ke_id, os.urandom(32)),  # a wrong Kpsa under a good KeID
            ]
            for entry in refused:
                with pytest.raises(TLSHandshakeError):
                    await r.open(entry)
            reasons = dict(r.mef.refusals)
            assert "4103" in reasons[nogrant.ke_id]
            assert "4004" in reasons["ab" * 16 + "@" + MEF_FQDN]
            assert "not an AE-ID of this CSE" in reasons[cse_enrolee.ke_id]
            assert e1.ke_id not in reasons  # fetched fine; the handshake failed on the key itself
            # a refused KeID is not asked about again within negative_ttl
            fetches = r.mef.fetches
            with pytest.raises(TLSHandshakeError):
                await r.open(refused[0])
            assert r.mef.fetches == fetches
            # the listener goes on: the good Kpsa and a configured [[saef_psk]] entry work
            for entry, ae in ((e1.kpsa_entry(CSE), AE1), (KpsaEntry(STATIC_KID, STATIC_KPSA), STATIC_AE)):
                s = await r.open(entry)
                assert (await s.send(retrieve(ae, f"ok-{ae}"))).rsc == 2000
                s.close()
            return r

    r = run(go)
    assert [q.fr for q in r.cse.seen] == [AE1, STATIC_AE]


def test_revocation_and_expiry_end_the_open_association(tmp_path: Path) -> None:
    async def go() -> None:
        async with rig(tmp_path) as r:
            e1, e2 = await r.enrol(AE1), await r.enrol(AE2)
            s1, s2 = await r.open(e1.kpsa_entry(CSE)), await r.open(e2.kpsa_entry(CSE))
            for s, ae in ((s1, AE1), (s2, AE2)):
                assert (await s.send(retrieve(ae, f"{ae}-1"))).rsc == 2000
            r.state.revoke_enrolee(AE1)  # type: ignore[attr-defined]  # `m2msec mef enrolee revoke`
            assert await r.mef.recheck() == {"checked": 2, "valid": 1, "revoked": 1, "unreachable": 0}
            await assert_ended(r, s1, AE1, f"{AE1}-2")
            with pytest.raises(TLSHandshakeError):  # and no new association
                await r.open(e1.kpsa_entry(CSE))
            assert (await s2.send(retrieve(AE2, f"{AE2}-2"))).rsc == 2000
            # the Enrolment Expiry (1 h) passes: the open association ends too
            r.clock.offset = timedelta(hours=2)
            await assert_ended(r, s2, AE2, f"{AE2}-3")
            assert [q.rqi for q in r.cse.seen] == [f"{AE1}-1", f"{AE2}-1", f"{AE2}-2"]

    run(go)


def test_unreachable_mef_fails_the_handshake_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with rig(tmp_path, mef_port=_dead_port()) as r:
            e1 = await r.enrol(AE1)
            with caplog.at_level(logging.WARNING, logger="m2msec.gateway.saefmef"):
                with pytest.raises(TLSHandshakeError):
                    await r.open(e1.kpsa_entry(CSE))
            assert [rec for rec in caplog.records if "unreachable" in rec.getMessage()]
            assert dict(r.mef.refusals)[e1.ke_id] == "MEF unreachable"
            s = await r.open(KpsaEntry(STATIC_KID, STATIC_KPSA))
            assert (await s.send(retrieve(STATIC_AE, "static-1"))).rsc == 2000
            s.close()

    run(go)


def test_gateway_toml_saef_with_mef_only(tmp_path: Path) -> None:
    """``[saef]`` needs no [[saef_psk]], [[saef_cert]] or [saef_maf] when ``[mef]`` is there; the
    listener then takes KeIDs of that MEF, and the [mef] re-check covers its Kpsa too."""
    base = (f'[cse]\nid = "{CSE_ID}"\nname = "{CSE_NAME}"\nsp_id = "{SP_ID}"\n'
            '[store]\nurl = "sqlite:///' + str(tmp_path / "gw.db") + '"\n')
    mef = f'[mef]\nfqdn = "{MEF_FQDN}"\nport = 1\npsk_identity = "cse"\npsk_hex = "{CSE_PSK.hex()}"\n'
    p = tmp_path / "gateway.toml"
    p.write_text(base + '[saef]\nlisten = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError, match=r"\[mef\]"):
        load_config(p, cse_url="http://127.0.0.1:9")
    p.write_text(base + mef + '[saef]\nlisten = "127.0.0.1:0"\n')
    os.environ.setdefault("M2MSEC_KEK", os.urandom(32).hex())
    cfg = load_config(p, cse_url="http://127.0.0.1:9")
    gw, store = build(cfg)
    try:
        lst = gw.saef_listener
        assert lst is not None and isinstance(lst.mef, MEFSAEFDirectory)
        assert lst.endpoint.framework == "psk" and lst.endpoint.tls_context.config.psk_prefetch is not None
        assert lst.mef.handles("ab" * 16 + "@" + MEF_FQDN) and not lst.mef.handles("ab" * 16 + "@other.example")
        assert gw.key_recheck is not None and gw.key_recheck_interval == 300
    finally:
        store.close()  # type: ignore[attr-defined]
