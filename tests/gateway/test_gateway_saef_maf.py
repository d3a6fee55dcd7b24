"""MAF-based SAEF on the gateway's SAEF listener, in process (TS-0003 8.2.2.3, 8.8.2.8, 7.2.1).

A real :class:`~m2msec.maf.server.MAFServer` (SQLite store) runs on the **same event loop** as
the gateway's :class:`~m2msec.gateway.saef.SAEFListener`: a PSK callback that waited for the
MAF on that loop would deadlock, so every association that completes here shows that Kc is
retrieved before the engine reads the ClientKeyExchange (``psk_prefetch``).  AEs register
SUID-32 keys with the CSE ``/id-in`` as Target (8.8.2.7, exporter option) and open TLS-PSK
associations with psk_identity = the Key Identifier; requests reach a recording stand-in CSE.
Refusals: unknown KcID, a key for another Target (4103), a key of another SUID, an expired key,
a Source MAF Client that is no AE of this CSE, a wrong Kc, and an unreachable MAF (the
listener keeps serving).  Then ``[saef_maf]`` in gateway.toml and its refusals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _saef_support import (
    BASE,
    CSE_ID,
    CSE_NAME,
    SP,
    SP_ID,
    RecordingCSE,
    empty_receiver,
    run,
    utc_now,
)
from cryptography.hazmat.primitives import serialization

from m2msec.gateway.app import build
from m2msec.gateway.config import ConfigError, SAEFConfig, SAEFMAFConfig, load_config
from m2msec.gateway.saef import SAEFListener, build_endpoint
from m2msec.gateway.saefmaf import MAFSAEFDirectory, maf_bound_ae_id
from m2msec.gateway.server import Gateway
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService
from m2msec.maf.client import RegisteredKey
from m2msec.maf.server import MAFServer
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
)
from m2msec.onem2m.enums import SUID
from m2msec.pki import CertificateFlavour, DevCA
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials, TLSFailureReason, TLSHandshakeError

RSC = ResponseStatusCode
MAF_FQDN, ADMIN = "maf.m2m.example.com", "sp.m2m.example.com"
AE1 = "Cmaf-ae1"  # the MAF knows AE1 by its AE-ID-Stem
AE_ABS = f"{SP_ID}/{CSE_ID}/Cmaf-abs"  # ... and this one by its absolute AE-ID
CSE_MN = "/id-mn"  # a CSE: not an AE of this CSE
ANON = "anon"  # a MAF Client the MAF knows only by its Credential-ID (11-<KmID>)
STATIC_KID, STATIC_KPSA, STATIC_AE = f"static@sp.{SP}", os.urandom(32), "Cstatic"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset


@dataclass
class Rig:
    maf_port: int
    clients: dict[str, MAFClientConfig]
    cse: RecordingCSE
    saef: SAEFListener
    maf: MAFSAEFDirectory
    clock: Clock
    service: MAFService

    async def key(self, who: str, suid: SUID = SUID.MAF_SAEF, targets: tuple[str, ...] = ("/" + CSE_ID,),
                  lifetime: timedelta = timedelta(hours=1)) -> RegisteredKey:
        async with MAFClient(self.clients[who]) as c:
            return await c.register_key(suid, list(targets), utc_now() + lifetime)

    async def connect(self, entry: KpsaEntry) -> SAEFHTTPClient:
        return await SAEFHTTPClient.connect(psk_client(entry, id_b="/" + CSE_ID), self.saef.host, self.saef.port,
                                            timeout=5)


def _client_config(port: int, kmid: str, km: bytes, timeout: float = 5.0) -> MAFClientConfig:
    return MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                           psk=PSKCredentials(kmid.encode(), km), timeout=timeout)


@asynccontextmanager
async def rig(tmp_path: Path, *, maf_port: int | None = None) -> AsyncIterator[Rig]:
    """``maf_port``: point the gateway's MAF Client there instead of at the running MAF."""
    tag = secrets.token_hex(3)
    creds = {name: (f"{name.strip('/').lower()}{tag}@{MAF_FQDN}", os.urandom(32))
             for name in ("/" + CSE_ID, AE1, AE_ABS.rsplit("/", 1)[1], CSE_MN, ANON)}
    ids = {"/" + CSE_ID: "/" + CSE_ID, AE1: AE1, AE_ABS.rsplit("/", 1)[1]: AE_ABS, CSE_MN: CSE_MN, ANON: None}
    store = open_store(f"sqlite:///{tmp_path / f'maf-{tag}.db'}", KeyEncryptionKey.generate(), clock=utc_now)
    svc = MAFService(store, MAF_FQDN, admins=[AdminConfig(ADMIN)], clock=utc_now)
    for name, (kmid, km) in creds.items():
        svc.add_km_client(kmid, km, client_id=ids[name])
    cse = RecordingCSE()
    clock = Clock()
    try:
        async with MAFServer(svc) as srv, AEEndpoint(cse) as ep:
            clients = {ids[n] or n: _client_config(srv.port, *creds[n]) for n in creds}
            for who in (AE1, AE_ABS, CSE_MN, ANON):  # 8.8.2.3; the gateway registers itself on first need
                async with MAFClient(clients[who]) as c:
                    await c.register(utc_now() + timedelta(days=1))
            gw_cfg = _client_config(maf_port or srv.port, *creds["/" + CSE_ID], timeout=2.0)
            maf = MAFSAEFDirectory(gw_cfg, bind=lambda s: maf_bound_ae_id(s, cse_id=CSE_ID, sp_id=SP_ID),
                                   clock=clock, timeout=2.0, negative_ttl=30.0)
            cfg = SAEFConfig(host="127.0.0.1", port=0, psk=(KpsaEntry(STATIC_KID, STATIC_KPSA, peer_id=STATIC_AE),))
            async with Gateway(cse_url=ep.url, cse_id=CSE_ID, cse_name=CSE_NAME, receiver=empty_receiver(),
                               sp_id=SP_ID) as gw, \
                    SAEFListener(gw, build_endpoint(cfg, clock=utc_now, maf=maf), sp_id=SP_ID, maf=maf,
                                 config=cfg) as lst:
                yield Rig(srv.port, clients, cse, lst, maf, clock, svc)
    finally:
        store.close()


def req(op: Operation, fr: str | None, rqi: str, to: str = BASE) -> RequestPrimitive:
    kw: dict[str, Any] = {}
    if op is Operation.CREATE:
        kw = {"ty": ResourceType.CONTAINER, "pc": {"m2m:cnt": {"rn": "cnt"}}}
    return RequestPrimitive(op=op, to=to, fr=fr, rqi=rqi, rvi="3", **kw)


# ---------------------------------------------------------------- pure: the identity rule


@pytest.mark.parametrize(("source", "want"), [
    ("Cae1", "Cae1"),
    ("/id-in/Cae1", "Cae1"),
    (f"{SP_ID}/id-in/Cae1", "Cae1"),
    ("Sae1", "/Sae1"),
    (f"{SP_ID}/Sae1", "/Sae1"),
    ("/id-mn/Cae1", None),  # another CSE's AE
    ("/id-mn", None),  # a CSE-ID
    ("/id-in", None),  # this CSE itself
    ("//other.example.org/id-in/Cae1", None),  # another SP's
    ("11-abcd@maf.m2m.example.com", None),  # a Credential-ID: the MAF knows no AE-ID
    ("", None),
])
def test_maf_bound_ae_id(source: str, want: str | None) -> None:
    assert maf_bound_ae_id(source, cse_id=CSE_ID, sp_id=SP_ID) == want


# ---------------------------------------------------------------- associations


def test_maf_based_ae_is_bound_to_the_source_maf_client_id(tmp_path: Path) -> None:
    async def go() -> tuple[Rig, list[ResponsePrimitive], list[ResponsePrimitive], str]:
        async with rig(tmp_path) as r:
            key = await r.key(AE1)
            assert key.key_id.endswith(f"@{MAF_FQDN}")
            async with await r.connect(KpsaEntry(key.key_id, key.key)) as c:
                fw = c.context.framework
                first = [await c.send(req(Operation.CREATE, AE1, "m1")),
                         await c.send(req(Operation.RETRIEVE, None, "m2")),
                         await c.send(req(Operation.RETRIEVE, f"{SP_ID}/{CSE_ID}/{AE1}", "m3")),
                         await c.send(req(Operation.CREATE, "Cmaf-other", "x1")),
                         await c.send(req(Operation.CREATE, CSE_MN, "x2"))]
            assert r.maf.retrievals == 1
            assert r.maf._client.registration is not None  # 4128 -> Client Registration -> retried
            entry = r.maf.lookup(key.key_id)
            assert entry is not None and entry.peer_id == AE1 and entry.kpsa == key.key
            # a second association within the Kc Lifetime: no new retrieval (8.2.1 SA re-establishment)
            async with await r.connect(KpsaEntry(key.key_id, key.key)) as c:
                second = [await c.send(req(Operation.RETRIEVE, AE1, "m4"))]
            assert r.maf.retrievals == 1
            return r, first, second, fw

    r, first, second, fw = run(go)
    assert fw == "psk"
    assert [int(x.rsc) for x in first] == [2001, 2000, 2000, 4106, 4106]
    assert [int(x.rsc) for x in second] == [2000]
    assert [(q.rqi, q.fr) for q in r.cse.seen] == [("m1", AE1), ("m2", AE1), ("m3", f"{SP_ID}/{CSE_ID}/{AE1}"),
                                                   ("m4", AE1)]
    assert r.saef.rejections == [(AE1, "Cmaf-other", 4106), (AE1, CSE_MN, 4106)]


def test_maf_revocation_reaches_the_gateway_at_its_recheck(tmp_path: Path) -> None:
    """Profile F17: ``maf revoke`` (Key De-Registration by the admin) of one Kc: the listener's
    next MAF re-check drops it, the open association accepted with it is refused (4106) at its
    next request and a new handshake with it fails; another Kc of the same AE stays; a MAF that
    does not answer changes nothing."""
    async def go() -> tuple[list[dict[str, int] | None], list[int], list[int]]:
        async with rig(tmp_path) as r:
            k1, k2 = await r.key(AE1), await r.key(AE1)
            counts: list[dict[str, int] | None] = []
            async with await r.connect(KpsaEntry(k1.key_id, k1.key)) as c1, \
                    await r.connect(KpsaEntry(k2.key_id, k2.key)) as c2:
                before = [int((await c.send(req(Operation.RETRIEVE, AE1, f"b{i}"))).rsc)
                          for i, c in enumerate((c1, c2))]
                counts.append(await r.saef.recheck_maf())
                r.service.revoke_key(k1.key_id)  # `m2msec maf revoke`
                counts.append(await r.saef.recheck_maf())
                after = [int((await c.send(req(Operation.RETRIEVE, AE1, f"a{i}"))).rsc)
                         for i, c in enumerate((c1, c2))]
            with pytest.raises(TLSHandshakeError):
                await r.connect(KpsaEntry(k1.key_id, k1.key))
            async with await r.connect(KpsaEntry(k2.key_id, k2.key)) as c2:
                after.append(int((await c2.send(req(Operation.RETRIEVE, AE1, "a2"))).rsc))
            # the MAF does not answer: the cached Kc stays
            real = r.maf.config
            r.maf._client = MAFClient(_client_config(_dead_port(), real.psk.identity.decode(),  # type: ignore[union-attr]
                                                     real.psk.key, timeout=1.0))  # type: ignore[union-attr]
            counts.append(await r.saef.recheck_maf())
            assert r.maf.lookup(k2.key_id) is not None
            return counts, before, after

    counts, before, after = run(go)
    assert before == [2000, 2000]
    assert counts == [{"checked": 2, "valid": 2, "revoked": 0, "unreachable": 0},
                      {"checked": 2, "valid": 1, "revoked": 1, "unreachable": 0},
                      {"checked": 1, "valid": 0, "revoked": 0, "unreachable": 1}]
    assert after == [4106, 2000, 2000]


def test_maf_rechecks_run_every_recheck_interval(tmp_path: Path) -> None:
    """The listener's periodic pass follows ``[saef_maf] recheck_interval_s`` of the configuration
    in force (here set below the loader's 10 s minimum to keep the test short)."""
    async def go() -> None:
        async with rig(tmp_path) as r:
            k = await r.key(AE1)
            async with await r.connect(KpsaEntry(k.key_id, k.key)) as c:
                assert int((await c.send(req(Operation.RETRIEVE, AE1, "p1"))).rsc) == 2000
                n = r.maf.retrievals
                await asyncio.sleep(0.3)
                assert r.maf.retrievals == n  # no [saef_maf] settings: no periodic pass
                r.service.revoke_key(k.key_id)
                r.saef.maf_config = SAEFMAFConfig(MAF_FQDN, ADMIN, "127.0.0.1", r.maf_port, recheck_interval=0.2)
                r.saef._maf_wake.set()  # what a reload does
                for _ in range(250):
                    if r.maf.lookup(k.key_id) is None:
                        break
                    await asyncio.sleep(0.02)
                assert r.maf.lookup(k.key_id) is None and r.maf.retrievals > n
                assert int((await c.send(req(Operation.RETRIEVE, AE1, "p2"))).rsc) == 4106

    run(go)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_absolute_source_id_is_read_in_the_cses_form(tmp_path: Path) -> None:
    async def go() -> tuple[Rig, list[int]]:
        async with rig(tmp_path) as r:
            key = await r.key(AE_ABS)
            async with await r.connect(KpsaEntry(key.key_id, key.key)) as c:
                out = [int((await c.send(req(Operation.RETRIEVE, "Cmaf-abs", "a1"))).rsc),
                       int((await c.send(req(Operation.RETRIEVE, None, "a2"))).rsc),
                       int((await c.send(req(Operation.RETRIEVE, AE1, "a3"))).rsc)]
            return r, out

    r, out = run(go)
    assert out == [2000, 2000, 4106]
    assert [q.fr for q in r.cse.seen] == ["Cmaf-abs", "Cmaf-abs"]


@pytest.mark.parametrize("case", ["unknown-kcid", "other-target", "esprim-suid", "cse-source", "credential-id-source",
                                  "expired", "wrong-kc"])
def test_refusals_fail_the_handshake(tmp_path: Path, case: str) -> None:
    async def go() -> tuple[Rig, TLSHandshakeError, list[tuple[str, str]]]:
        async with rig(tmp_path) as r:
            if case == "unknown-kcid":
                entry = KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32))
            elif case == "other-target":
                k = await r.key(AE1, targets=("/id-other",))
                entry = KpsaEntry(k.key_id, k.key)
            elif case == "esprim-suid":
                k = await r.key(AE1, suid=SUID.MAF_ESPRIM)
                entry = KpsaEntry(k.key_id, k.key)
            elif case in ("cse-source", "credential-id-source"):
                k = await r.key(CSE_MN if case == "cse-source" else ANON)
                entry = KpsaEntry(k.key_id, k.key)
            elif case == "expired":
                k = await r.key(AE1, lifetime=timedelta(minutes=10))
                async with await r.connect(KpsaEntry(k.key_id, k.key)):
                    pass  # valid now, and cached
                r.clock.offset = timedelta(minutes=11)  # 8.2.2.3: after the Kc Lifetime B fails the handshake
                entry = KpsaEntry(k.key_id, k.key)
            else:
                k = await r.key(AE1)
                entry = KpsaEntry(k.key_id, bytes(32))
            with pytest.raises(TLSHandshakeError) as ei:
                await r.connect(entry)
            # the listener keeps serving: a provisioned Kpsa AE still gets in
            async with await r.connect(KpsaEntry(STATIC_KID, STATIC_KPSA)) as c:
                assert int((await c.send(req(Operation.RETRIEVE, STATIC_AE, "s1"))).rsc) == 2000
            return r, ei.value, list(r.maf.refusals)

    r, err, refusals = run(go)
    assert err.reason is (TLSFailureReason.PSK_MISMATCH if case == "wrong-kc" else
                          TLSFailureReason.UNKNOWN_PSK_IDENTITY), err
    assert [q.rqi for q in r.cse.seen] == ["s1"]
    reason = {"unknown-kcid": "4004", "other-target": "4103", "esprim-suid": "SUID 33",
              "cse-source": f"{CSE_MN!r}, not an AE-ID", "credential-id-source": "'11-",
              # expired: the cache dropped it; the MAF (on its own clock) still answers, the lifetime is checked again
              "expired": "the Kc Lifetime is over", "wrong-kc": None}[case]
    if reason is None:
        assert refusals == []  # a wrong Kc: the retrieval succeeded, the PSK binder did not match
    else:
        assert len(refusals) == 1 and reason in refusals[0][1], refusals


def test_expired_key_is_not_retrieved_again(tmp_path: Path) -> None:
    """After the Kc Lifetime the cached entry is gone and the MAF refuses the key (it expired there too)."""

    async def go() -> tuple[int, list[tuple[str, str]]]:
        async with rig(tmp_path) as r:
            k = await r.key(AE1, lifetime=timedelta(seconds=2))
            async with await r.connect(KpsaEntry(k.key_id, k.key)):
                pass
            await asyncio.sleep(2.2)
            with pytest.raises(TLSHandshakeError):
                await r.connect(KpsaEntry(k.key_id, k.key))
            return r.maf.retrievals, list(r.maf.refusals)

    retrievals, refusals = run(go)
    assert retrievals == 2 and len(refusals) == 1 and "4004" in refusals[0][1]


def test_concurrent_handshakes_share_one_retrieval(tmp_path: Path) -> None:
    async def go() -> tuple[int, list[int]]:
        async with rig(tmp_path) as r:
            k = await r.key(AE1)

            async def one(i: int) -> int:
                async with await r.connect(KpsaEntry(k.key_id, k.key)) as c:
                    return int((await c.send(req(Operation.RETRIEVE, AE1, f"c{i}"))).rsc)

            out = await asyncio.gather(*(one(i) for i in range(4)))
            return r.maf.retrievals, list(out)

    retrievals, out = run(go)
    assert out == [2000] * 4 and retrievals == 1


def test_unreachable_maf_fails_the_handshake_logs_and_backs_off(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]

    async def go() -> tuple[Rig, int]:
        async with rig(tmp_path, maf_port=dead) as r:
            k = await r.key(AE1)
            with pytest.raises(TLSHandshakeError) as ei:
                await r.connect(KpsaEntry(k.key_id, k.key))
            assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
            k2 = await r.key(AE1)
            with pytest.raises(TLSHandshakeError):  # within negative_ttl: the MAF is not asked again
                await r.connect(KpsaEntry(k2.key_id, k2.key))
            async with await r.connect(KpsaEntry(STATIC_KID, STATIC_KPSA)) as c:
                assert int((await c.send(req(Operation.RETRIEVE, STATIC_AE, "s1"))).rsc) == 2000
            return r, r.maf.retrievals

    with caplog.at_level(logging.WARNING, logger="m2msec.gateway.saefmaf"):
        r, retrievals = run(go)
    assert retrievals == 1
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"MAF {MAF_FQDN} at 127.0.0.1:{dead} unreachable" in warnings[0]
    assert [x[1] for x in r.maf.refusals] == ["MAF unreachable", "MAF unreachable (backing off)"]
    assert not any(k.hex() in m for m in warnings for k in (STATIC_KPSA,))


# ---------------------------------------------------------------- [saef_maf] in gateway.toml


def _write(tmp_path: Path, saef_maf: str) -> Path:
    KeyEncryptionKey.generate().write_file(tmp_path / "gw.kek")
    (tmp_path / "km.hex").write_text(os.urandom(32).hex())
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[cse]
id = "{CSE_ID}"
name = "{CSE_NAME}"
sp_id = "{SP_ID}"
url = "http://127.0.0.1:1"
[store]
kek_file = "gw.kek"
url = "sqlite://{tmp_path}/gw.db"
[saef]
listen = "127.0.0.1:0"
{saef_maf}
""")
    return cfg


_KM = f"""[saef_maf]
fqdn = "{MAF_FQDN}"
port = 4433
admin_fqdn = "{ADMIN}"
kmid = "gw@{MAF_FQDN}"
km_file = "km.hex"
"""


def test_saef_maf_config_builds_the_listener(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert load_config(_write(tmp_path / "d", _KM)).saef.maf.recheck_interval == 300  # type: ignore[union-attr]
    cfg = load_config(_write(tmp_path, _KM + "timeout = 3\nnegative_ttl = 1.5\nrecheck_interval_s = 0\n"))
    assert cfg.saef is not None and cfg.saef.psk == () and cfg.saef.certs == ()
    m = cfg.saef.maf
    assert m is not None and m.recheck_interval == 0
    assert m is not None and (m.maf_fqdn, m.host, m.port, m.timeout, m.negative_ttl) == (MAF_FQDN, "127.0.0.1", 4433,
                                                                                          3.0, 1.5)
    assert m.psk is not None and m.psk.identity == f"gw@{MAF_FQDN}".encode()
    assert (tmp_path / "km.hex").read_text() not in repr(m) and "<hidden>" in repr(m)
    gw, store = build(cfg)
    try:
        lst = gw.saef_listener
        assert lst is not None and lst.maf is not None and lst.maf.config.port == 4433
        assert lst.endpoint.framework == "psk" and lst.endpoint.tls_context.config.psk_prefetch is not None
    finally:
        store.close()


def test_saef_maf_config_with_a_certificate(tmp_path: Path) -> None:
    ca = DevCA.create("MAF CA", now=utc_now())
    issued = ca.issue(CertificateFlavour.CSE_ID, ["in.m2m.example.com"], now=utc_now())
    pem = serialization.Encoding.PEM
    assert issued.private_key is not None
    (tmp_path / "c.pem").write_bytes(issued.certificate.public_bytes(pem))
    (tmp_path / "k.pem").write_bytes(issued.private_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                      serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(pem))
    cfg = load_config(_write(tmp_path, f'[saef_maf]\nfqdn = "{MAF_FQDN}"\nport = 1\nadmin_fqdn = "{ADMIN}"\n'
                                       'cert = "c.pem"\nkey = "k.pem"\nca = "ca.pem"\n'))
    assert cfg.saef is not None and cfg.saef.maf is not None
    m = cfg.saef.maf
    assert m.psk is None and m.credentials is not None and m.maf_trust_anchors == (ca.trust_anchor,)
    assert m.client_config(utc_now).clock is utc_now


@pytest.mark.parametrize(("text", "needle"), [
    (_KM.replace("port = 4433\n", ""), "needs port"),
    (_KM.replace('kmid = "gw@maf.m2m.example.com"\n', ""), "kmid"),
    (_KM + 'km_hex = "00"\n', "exactly one of km_hex or km_file"),
    (_KM + 'cert = "c.pem"\nkey = "k.pem"\n', "kmid with km_hex or km_file, or cert and key"),
    (_KM + 'ca = "ca.pem"\n', "ca is for the certificate MAF Handshake"),
    (_KM + "timeout = 9\n", "at most 8 seconds"),
    (_KM + "negative_ttl = 0\n", "negative_ttl must be a positive number"),
    (_KM.replace('kmid = "gw@maf.m2m.example.com"', 'kmid = "no-fqdn"'), "kmid"),
    (_KM + "kpsa_id = 1\n", "unknown key 'kpsa_id' in [saef_maf]"),
    (_KM.replace(f'fqdn = "{MAF_FQDN}"\n', ""), "needs fqdn"),
    (_KM + "recheck_interval_s = 5\n", "recheck_interval_s must be 0 (never) or 10 to 86400"),
    (_KM + 'recheck_interval_s = "300"\n', "recheck_interval_s must be"),
])
def test_saef_maf_config_refusals(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, text))
    assert needle in str(ei.value)
    assert (tmp_path / "km.hex").read_text() not in str(ei.value)


def test_saef_maf_without_saef_is_refused(tmp_path: Path) -> None:
    cfg = _write(tmp_path, _KM)
    cfg.write_text(cfg.read_text().replace('[saef]\nlisten = "127.0.0.1:0"\n', ""))
    with pytest.raises(ConfigError, match=r"\[saef_maf\] need the \[saef\] table"):
        load_config(cfg)


def test_reload_without_saef_maf_ends_the_maf_based_associations(tmp_path: Path) -> None:
    """G10/G12: a reload that removes [saef_maf] ends the open MAF-based associations at their next
    request (4106, the text names [saef_maf]) and refuses new KcIDs; the Kpsa association goes on."""

    async def go() -> tuple[list[int], str, TLSHandshakeError]:
        async with rig(tmp_path) as r:
            gw_client = r.maf.config
            # the settings the directory was built from: a reload without [saef_maf] turns it off
            r.saef.maf_config = SAEFMAFConfig(MAF_FQDN, ADMIN, "127.0.0.1", r.maf_port, psk=gw_client.psk)
            k = await r.key(AE1)
            async with await r.connect(KpsaEntry(k.key_id, k.key)) as kc, \
                    await r.connect(KpsaEntry(STATIC_KID, STATIC_KPSA)) as static:
                codes = [int((await kc.send(req(Operation.RETRIEVE, AE1, "m1"))).rsc)]
                r.saef.reload(SAEFConfig(host="127.0.0.1", port=0,
                                         psk=(KpsaEntry(STATIC_KID, STATIC_KPSA, peer_id=STATIC_AE),)), clock=utc_now)
                refused = await kc.send(req(Operation.RETRIEVE, AE1, "m2"))
                codes += [int(refused.rsc), int((await static.send(req(Operation.RETRIEVE, STATIC_AE, "s1"))).rsc)]
            with pytest.raises(TLSHandshakeError) as ei:
                await r.connect(KpsaEntry(k.key_id, k.key))
            assert [q.rqi for q in r.cse.seen] == ["m1", "s1"]
            return codes, str(refused.pc), ei.value

    codes, text, err = run(go)
    assert codes == [2000, 4106, 2000]
    assert "[saef_maf]" in text and "reload" in text
    assert err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY


def test_reload_keeps_the_maf_client_and_its_cached_kc(tmp_path: Path) -> None:
    """SAEFListener.reload (SIGHUP) swaps the provisioned bindings; the MAF-based SAEF keeps its
    MAF Client and cached Kc (a MAF-based association made before the reload goes on), and an
    association of a [[saef_psk]] binding the reload removed is refused (4106) at its next request."""
    new_kid, new_kpsa = f"static2@sp.{SP}", os.urandom(32)

    async def go() -> tuple[int, list[int], TLSHandshakeError]:
        async with rig(tmp_path) as r:
            k = await r.key(AE1)
            async with await r.connect(KpsaEntry(k.key_id, k.key)) as kept:  # Kc retrieved and cached
                async with await r.connect(KpsaEntry(STATIC_KID, STATIC_KPSA)) as old:
                    n = r.saef.reload(SAEFConfig(host="127.0.0.1", port=0,
                                                 psk=(KpsaEntry(new_kid, new_kpsa, peer_id="Cstatic2"),)),
                                      clock=utc_now)
                    codes = [int((await old.send(req(Operation.RETRIEVE, STATIC_AE, "o1"))).rsc)]
                codes.append(int((await kept.send(req(Operation.RETRIEVE, AE1, "k1"))).rsc))
            async with await r.connect(KpsaEntry(k.key_id, k.key)) as c:
                codes.append(int((await c.send(req(Operation.RETRIEVE, AE1, "m1"))).rsc))
            async with await r.connect(KpsaEntry(new_kid, new_kpsa)) as c:
                codes.append(int((await c.send(req(Operation.RETRIEVE, "Cstatic2", "n1"))).rsc))
            async with await r.connect(KpsaEntry(k.key_id, k.key)) as c:
                codes.append(int((await c.send(req(Operation.RETRIEVE, AE1, "m2"))).rsc))
            with pytest.raises(TLSHandshakeError) as ei:
                await r.connect(KpsaEntry(STATIC_KID, STATIC_KPSA))
            assert r.maf.retrievals == 1 and n == 1
            return n, codes, ei.value

    _, codes, err = run(go)
    assert codes == [4106, 2000, 2000, 2000, 2000]
    assert err.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
