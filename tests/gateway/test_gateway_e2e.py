"""ESPrim end to end through a real CSE (ACME) and the `m2msec gateway` process.

AE1 -> gateway -> AE2 (AE registered on ACME, poa looked up from ACME) with the shared and
the on-request receiverESPrimRandObject (TS-0003 8.4.2 B, TS-0004 7.5.1.2.11/13, 7.6.2);
AE1 -> gateway with the CSE as ESPrim Target (CRUD of a container); the gateway and ACME
see ciphertext only; the rejections of TS-0004 table 7.6.2-1 arrive end to end with their
RSC (4112, 4115, 4116), which ACME alone would turn into 5103; e2eSecInfo in object form
towards clients while ACME stores text; two gateway instances share one store.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from m2msec.esprim import (
    MemoryReceiverState,
    Originator,
    RandObjectNeeded,
    PairwiseKey,
    ProvisionedKeySource,
    Receiver,
    ReceiverPolicy,
)
from m2msec.esprim.transport import OuterResponseError, SecureOriginator, SecureReceiver
from m2msec.net.acme import AcmeCSE
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode, SecurityInfo
from m2msec.onem2m.primitives import new_request_id

from _gateway_support import GatewayProcess, write_config

pytestmark = pytest.mark.acme
RSC = ResponseStatusCode
T = TypeVar("T")
ACP_RETRIEVE_NOTIFY = 2 | 16
ACP_ALL = 63


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SecureAE:
    """An AE whose poa is an ESPrim Receiver endpoint in this process."""

    name: str
    aei: str
    path: str
    receiver: Receiver
    endpoint: EndpointThread
    seen: list[RequestPrimitive] = field(default_factory=list)
    sit3: int = 0


@dataclass
class World:
    acme: AcmeCSE
    gw: GatewayProcess
    trace: Path
    config: Path
    ae1: str
    ae1_path: str
    k12: bytes
    kcse: bytes
    kid12: str
    kidcse: str
    aes: dict[str, SecureAE]


def app_handler(seen: list[RequestPrimitive]) -> Callable[[RequestPrimitive], Coroutine[Any, Any, ResponsePrimitive]]:
    async def handle(inner: RequestPrimitive) -> ResponsePrimitive:
        seen.append(inner)
        if inner.op is Operation.RETRIEVE:
            return ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, pc={"m2m:cin": {"con": "AE2-SECRET-READING-4711"}}, rvi="3")
        if inner.op is Operation.NOTIFY:
            return ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, rvi="3")
        return ResponsePrimitive(rsc=RSC.OPERATION_NOT_ALLOWED, rqi=inner.rqi, rvi="3")

    return handle


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str) -> Iterator[World]:
    ae1 = f"Cgw-ae1-{tag}"
    k12, kcse = os.urandom(32), os.urandom(32)
    kid12, kidcse = f"{secrets.token_hex(16)}@mef.example.com", f"{secrets.token_hex(16)}@mef.example.com"
    config = write_config(
        gwdir / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name,
        keys=[{"kid": kidcse, "key_hex": kcse.hex(), "peer": ae1, "suid": 13}],
    )
    trace = gwdir / "trace.jsonl"
    gw = GatewayProcess(config, acme.url, trace=trace)
    threads: list[EndpointThread] = []
    aes: dict[str, SecureAE] = {}
    try:
        with OneM2MClient(gw.url, ae1) as c1:
            c1.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {"rn": "ae1", "api": "Nm2msec", "rr": False, "srv": ["3"]}})
        policies = {
            "shared": ReceiverPolicy(),
            "nosh": ReceiverPolicy(publish_shared=False),
            "short": ReceiverPolicy(shared_lifetime=timedelta(minutes=30), shared_renew_before=timedelta(minutes=10),
                                    unique_lifetime=timedelta(hours=3)),
        }
        for label, policy in policies.items():
            aei = f"Cgw-{label}-{tag}"
            receiver = Receiver(
                keys=ProvisionedKeySource([PairwiseKey(kid=kid12, key=k12, peer_id=ae1)], clock=utc_now),
                state=MemoryReceiverState(clock=utc_now), clock=utc_now, policy=policy,
            )
            seen: list[RequestPrimitive] = []
            secure = SecureReceiver(receiver, app_handler(seen))
            ae = SecureAE(label, aei, f"{acme.cse_base}/{label}", receiver, None, seen)  # type: ignore[arg-type]

            async def on_sit3(req: RequestPrimitive, seci: SecurityInfo, _s: SecureReceiver = secure,
                              _ae: SecureAE = ae) -> ResponsePrimitive:
                _ae.sit3 += 1
                return await _s.on_rand_object_request(req, seci)

            disp = secure.dispatcher()
            disp._seci[SecurityInfo.rand_object_request().sit] = on_sit3  # count type-3 requests
            ep = EndpointThread(disp).start()
            threads.append(ep)
            ae.endpoint = ep
            with OneM2MClient(gw.url, aei) as c:
                c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                    "rn": label, "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url],
                    "esi": secure.e2e_sec_info().to_json(),  # object form, the gateway stores text
                }})
                acp = c.create(ae.path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                    "rn": "acp", "pv": {"acr": [{"acor": [ae1], "acop": ACP_RETRIEVE_NOTIFY}, {"acor": [aei], "acop": ACP_ALL}]},
                    "pvs": {"acr": [{"acor": [aei], "acop": ACP_ALL}]},
                }})
                c.update(ae.path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
            aes[label] = ae
        yield World(acme, gw, trace, config, ae1, f"{acme.cse_base}/ae1", k12, kcse, kid12, kidcse, aes)
    finally:
        for t in threads:
            t.stop()
        gw.stop()


def secure_originator(world: World, client: AsyncOneM2MClient, *, kid: str | None = None, key: bytes | None = None,
                      peer: str = "/id-in", clock: Callable[[], datetime] = utc_now) -> SecureOriginator:
    pk = PairwiseKey(kid=kid or world.kid12, key=key or world.k12, peer_id=peer)
    return SecureOriginator(client, Originator(clock=clock), pk)


def inner(world: World, op: Operation, to: str, fr: str | None = None, **kw: Any) -> RequestPrimitive:
    return RequestPrimitive(op=op, to=to, fr=fr or world.ae1, rqi=new_request_id(), rvi="3", **kw)


# ---------------------------------------------------------------- e2eSecInfo mapping


def test_esi_is_an_object_through_the_gateway_and_text_in_acme(world: World) -> None:
    ae = world.aes["shared"]
    with OneM2MClient(world.gw.url, ae.aei) as via_gw, OneM2MClient(world.acme.url, ae.aei) as direct:
        esi_gw = via_gw.retrieve(ae.path).pc["m2m:ae"]["esi"]
        esi_acme = direct.retrieve(ae.path).pc["m2m:ae"]["esi"]
    assert isinstance(esi_gw, dict) and esi_gw["esf"] == [13, 23] and esi_gw["esro"]["esri"].startswith("s")
    assert isinstance(esi_acme, str) and json.loads(esi_acme) == esi_gw


def test_cse_base_retrieve_carries_the_cse_esi(world: World) -> None:
    with OneM2MClient(world.gw.url, world.ae1) as via_gw, OneM2MClient(world.acme.url, world.ae1) as direct:
        cb_gw = via_gw.retrieve(world.acme.cse_base).pc["m2m:cb"]
        cb_acme = direct.retrieve(world.acme.cse_base).pc["m2m:cb"]
    assert "esi" not in cb_acme
    assert cb_gw["esi"]["esf"] == [13, 23] and cb_gw["esi"]["esro"]["esri"].startswith("s")
    assert {k: v for k, v in cb_gw.items() if k != "esi"}.keys() == cb_acme.keys()


def test_invalid_esi_object_is_refused_by_the_gateway(world: World) -> None:
    with OneM2MClient(world.gw.url, world.ae1) as c:
        rsp = c.update(world.ae1_path, {"m2m:ae": {"esi": {"esf": ["not-a-suid"]}}}, check=False)
    assert rsp.rsc == RSC.BAD_REQUEST and "e2eSecInfo" in rsp.pc["m2m:dbg"]


# ---------------------------------------------------------------- AE -> AE


async def _ae_to_ae(world: World, label: str, clock: Callable[[], datetime] = utc_now) -> tuple[SecureOriginator, list[ResponsePrimitive]]:
    ae = world.aes[label]
    async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
        so = secure_originator(world, client, peer=ae.aei, clock=clock)
        r1 = await so.send(inner(world, Operation.RETRIEVE, ae.path + "/reading"), ae.path, ae.path)
        r2 = await so.send(inner(world, Operation.NOTIFY, ae.path, pc={"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "AE1-SECRET-COMMAND-0815"}}, "net": 1}, "sur": "/x"}}), ae.path, ae.path)
    return so, [r1, r2]


def test_ae_to_ae_with_shared_rand_object(world: World) -> None:
    ae = world.aes["shared"]
    before = ae.sit3
    so, (r1, r2) = run(_ae_to_ae(world, "shared"))
    assert r1.rsc == RSC.OK and r1.pc == {"m2m:cin": {"con": "AE2-SECRET-READING-4711"}}
    assert r2.rsc == RSC.OK
    assert so.rand_object_requests == 0 and ae.sit3 == before
    session = so.originator.session_for(world.kid12)
    assert session is not None and session.ref.rri.startswith("s")
    assert ae.seen[-2].fr == world.ae1 and ae.seen[-1].op is Operation.NOTIFY


def test_ae_to_ae_with_on_request_rand_object(world: World) -> None:
    ae = world.aes["nosh"]
    so, (r1, r2) = run(_ae_to_ae(world, "nosh"))
    assert r1.pc == {"m2m:cin": {"con": "AE2-SECRET-READING-4711"}} and r2.rsc == RSC.OK
    assert so.rand_object_requests == 1 and ae.sit3 == 1
    session = so.originator.session_for(world.kid12)
    assert session is not None and session.ref.rri.startswith("u")


def test_expired_shared_rand_object_takes_the_on_request_path(world: World) -> None:
    """The shared object in AE 'short' expires in 30 min; an Originator one hour ahead sees it
    expired in the esi it reads and requests a unique one (type 3 -> 4)."""
    ae = world.aes["short"]
    with OneM2MClient(world.gw.url, world.ae1) as c:
        esro = c.retrieve(ae.path).pc["m2m:ae"]["esi"]["esro"]
    ahead = lambda: utc_now() + timedelta(hours=1)  # noqa: E731
    so, (r1, _r2) = run(_ae_to_ae(world, "short", clock=ahead))
    assert r1.pc == {"m2m:cin": {"con": "AE2-SECRET-READING-4711"}}
    assert so.rand_object_requests == 1 and ae.sit3 == 1
    session = so.originator.session_for(world.kid12)
    assert session is not None and session.ref.rri.startswith("u") and session.ref.rri != esro["esri"]


def test_gateway_and_cse_see_only_ciphertext(world: World) -> None:
    run(_ae_to_ae(world, "shared"))
    text = world.trace.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    to_ae = [r for r in records if r["dir"] == "out" and world.aes["shared"].endpoint.url in r["where"]]
    assert to_ae and all('"m2m:seci"' in r["body"] for r in to_ae)
    to_acme = [r for r in records if r["dir"] == "out" and world.acme.url in r["where"]]
    assert to_acme and not any('"m2m:seci"' in r["body"] for r in to_acme)  # ACME never gets the Notify
    for secret in ("AE2-SECRET-READING-4711", "AE1-SECRET-COMMAND-0815"):
        assert secret not in text
    assert any("AE1-SECRET-COMMAND-0815" in json.dumps(r.pc) for r in world.aes["shared"].seen)


def test_impersonation_ae1_claims_ae2_identity(world: World) -> None:
    ae = world.aes["shared"]

    async def go() -> None:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, peer=ae.aei)
            await so.send(inner(world, Operation.RETRIEVE, ae.path, fr=ae.aei), ae.path, ae.path)

    with pytest.raises(OuterResponseError) as ei:
        run(go())
    assert ei.value.rsc == RSC.ESPRIM_IMPERSONATION_ERROR
    assert ei.value.response.rsc == RSC.ESPRIM_IMPERSONATION_ERROR


def test_unknown_kid_is_4112(world: World) -> None:
    ae = world.aes["shared"]

    async def go() -> None:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid="ffffffffffffffffffffffffffffffff@mef.example.com",
                                   key=os.urandom(32), peer=ae.aei)
            await so.send(inner(world, Operation.RETRIEVE, ae.path), ae.path, ae.path)

    with pytest.raises(OuterResponseError) as ei:
        run(go())
    assert ei.value.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID


def _tamper(obj: str) -> str:
    parts = obj.split(".")
    ct = parts[3]
    parts[3] = ("A" if ct[0] != "A" else "B") + ct[1:]
    return ".".join(parts)


@pytest.mark.parametrize("target", ["ae", "cse"])
def test_tampered_object_is_4115(world: World, target: str) -> None:
    ae = world.aes["shared"]
    to, key, kid = (ae.path, world.k12, world.kid12) if target == "ae" else (world.acme.cse_base, world.kcse, world.kidcse)

    async def go() -> ResponsePrimitive:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid=kid, key=key)
            session = await so.session(to, to)
            obj, _pending = so.originator.protect_request(inner(world, Operation.RETRIEVE, to), session)
            outer = RequestPrimitive.notify_security_info(to=to, fr=world.ae1, seci=SecurityInfo.esprim(_tamper(obj)))
            return await client.send(outer)

    rsp = run(go())
    assert rsp.rsc == RSC.ESPRIM_BAD_MAC
    assert isinstance(rsp.pc["m2m:dbg"], str)


# ---------------------------------------------------------------- the CSE as Target


def test_cse_as_target_container_crud(world: World) -> None:
    cb = world.acme.cse_base
    cnt = f"{world.ae1_path}/cnt-{secrets.token_hex(2)}"

    async def go() -> list[ResponsePrimitive]:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid=world.kidcse, key=world.kcse)
            out = [await so.send(inner(world, Operation.CREATE, world.ae1_path, ty=ResourceType.CONTAINER,
                                       pc={"m2m:cnt": {"rn": cnt.rsplit("/", 1)[1], "mni": 5}}), cb, cb)]
            out.append(await so.send(inner(world, Operation.RETRIEVE, cnt), cb, cb))
            out.append(await so.send(inner(world, Operation.UPDATE, cnt, pc={"m2m:cnt": {"lbl": ["secret-label"]}}), cb, cb))
            with OneM2MClient(world.acme.url, world.ae1) as direct:
                assert direct.retrieve(cnt).pc["m2m:cnt"]["lbl"] == ["secret-label"]
            out.append(await so.send(inner(world, Operation.DELETE, cnt), cb, cb))
            assert so.rand_object_requests == 0
            return out

    created, got, updated, deleted = run(go())
    assert created.rsc == RSC.CREATED and created.pc["m2m:cnt"]["rn"] == cnt.rsplit("/", 1)[1]
    assert got.rsc == RSC.OK and got.pc["m2m:cnt"]["mni"] == 5
    assert updated.rsc == RSC.UPDATED and updated.pc["m2m:cnt"]["lbl"] == ["secret-label"]
    assert deleted.rsc == RSC.DELETED
    with OneM2MClient(world.acme.url, world.ae1) as direct:
        assert direct.retrieve(cnt, check=False).rsc == RSC.NOT_FOUND


def test_cse_as_target_inner_errors_come_back_sealed(world: World) -> None:
    cb = world.acme.cse_base

    async def go() -> ResponsePrimitive:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid=world.kidcse, key=world.kcse)
            return await so.send(inner(world, Operation.RETRIEVE, f"{cb}/no-such-thing"), cb, cb)

    rsp = run(go())
    assert rsp.rsc == RSC.NOT_FOUND


def test_cse_as_target_with_on_request_rand_object(world: World) -> None:
    """Type-3 Notify to the <CSEBase>: the gateway answers type 4 with a unique object, and
    the session built on it carries a request."""
    cb = world.acme.cse_base

    async def go() -> tuple[ResponsePrimitive, ResponsePrimitive, SecureOriginator]:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid=world.kidcse, key=world.kcse)
            need = so.originator.start(so.key, None)
            assert isinstance(need, RandObjectNeeded)
            rsp = await client.send(need.request(to=cb, fr=world.ae1))
            so.originator.accept_rand_object(need, rsp)
            return rsp, await so.send(inner(world, Operation.RETRIEVE, world.ae1_path), cb, cb), so

    rsp, got, so = run(go())
    ero = rsp.security_info().esprim_rand_object  # type: ignore[union-attr]
    assert ero is not None and ero.rand_id.startswith("u")
    assert got.rsc == RSC.OK and so.rand_object_requests == 0
    session = so.originator.session_for(world.kidcse)
    assert session is not None and session.ref.rri == ero.rand_id


def test_cse_as_target_impersonation_is_4116(world: World) -> None:
    cb = world.acme.cse_base

    async def go() -> None:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid=world.kidcse, key=world.kcse)
            await so.send(inner(world, Operation.RETRIEVE, world.aes["shared"].path, fr=world.aes["shared"].aei), cb, cb)

    with pytest.raises(OuterResponseError) as ei:
        run(go())
    assert ei.value.rsc == RSC.ESPRIM_IMPERSONATION_ERROR


def test_cse_as_target_unknown_kid_is_4112(world: World) -> None:
    cb = world.acme.cse_base

    async def go() -> None:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            so = secure_originator(world, client, kid="00000000000000000000000000000000@nowhere.example", key=os.urandom(32))
            await so.send(inner(world, Operation.RETRIEVE, cb), cb, cb)

    with pytest.raises(OuterResponseError) as ei:
        run(go())
    assert ei.value.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID


# ---------------------------------------------------------------- gateway routing and proxying


def test_seci_notify_to_a_container_is_refused(world: World) -> None:
    cnt = f"{world.ae1_path}/plain-{secrets.token_hex(2)}"
    with OneM2MClient(world.gw.url, world.ae1) as c:
        c.create(world.ae1_path, ResourceType.CONTAINER, {"m2m:cnt": {"rn": cnt.rsplit("/", 1)[1]}})
        rsp = c.notify(cnt, SecurityInfo.rand_object_request().to_content(), check=False)
    assert rsp.rsc == RSC.BAD_REQUEST


def test_seci_notify_to_a_missing_ae_relays_the_cse_answer(world: World) -> None:
    with OneM2MClient(world.gw.url, world.ae1) as c:
        rsp = c.notify(f"{world.acme.cse_base}/nobody", SecurityInfo.rand_object_request().to_content(), check=False)
    assert rsp.rsc == RSC.NOT_FOUND


def test_seci_notify_to_an_unrouted_cse_is_5103(world: World) -> None:
    with OneM2MClient(world.gw.url, world.ae1) as c:
        rsp = c.notify("/id-elsewhere/cse/ae", SecurityInfo.rand_object_request().to_content(), check=False)
    assert rsp.rsc == RSC.TARGET_NOT_REACHABLE


def test_everything_else_is_proxied_unchanged(world: World) -> None:
    headers = {"X-M2M-Origin": world.ae1, "X-M2M-RI": "raw-1", "X-M2M-RVI": "3", "Accept": "application/json",
               "X-Custom": "kept"}
    for path in (f"/~{world.ae1_path}", f"/~{world.acme.cse_base}/missing", f"/~{world.ae1_path}?rcn=1"):
        a = httpx.get(world.gw.url + path, headers=headers)
        b = httpx.get(world.acme.url + path, headers=headers)
        assert (a.status_code, a.headers.get("x-m2m-rsc"), a.headers.get("x-m2m-ri")) == (
            b.status_code, b.headers.get("x-m2m-rsc"), b.headers.get("x-m2m-ri"))
        ja, jb = a.json(), b.json()
        for j in (ja, jb):
            j.get("m2m:ae", {}).pop("lt", None)
        assert ja == jb
    # a plain m2m:sgn Notify still goes through the CSE (its ACP applies): AE 'shared' grants AE1
    sgn = {"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "x"}}, "net": 1}, "sur": "/id-in/x"}}
    with OneM2MClient(world.gw.url, world.ae1) as c:
        rsp = c.notify(world.aes["shared"].path, sgn, check=False)
    assert rsp.rsc == RSC.OK  # ACME forwarded it; the endpoint acknowledges m2m:sgn


def test_second_gateway_instance_continues_the_session(world: World, gwdir: Path) -> None:
    """Scale-out: a session established through instance A is used through instance B,
    which only knows it from the shared store (no oro after the first response)."""
    cb = world.acme.cse_base
    gw2 = GatewayProcess(world.config, world.acme.url)
    try:
        async def go() -> list[ResponsePrimitive]:
            async with AsyncOneM2MClient(world.gw.url, world.ae1) as ca, AsyncOneM2MClient(gw2.url, world.ae1) as cb2:
                so = secure_originator(world, ca, kid=world.kidcse, key=world.kcse)
                r1 = await so.send(inner(world, Operation.RETRIEVE, world.ae1_path), cb, cb)
                so.client = cb2
                r2 = await so.send(inner(world, Operation.RETRIEVE, world.ae1_path), cb, cb)
                return [r1, r2]

        r1, r2 = run(go())
        assert r1.rsc == r2.rsc == RSC.OK and r2.pc["m2m:ae"]["aei"] == world.ae1
    finally:
        assert gw2.stop() == 0


@pytest.mark.postgres
def test_two_gateway_instances_on_postgresql(world: World, pg_url: str) -> None:
    """Scale-out with `--store postgresql://...`: sit-3 answered by instance A, the session's
    requests alternate between A and B."""
    cb = world.acme.cse_base
    a = GatewayProcess(world.config, world.acme.url, store=pg_url)
    b = GatewayProcess(world.config, world.acme.url, store=pg_url)
    try:
        async def go() -> list[ResponsePrimitive]:
            async with AsyncOneM2MClient(a.url, world.ae1) as ca, AsyncOneM2MClient(b.url, world.ae1) as cb2:
                so = secure_originator(world, ca, kid=world.kidcse, key=world.kcse)
                need = so.originator.start(so.key, None)
                assert isinstance(need, RandObjectNeeded)
                so.originator.accept_rand_object(need, await ca.send(need.request(to=cb, fr=world.ae1)))
                out = []
                for client in (cb2, ca, cb2):
                    so.client = client
                    out.append(await so.send(inner(world, Operation.RETRIEVE, world.ae1_path), cb, cb))
                return out

        assert [r.rsc for r in run(go())] == [RSC.OK] * 3
    finally:
        a.stop()
        b.stop()


def test_unreachable_poa_is_5103_and_not_cached(world: World) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    aei = f"Cgw-dead-{secrets.token_hex(2)}"
    path = f"{world.acme.cse_base}/dead-{aei[-4:]}"
    with OneM2MClient(world.gw.url, aei) as c:
        c.create(world.acme.cse_base, ResourceType.AE, {"m2m:ae": {
            "rn": path.rsplit("/", 1)[1], "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [f"http://127.0.0.1:{dead}"]}})
        for _ in range(2):
            rsp = c.notify(path, SecurityInfo.rand_object_request().to_content(), check=False)
            assert rsp.rsc == RSC.TARGET_NOT_REACHABLE
