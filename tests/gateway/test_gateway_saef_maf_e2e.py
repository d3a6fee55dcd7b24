"""MAF-based SAEF end to end (TS-0003 8.2.2.3, 8.8.2.7, 8.8.2.8, 7.2.1): a real MAF process
(``m2msec maf serve``), a real ACME CSE and ``m2msec gateway serve`` with ``[saef_maf]``.

The AE registers with the MAF, registers a SUID-32 key with the CSE-ID as Target (exporter
option) and opens a TLS-PSK association with the gateway's SAEF listener, psk_identity = the
Key Identifier; the gateway (a Km MAF Client the MAF knows as the CSE-ID) registers with the
MAF on first need, retrieves Kc during the handshake and binds the association to the AE-ID
the MAF returns.  The AE registers at ACME and writes data through it; From of another AE is
4106.  Refusals: an unknown Key Identifier and a key for another Target fail the handshake;
with the MAF stopped a new key fails the handshake (one WARNING line on the gateway's stderr),
the listener keeps serving, and the AE whose Kc is cached still connects."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _gateway_support import GatewayProcess

from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService
from m2msec.maf.client import RegisteredKey
from m2msec.maf.server import load_config as load_maf_config
from m2msec.maf.server import open_config_store
from m2msec.net.acme import AcmeCSE
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.primitives import new_request_id
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import PSKCredentials, TLSFailureReason, TLSHandshakeError

pytestmark = pytest.mark.acme
MAF_FQDN, ADMIN_FQDN = "maf.m2m.example.com", "sp.m2m.example.com"


def utc_now() -> datetime:
    return datetime.now(UTC)


class MAFServe:
    """``m2msec maf serve`` with Km clients provisioned through the store API (8.8.3.1)."""

    def __init__(self, workdir: Path, clients: dict[str, tuple[str, bytes]]) -> None:
        KeyEncryptionKey.generate().write_file(workdir / "maf.kek")
        self.config = workdir / "maf.toml"
        self.config.write_text(f'fqdn = "{MAF_FQDN}"\nstore = "sqlite:///{workdir / "maf.db"}"\n'
                               f'kek_file = "maf.kek"\nhost = "127.0.0.1"\n[[admin]]\nfqdn = "{ADMIN_FQDN}"\n')
        cfg = load_maf_config(self.config)
        store = open_config_store(cfg, clock=utc_now)
        try:
            svc = MAFService(store, cfg.fqdn, admins=[AdminConfig(ADMIN_FQDN)], clock=utc_now)
            for cid, (kmid, km) in clients.items():
                svc.add_km_client(kmid, km, client_id=cid)
        finally:
            store.close()
        self.clients = clients
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from m2msec.maf.cli import app; app()", "serve", "-c", str(self.config),
             "--port", "0"], stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(20)
        if not line or "listening on" not in line[0]:
            self.stop()
            raise RuntimeError(f"MAF did not start: {line!r}")
        self.port = int(line[0].rsplit(":", 1)[1])

    def client(self, cid: str) -> MAFClientConfig:
        kmid, km = self.clients[cid]
        return MAFClientConfig(maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN_FQDN, host="127.0.0.1", port=self.port,
                               psk=PSKCredentials(kmid.encode(), km), timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()


@dataclass
class World:
    acme: AcmeCSE
    maf: MAFServe
    gw: GatewayProcess
    ae: str
    key: RegisteredKey

    @property
    def csi(self) -> str:
        return "/" + self.acme.cse_id

    def gateway_stderr(self) -> str:
        self.gw._err.seek(0)
        return self.gw._err.read().decode("utf-8", "replace")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _register_key(cfg: MAFClientConfig, targets: list[str]) -> RegisteredKey:
    async with MAFClient(cfg) as c:
        return await c.register_key(SUID.MAF_SAEF, targets, utc_now() + timedelta(hours=1))


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    csi = "/" + acme.cse_id
    ae = f"Csaef-maf-{tag}"
    gw_km = os.urandom(32)
    clients = {csi: (f"gw{tag}@{MAF_FQDN}", gw_km), ae: (f"ae{tag}@{MAF_FQDN}", os.urandom(32))}
    maf = MAFServe(tmp_path_factory.mktemp("maf"), clients)
    gw = None
    try:
        async def setup() -> RegisteredKey:
            async with MAFClient(maf.client(ae)) as c:
                await c.register(utc_now() + timedelta(days=1))
            return await _register_key(maf.client(ae), [csi])

        key = run(setup())
        (gwdir / "maf-gw.key").write_text(gw_km.hex())
        config = gwdir / "gateway-saef-maf.toml"
        config.write_text(f"""
[cse]
id = "{acme.cse_id}"
name = "{acme.cse_name}"
admin = "CAdmin"
sp_id = "//m2m.example.com"
[store]
kek_file = "gateway.kek"
url = "sqlite://{gwdir}/gateway-saef-maf.db"
[saef]
listen = "127.0.0.1:0"
require_saef_for = ["{ae}"]
[saef_maf]
fqdn = "{MAF_FQDN}"
port = {maf.port}
admin_fqdn = "{ADMIN_FQDN}"
kmid = "gw{tag}@{MAF_FQDN}"
km_file = "maf-gw.key"
timeout = 3
negative_ttl = 2
""")
        gw = GatewayProcess(config, acme.url, saef_listen="127.0.0.1:0")
        yield World(acme, maf, gw, ae, key)
    finally:
        if gw is not None:
            assert gw.stop() == 0
        maf.stop()


def req(op: Operation, to: str, fr: str | None, **kw: Any) -> RequestPrimitive:
    return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)


async def _session(w: World, entry: KpsaEntry, requests: list[RequestPrimitive]) -> list[ResponsePrimitive]:
    assert w.gw.saef_address is not None
    ep = psk_client(entry, id_b=w.csi)
    async with await SAEFHTTPClient.connect(ep, *w.gw.saef_address, timeout=8) as c:
        return [await c.send(r) for r in requests]


def _connect_fails(w: World, entry: KpsaEntry) -> TLSHandshakeError:
    assert w.gw.saef_address is not None
    with pytest.raises(TLSHandshakeError) as ei:
        run(SAEFHTTPClient.connect(psk_client(entry, id_b=w.csi), *w.gw.saef_address, timeout=8))
    return ei.value


def test_a_maf_based_ae_registers_and_writes_through_the_gateway(world: World) -> None:
    w, ae, base = world, world.ae, world.acme.cse_base
    rsps = run(_session(w, KpsaEntry(w.key.key_id, w.key.key), [
        req(Operation.CREATE, base, ae, ty=ResourceType.AE,
            pc={"m2m:ae": {"rn": ae, "api": "Nm2msec", "rr": False, "srv": ["3"]}}),
        req(Operation.CREATE, f"{base}/{ae}", ae, ty=ResourceType.CONTAINER, pc={"m2m:cnt": {"rn": "data"}}),
        req(Operation.CREATE, f"{base}/{ae}/data", None, ty=ResourceType.CONTENT_INSTANCE,
            pc={"m2m:cin": {"con": "7", "cr": None}}),  # no From: sent on as the AE-ID the MAF named
        req(Operation.RETRIEVE, f"{base}/{ae}/data/la", ae),
        req(Operation.CREATE, f"{base}/{ae}", "Csomebody-else", ty=ResourceType.CONTAINER,
            pc={"m2m:cnt": {"rn": "stolen"}}),
    ]))
    assert [int(r.rsc) for r in rsps] == [2001, 2001, 2001, 2000, 4106], [r.pc for r in rsps]
    assert rsps[0].pc["m2m:ae"]["aei"] == ae  # type: ignore[index]
    assert rsps[3].pc["m2m:cin"]["cr"] == ae  # type: ignore[index]


def test_unknown_key_identifier_and_a_key_for_another_target_fail_the_handshake(world: World) -> None:
    w = world
    other = run(_register_key(w.maf.client(w.ae), ["/id-other"]))
    for entry in (KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32)), KpsaEntry(other.key_id, other.key)):
        assert _connect_fails(w, entry).reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.gw.proc.poll() is None


def test_maf_unreachable_fails_the_handshake_and_the_listener_keeps_serving(world: World) -> None:
    w = world
    run(_session(w, KpsaEntry(w.key.key_id, w.key.key), [req(Operation.RETRIEVE, w.acme.cse_base, w.ae)]))  # cached
    fresh = run(_register_key(w.maf.client(w.ae), [w.csi]))
    w.maf.stop()
    assert _connect_fails(w, KpsaEntry(fresh.key_id, fresh.key)).reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    err = w.gateway_stderr()
    assert f"saef_maf: MAF {MAF_FQDN} at 127.0.0.1:{w.maf.port} unreachable" in err, err[-2000:]
    assert fresh.key.hex() not in err and w.key.key.hex() not in err
    rsps = run(_session(w, KpsaEntry(w.key.key_id, w.key.key), [req(Operation.RETRIEVE, w.acme.cse_base, w.ae)]))
    assert [int(r.rsc) for r in rsps] == [2000]  # Kc cached within its lifetime: no MAF needed
    assert w.gw.proc.poll() is None
