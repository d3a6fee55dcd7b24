"""The MAF options end to end: a real MAF process, the `m2msec gateway` process and ACME.

ESPrim (TS-0003 8.4.2 phase A by the MAF, C.6a.1-6; key SUID 33): AE1 registers a key with AE2 as
its sole Target (exporter option, 8.8.2.7, 10.3.1) and uses its Key Identifier (10.3.5) as
pairwiseESPrimKeyID; AE1 -> gateway -> AE2 secured RETRIEVE and NOTIFY; AE2's SecureReceiver
peeks the kid on first sight, retrieves Kc from the MAF (8.8.2.8) and derives pairwiseESPrimKey.
Rejections: a non-target cannot retrieve the key (4103); a request under the key from an AE other
than AE1 is an impersonation (4116); a MAF key identifier the MAF does not know is 4112.

ESData (8.5, key SUID 34): AE1 seals a contentInstance for three Targets with one MAF key; each
Target reads it through the gateway, retrieves the key from the MAF and opens it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _mafproc import MAF_FQDN, MAFProcess, utc_now

from m2msec.esdata.api import Source, Target, from_content_instance, to_content_instance
from m2msec.esprim import MemoryReceiverState, Originator, Receiver, ReceiverPolicy
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.transport import OuterResponseError, SecureOriginator, SecureReceiver
from m2msec.maf import MAFClient
from m2msec.maf.client import MAFResponseError, RegisteredKey
from m2msec.maf.keysources import MAFESDataKeySource, MAFESPrimKeySource, esdata_recipient, esprim_originator_key
from m2msec.net.acme import AcmeCSE, acme_available
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.primitives import new_request_id
from m2msec.store import KeyEncryptionKey

pytestmark = pytest.mark.acme
RSC = ResponseStatusCode
T = TypeVar("T")
ACP_RETRIEVE, ACP_NOTIFY, ACP_ALL = 2, 16, 63
NAMES = ("ae1", "ae2", "ae3", "ae4")
SECRET_READING = "AE2-MAF-SECRET-READING-0042"
SECRET_COMMAND = "AE1-MAF-SECRET-COMMAND-0099"


def _gateway_support() -> Any:
    name = "m2msec_tests_gateway_support"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "gateway" / "_gateway_support.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


@dataclass
class World:
    acme: AcmeCSE
    gw: Any
    maf: MAFProcess
    trace: Path
    aei: dict[str, str]
    path: dict[str, str]
    ae2_keys: MAFESPrimKeySource
    ae2_endpoint: EndpointThread
    esprim_key: RegisteredKey
    seen: list[RequestPrimitive] = field(default_factory=list)


async def _register_all(maf: MAFProcess, aei: dict[str, str]) -> RegisteredKey:
    """Every AE registers with the MAF (8.8.2.3); AE1 registers a SUID-33 key for AE2 (8.8.2.7)."""
    clients = [MAFClient(maf.client_config(aei[n])) for n in NAMES]
    try:
        for c in clients:
            await c.register(utc_now() + timedelta(days=1))
        return await clients[0].register_key(SUID.MAF_ESPRIM, [aei["ae2"]], utc_now() + timedelta(hours=1))
    finally:
        for c in clients:
            await c.aclose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not acme_available():
        pytest.skip("acmecse is not installed")
    gws = _gateway_support()
    tmp = tmp_path_factory.mktemp("maf-e2e")
    tag = secrets.token_hex(3)
    aei = {n: f"Cmaf-{n}-{tag}" for n in NAMES}
    maf = MAFProcess(tmp / "maf", {aei[n]: (f"{n}{tag}@{MAF_FQDN}", os.urandom(32)) for n in NAMES})
    acme = AcmeCSE(tmp / "acme")
    gw = ep = None
    recv_maf: MAFClient | None = None
    try:
        acme.start()
        gwdir = tmp / "gw"
        gwdir.mkdir()
        KeyEncryptionKey.generate().write_file(gwdir / "gateway.kek")
        config = gws.write_config(gwdir / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name, keys=[])
        trace = gwdir / "trace.jsonl"
        gw = gws.GatewayProcess(config, acme.url, trace=trace)
        esprim_key = run(_register_all(maf, aei))

        # AE2: an ESPrim Receiver whose keys come from the MAF (its MAF connection opens lazily
        # on the endpoint's event loop, at the first unknown kid)
        recv_maf = MAFClient(maf.client_config(aei["ae2"]))
        keys = MAFESPrimKeySource(recv_maf, clock=utc_now)
        receiver = Receiver(keys=keys, state=MemoryReceiverState(clock=utc_now), clock=utc_now,
                            policy=ReceiverPolicy(supported_suids=(SUID.MAF_ESPRIM,)))
        seen: list[RequestPrimitive] = []

        async def app(inner: RequestPrimitive) -> ResponsePrimitive:
            seen.append(inner)
            if inner.op is Operation.RETRIEVE:
                return ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, pc={"m2m:cin": {"con": SECRET_READING}}, rvi="3")
            return ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, rvi="3")

        secure = SecureReceiver(receiver, app, prefetch=keys.prefetch)
        ep = EndpointThread(secure.dispatcher()).start()
        path = {n: f"{acme.cse_base}/{n}" for n in NAMES}
        for n in NAMES:
            ae: dict[str, Any] = {"rn": n, "api": "Nm2msec-maf", "rr": n == "ae2", "srv": ["3"]}
            if n == "ae2":
                ae |= {"poa": [ep.url], "esi": secure.e2e_sec_info().to_json()}
            with OneM2MClient(gw.url, aei[n]) as c:
                c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": ae})
        with OneM2MClient(gw.url, aei["ae2"]) as c:
            acp = c.create(path["ae2"], ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [aei["ae1"], aei["ae3"]], "acop": ACP_RETRIEVE | ACP_NOTIFY},
                                            {"acor": [aei["ae2"]], "acop": ACP_ALL}]},
                "pvs": {"acr": [{"acor": [aei["ae2"]], "acop": ACP_ALL}]},
            }})
            c.update(path["ae2"], {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        with OneM2MClient(gw.url, aei["ae1"]) as c:
            acp = c.create(path["ae1"], ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [aei["ae1"]], "acop": ACP_ALL},
                                            {"acor": [aei[n] for n in ("ae2", "ae3", "ae4")], "acop": ACP_RETRIEVE}]},
                "pvs": {"acr": [{"acor": [aei["ae1"]], "acop": ACP_ALL}]},
            }})
            c.create(path["ae1"], ResourceType.CONTAINER, {"m2m:cnt": {"rn": "esdata",
                                                                     "acpi": [acp.pc["m2m:acp"]["ri"]]}})
        yield World(acme, gw, maf, trace, aei, path, keys, ep, esprim_key, seen)
    finally:
        if ep is not None:
            if recv_maf is not None and ep._loop is not None:
                asyncio.run_coroutine_threadsafe(recv_maf.aclose(), ep._loop).result(5)
            ep.stop()
        if gw is not None:
            gw.stop()
        acme.stop()
        maf.stop()


def _inner(world: World, op: Operation, to: str, fr: str, **kw: Any) -> RequestPrimitive:
    return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)


async def _send_as(world: World, sender: str, ops: list[Operation]) -> list[ResponsePrimitive]:
    to = world.path["ae2"]
    key = esprim_originator_key(world.esprim_key, world.aei["ae2"])
    out = []
    async with AsyncOneM2MClient(world.gw.url, world.aei[sender]) as client:
        so = SecureOriginator(client, Originator(clock=utc_now), key)
        for op in ops:
            pc = ({"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": SECRET_COMMAND}}, "net": 1}, "sur": "/x"}}
                  if op is Operation.NOTIFY else None)
            out.append(await so.send(_inner(world, op, to if op is Operation.NOTIFY else f"{to}/reading",
                                            world.aei[sender], pc=pc), to, to))
    return out


# ---------------------------------------------------------------- ESPrim with a MAF key


def test_esprim_through_gateway_with_a_maf_key(world: World) -> None:
    kid = world.esprim_key.key_id
    assert kid.endswith(f"@{MAF_FQDN}") and kid.split("@")[0] == world.esprim_key.relative_key_id
    with pytest.raises(UnknownKeyID):
        world.ae2_keys.resolve(kid)  # AE2 has not seen the kid yet
    before = len(world.seen)
    r1, r2 = run(_send_as(world, "ae1", [Operation.RETRIEVE, Operation.NOTIFY]))
    assert r1.rsc == RSC.OK and r1.pc == {"m2m:cin": {"con": SECRET_READING}}
    assert r2.rsc == RSC.OK
    got = world.seen[before:]
    assert [r.op for r in got] == [Operation.RETRIEVE, Operation.NOTIFY]
    assert all(r.fr == world.aei["ae1"] for r in got)
    assert SECRET_COMMAND in json.dumps(got[1].pc)
    # the Receiver retrieved Kc from the MAF on first sight: bound to AE1, lifetime = Kc lifetime
    pk = world.ae2_keys.resolve(kid)
    assert pk.peer_id == world.aei["ae1"] and pk.suid is SUID.MAF_ESPRIM
    assert pk.key == esprim_originator_key(world.esprim_key, world.aei["ae2"]).key
    assert pk.expires_at == world.esprim_key.response.expiration_time
    # the gateway (and ACME behind it) saw ciphertext only
    text = world.trace.read_text(encoding="utf-8")
    assert world.ae2_endpoint.url in text and SECRET_READING not in text and SECRET_COMMAND not in text


def test_non_target_cannot_retrieve_the_key(world: World) -> None:
    async def go() -> None:
        async with MAFClient(world.maf.client_config(world.aei["ae3"])) as c3:
            with pytest.raises(MAFResponseError) as ei:
                await c3.retrieve_key(world.esprim_key.key_id)
            assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE  # 4103
            with pytest.raises(UnknownKeyID):
                await MAFESPrimKeySource(c3, clock=utc_now).fetch(world.esprim_key.key_id)
        async with MAFClient(world.maf.client_config(world.aei["ae2"])) as c2:
            assert (await c2.retrieve_key(world.esprim_key.key_id)).source_id == world.aei["ae1"]

    run(go())


def test_the_key_used_by_another_ae_is_impersonation(world: World) -> None:
    """AE3 got hold of AE1's key: its request (From AE3) is refused with 4116 by AE2."""
    before = len(world.seen)
    with pytest.raises(OuterResponseError) as ei:
        run(_send_as(world, "ae3", [Operation.RETRIEVE]))
    assert ei.value.rsc == RSC.ESPRIM_IMPERSONATION_ERROR
    assert ei.value.response.rsc == RSC.ESPRIM_IMPERSONATION_ERROR
    assert len(world.seen) == before


def test_unknown_maf_key_identifier_is_4112(world: World) -> None:
    """A well-formed MAF Key Identifier that the MAF never issued: retrieval fails, the outer RSC is 4112."""
    from m2msec.esprim import PairwiseKey

    async def go() -> None:
        async with AsyncOneM2MClient(world.gw.url, world.aei["ae1"]) as client:
            key = PairwiseKey(kid=f"{secrets.token_hex(16)}@{MAF_FQDN}", key=os.urandom(32),
                              peer_id=world.aei["ae2"], suid=SUID.MAF_ESPRIM)
            so = SecureOriginator(client, Originator(clock=utc_now), key)
            to = world.path["ae2"]
            await so.send(_inner(world, Operation.RETRIEVE, to, world.aei["ae1"]), to, to)

    with pytest.raises(OuterResponseError) as ei:
        run(go())
    assert ei.value.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID


# ---------------------------------------------------------------- ESData for three Targets


def test_esdata_content_instance_for_three_targets(world: World) -> None:
    payload = b'{"meter": 4711, "kWh": 12.5}'
    container = f"{world.path['ae1']}/esdata"

    async def go() -> None:
        async with MAFClient(world.maf.client_config(world.aei["ae1"])) as src:
            reg = await src.register_key(SUID.MAF_ESDATA_ENCRYPT, [world.aei[n] for n in ("ae2", "ae3", "ae4")],
                                         utc_now() + timedelta(hours=1))
            env = Source().seal(payload, serialization=1, recipients=[esdata_recipient(reg)],
                                content_type="application/json")
            with OneM2MClient(world.gw.url, world.aei["ae1"]) as c:
                cin = c.create(container, ResourceType.CONTENT_INSTANCE, {"m2m:cin": to_content_instance(env)})
            path = f"{container}/{cin.pc['m2m:cin']['rn']}"
            for n in ("ae2", "ae3", "ae4"):
                with OneM2MClient(world.gw.url, world.aei[n]) as c:
                    stored = c.retrieve(path).pc["m2m:cin"]
                assert payload.decode() not in json.dumps(stored)
                async with MAFClient(world.maf.client_config(world.aei[n])) as tc:
                    ks = MAFESDataKeySource(tc)
                    await ks.fetch(reg.key_id)
                    assert Target(ks).open(from_content_instance(stored)).payload == payload
            # the Source is not a Target of its own key
            with pytest.raises(MAFResponseError) as ei:
                await MAFESDataKeySource(src).fetch(reg.key_id)
            assert ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE

    run(go())
