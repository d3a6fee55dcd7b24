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

import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from _gateway_support import GatewayProcess
from _saef_support import gateway_toml_head, req, run, utc_now

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.client import RegisteredKey
from m2msec.net.acme import AcmeCSE
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive
from m2msec.onem2m.enums import SUID
from m2msec.saef import KpsaEntry, psk_client
from m2msec.saef.http import SAEFHTTPClient
from m2msec.tls.engine import TLSFailureReason, TLSHandshakeError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "maf"))
from _mafproc import ADMIN_FQDN, MAF_FQDN, MAFProcess

pytestmark = pytest.mark.acme


@dataclass
class World:
    acme: AcmeCSE
    maf: MAFProcess
    gw: GatewayProcess
    ae: str
    key: RegisteredKey

    @property
    def csi(self) -> str:
        return "/" + self.acme.cse_id

    def gateway_stderr(self) -> str:
        self.gw._err.seek(0)
        return self.gw._err.read().decode("utf-8", "replace")


async def _register_key(cfg: MAFClientConfig, targets: list[str]) -> RegisteredKey:
    async with MAFClient(cfg) as c:
        return await c.register_key(SUID.MAF_SAEF, targets, utc_now() + timedelta(hours=1))


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    csi = "/" + acme.cse_id
    ae = f"Csaef-maf-{tag}"
    gw_km = os.urandom(32)
    clients = {csi: (f"gw{tag}@{MAF_FQDN}", gw_km), ae: (f"ae{tag}@{MAF_FQDN}", os.urandom(32))}
    maf = MAFProcess(tmp_path_factory.mktemp("maf"), clients)
    gw = None
    try:
        async def setup() -> RegisteredKey:
            async with MAFClient(maf.client_config(ae)) as c:
                await c.register(utc_now() + timedelta(days=1))
            return await _register_key(maf.client_config(ae), [csi])

        key = run(setup())
        (gwdir / "maf-gw.key").write_text(gw_km.hex())
        config = gwdir / "gateway-saef-maf.toml"
        config.write_text(gateway_toml_head(acme, gwdir, "gateway-saef-maf.db") + f"""[saef]
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
    other = run(_register_key(w.maf.client_config(w.ae), ["/id-other"]))
    for entry in (KpsaEntry(f"{secrets.token_hex(16)}@{MAF_FQDN}", os.urandom(32)), KpsaEntry(other.key_id, other.key)):
        assert _connect_fails(w, entry).reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert w.gw.proc.poll() is None


def test_maf_unreachable_fails_the_handshake_and_the_listener_keeps_serving(world: World) -> None:
    w = world
    run(_session(w, KpsaEntry(w.key.key_id, w.key.key), [req(Operation.RETRIEVE, w.acme.cse_base, w.ae)]))  # cached
    fresh = run(_register_key(w.maf.client_config(w.ae), [w.csi]))
    w.maf.stop()
    assert _connect_fails(w, KpsaEntry(fresh.key_id, fresh.key)).reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    err = w.gateway_stderr()
    assert f"saef_maf: MAF {MAF_FQDN} at 127.0.0.1:{w.maf.port} unreachable" in err, err[-2000:]
    assert fresh.key.hex() not in err and w.key.key.hex() not in err
    rsps = run(_session(w, KpsaEntry(w.key.key_id, w.key.key), [req(Operation.RETRIEVE, w.acme.cse_base, w.ae)]))
    assert [int(r.rsc) for r in rsps] == [2000]  # Kc cached within its lifetime: no MAF needed
    assert w.gw.proc.poll() is None
