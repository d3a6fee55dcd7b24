"""MAF-based ESPrim with the gateway as the CSE's ESPrim Receiver (``[esprim_maf]``; TS-0003
8.4.2 phase A C.6a, 8.8.2.8; SUID 33; profile G15), in process: a real MAF server (SQLite), the
gateway built from gateway.toml in front of a stand-in CSE, and an Originator AE that registers a
SUID-33 key with the CSE as Target.  The gateway retrieves the key on first sight of its Key
Identifier, stores it bound to the Source MAF Client ID, opens the AE's requests and forwards the
inner ones; refusals (another Target's key, a key of another SUID, an unknown Key Identifier, the
impersonation check) answer 4112/4116; ``maf revoke`` takes effect at the next re-check
(4112 on the same session) and is audited; the configuration's rules."""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _saef_support import CSE_ID, CSE_NAME, utc_now

from m2msec.esprim import Originator, PairwiseKey
from m2msec.esprim.transport import OuterResponseError, SecureOriginator
from m2msec.gateway.app import build
from m2msec.gateway.config import ConfigError, load_config
from m2msec.keys import derive_maf_pairwise_esprim_key
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService
from m2msec.maf.server import MAFServer
from m2msec.net.client import AsyncOneM2MClient
from m2msec.net.endpoint import AEEndpoint
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.primitives import new_request_id
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import PSKCredentials

RSC = ResponseStatusCode
MAF_FQDN, ADMIN = "maf.m2m.example.com", "sp.m2m.example.com"
BASE = f"/{CSE_ID}/{CSE_NAME}"
AE1, AE2 = "Cesp-ae1", "Cesp-ae2"


class StandInCSE:
    """Answers a RETRIEVE of the CSEBase with an m2m:cb (the gateway adds its esi) and 2000/2001
    to everything else, recording what reached it."""

    def __init__(self) -> None:
        self.seen: list[RequestPrimitive] = []

    async def __call__(self, req: RequestPrimitive) -> ResponsePrimitive:
        if req.op is Operation.RETRIEVE and req.to.rstrip("/") in (BASE, CSE_NAME, f"/{CSE_ID}"):
            return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi="3",
                                     pc={"m2m:cb": {"ri": CSE_ID, "rn": CSE_NAME, "csi": "/" + CSE_ID}})
        self.seen.append(req)
        rsc = RSC.CREATED if req.op is Operation.CREATE else RSC.OK
        return ResponsePrimitive(rsc=rsc, rqi=req.rqi, rvi="3", pc={"m2m:dbg": f"from {req.fr}"})


def _toml(tmp_path: Path, cse_url: str, maf_port: int, kmid: str, extra: str = "", esprim_maf: bool = True) -> Path:
    if not (tmp_path / "gw.kek").exists():
        KeyEncryptionKey.generate().write_file(tmp_path / "gw.kek")
    table = (f'[esprim_maf]\nfqdn = "{MAF_FQDN}"\nport = {maf_port}\nadmin_fqdn = "{ADMIN}"\nkmid = "{kmid}"\n'
             f'km_file = "gw-km.hex"\ntimeout = 3\nrecheck_interval_s = 0\n' if esprim_maf else "")
    p = tmp_path / "gateway.toml"
    p.write_text(f'[cse]\nid = "{CSE_ID}"\nname = "{CSE_NAME}"\nurl = "{cse_url}"\n'
                 f'[store]\nkek_file = "gw.kek"\nurl = "sqlite:///{tmp_path / "gw.db"}"\n' + extra + table)
    return p


def test_maf_based_esprim_through_the_gateway(tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    creds = {who: (f"{who.strip('/').lower()}{tag}@{MAF_FQDN}", os.urandom(32)) for who in ("/" + CSE_ID, AE1, AE2)}
    (tmp_path / "gw-km.hex").write_text(creds["/" + CSE_ID][1].hex())
    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey.generate(), clock=utc_now)
    svc = MAFService(store, MAF_FQDN, admins=[AdminConfig(ADMIN)], clock=utc_now)
    for who, (kmid, km) in creds.items():
        svc.add_km_client(kmid, km, client_id=who)

    def client(who: str, port: int) -> MAFClientConfig:
        kmid, km = creds[who]
        return MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN, host="127.0.0.1", port=port,
                               psk=PSKCredentials(kmid.encode(), km))

    def inner(op: Operation, fr: str = AE1, to: str = BASE, **kw: Any) -> RequestPrimitive:
        return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        cse = StandInCSE()
        async with MAFServer(svc) as srv, AEEndpoint(cse) as ep:
            for who in (AE1, AE2):
                async with MAFClient(client(who, srv.port)) as c:
                    await c.register(utc_now() + timedelta(days=1))
            async with MAFClient(client(AE1, srv.port)) as c:
                reg = await c.register_key(SUID.MAF_ESPRIM, ["/" + CSE_ID], utc_now() + timedelta(hours=1))
                other = await c.register_key(SUID.MAF_ESPRIM, ["/id-mn"], utc_now() + timedelta(hours=1),
                                             key_value=os.urandom(32))
                esdata = await c.register_key(SUID.MAF_ESDATA_SIGN, ["/" + CSE_ID], utc_now() + timedelta(hours=1),
                                              key_value=os.urandom(32))
            cfg = load_config(_toml(tmp_path, ep.url, srv.port, creds["/" + CSE_ID][0]))
            assert SUID.MAF_ESPRIM in cfg.suids and cfg.esprim_maf is not None
            gw, gstore = build(cfg)
            try:
                async with gw, AsyncOneM2MClient(gw.url, AE1) as http:
                    def originator(kid: str, key: bytes) -> SecureOriginator:
                        return SecureOriginator(http, Originator(clock=utc_now),
                                                PairwiseKey(kid=kid, key=key, peer_id="/" + CSE_ID,
                                                            suid=SUID.MAF_ESPRIM))

                    so = originator(reg.key_id, derive_maf_pairwise_esprim_key(reg.key))
                    out["created"] = await so.send(inner(Operation.CREATE, ty=3, pc={"m2m:cnt": {"rn": "c"}}),
                                                   BASE, BASE)
                    out["retrieved"] = await so.send(inner(Operation.RETRIEVE, to=f"{BASE}/c"), BASE, BASE)
                    out["retrievals_after_two"] = gw.esprim_maf.retrievals
                    refusals = {}
                    for name, (kid, key, fr) in {
                        "impersonation": (reg.key_id, derive_maf_pairwise_esprim_key(reg.key), AE2),
                        "another target": (other.key_id, derive_maf_pairwise_esprim_key(other.key), AE1),
                        "another suid": (esdata.key_id, derive_maf_pairwise_esprim_key(esdata.key), AE1),
                        "unknown": (f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32), AE1),
                    }.items():
                        try:
                            await originator(kid, key).send(inner(Operation.RETRIEVE, fr=fr), BASE, BASE)
                            refusals[name] = 0
                        except OuterResponseError as exc:
                            refusals[name] = int(exc.rsc)
                    out["refusals"] = refusals
                    out["before"] = await gw.esprim_maf.recheck()
                    svc.revoke_key(reg.key_id)  # `m2msec maf revoke`
                    out["after"] = await gw.esprim_maf.recheck()
                    try:
                        await so.send(inner(Operation.RETRIEVE), BASE, BASE)
                        out["revoked"] = 0
                    except OuterResponseError as exc:
                        out["revoked"] = int(exc.rsc)
                out["audit"] = [(a.action, a.subject, a.details.get("kid")) for a in gstore.list_audit(actor="gateway")]
                out["seen"] = [(q.op, q.fr) for q in cse.seen]
            finally:
                gstore.close()
        out["kid"] = reg.key_id
        return out

    try:
        out = asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        store.close()
    assert out["created"].rsc == RSC.CREATED and out["retrieved"].rsc == RSC.OK
    assert out["retrievals_after_two"] == 1  # first sight only; the second request resolves from the store
    assert out["refusals"] == {"impersonation": RSC.ESPRIM_IMPERSONATION_ERROR, "another target": 4112,
                               "another suid": 4112, "unknown": 4112}
    assert out["before"] == {"checked": 1, "valid": 1, "revoked": 0, "unreachable": 0}
    assert out["after"] == {"checked": 1, "valid": 0, "revoked": 1, "unreachable": 0}
    assert out["revoked"] == RSC.ESPRIM_UNKNOWN_KEY_ID
    assert ("maf-revoked", AE1, out["kid"]) in out["audit"]
    assert out["seen"] == [(Operation.CREATE, AE1), (Operation.RETRIEVE, AE1)]


@pytest.mark.parametrize(("extra", "needle"), [
    ("[receiver]\nsuids = [13, 23]\n", "add 33 to [receiver] suids"),
])
def test_config_rules(tmp_path: Path, extra: str, needle: str) -> None:
    (tmp_path / "gw-km.hex").write_text(os.urandom(32).hex())
    kmid = f"cse@{MAF_FQDN}"
    cfg = load_config(_toml(tmp_path, "http://127.0.0.1:9", 4433, kmid))
    assert cfg.esprim_maf is not None and cfg.suids == (SUID(13), SUID(23), SUID(33))
    assert cfg.esprim_maf.recheck_interval == 0
    assert load_config(_toml(tmp_path, "http://127.0.0.1:9", 4433, kmid, esprim_maf=False)).suids == (SUID(13), SUID(23))
    with pytest.raises(ConfigError) as ei:
        load_config(_toml(tmp_path, "http://127.0.0.1:9", 4433, kmid, extra=extra))
    assert needle in str(ei.value)
    with pytest.raises(ConfigError, match=r"\[esprim_maf\] needs port"):
        load_config(_toml(tmp_path, "http://127.0.0.1:9", 0, kmid))


def test_serve_runs_the_recheck_on_sighup(tmp_path: Path) -> None:
    """``m2msec gateway serve`` with ``[esprim_maf]``: SIGHUP runs one re-check (nothing stored
    yet: 0 keys) and prints it; SIGTERM stops it cleanly."""
    import select
    import signal
    import socket

    from _gateway_support import GatewayProcess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    (tmp_path / "gw-km.hex").write_text(os.urandom(32).hex())
    gw = GatewayProcess(_toml(tmp_path, "http://127.0.0.1:9", dead, f"cse@{MAF_FQDN}"), "http://127.0.0.1:9")
    try:
        gw.proc.send_signal(signal.SIGHUP)
        assert gw.proc.stdout is not None
        ready, _, _ = select.select([gw.proc.stdout], [], [], 20)
        assert ready, "no line after SIGHUP"
        line = gw.proc.stdout.readline().strip()
        assert line == "esprim_maf re-checked 0 key(s): 0 removed, 0 not answered", line
    finally:
        assert gw.stop() == 0


def test_sighup_puts_a_changed_table_in_force(tmp_path: Path) -> None:
    """``MAFESPrimStoreSource.apply`` (what SIGHUP runs): the same table keeps the MAF Client; a
    new Km (the MAF Client's credential) gets a new client and forgets the refusals; a new
    ``recheck_interval_s`` starts, re-times or stops the periodic pass."""
    (tmp_path / "gw-km.hex").write_text(os.urandom(32).hex())
    kmid = f"cse@{MAF_FQDN}"
    path = _toml(tmp_path, "http://127.0.0.1:9", 4433, kmid)

    async def go() -> None:
        gw, gstore = build(load_config(path))
        try:
            async with gw:
                src = gw.esprim_maf
                first = src.client
                assert src._task is None  # recheck_interval_s = 0: no periodic pass  # noqa: SLF001
                assert src.apply(load_config(path).esprim_maf, utc_now) == [] and src.client is first
                src._refused.refuse(f"{'ab' * 16}@{MAF_FQDN}", 3600)  # noqa: SLF001
                (tmp_path / "gw-km.hex").write_text(os.urandom(32).hex())  # the operator rotates the Km
                assert src.apply(load_config(path).esprim_maf, utc_now) == [
                    f"esprim_maf reloaded: {MAF_FQDN} at 127.0.0.1:4433"]
                assert src.client is not first and len(src._refused) == 0  # noqa: SLF001
                path.write_text(path.read_text().replace("recheck_interval_s = 0", "recheck_interval_s = 60"))
                assert src.apply(load_config(path).esprim_maf, utc_now) == ["esprim_maf recheck_interval_s now 60"]
                assert src._task is not None and src.recheck_interval == 60  # noqa: SLF001
                path.write_text(path.read_text().replace("recheck_interval_s = 60", "recheck_interval_s = 0"))
                assert src.apply(load_config(path).esprim_maf, utc_now) == ["esprim_maf recheck_interval_s now 0"]
                await asyncio.sleep(0.05)
                assert src._task is None  # noqa: SLF001
        finally:
            gstore.close()

    asyncio.run(asyncio.wait_for(go(), 20))
