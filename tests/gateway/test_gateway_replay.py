"""Replay of an ESPrim request through the real `m2msec gateway` process and a real ACME CSE:
the same outer Notify (same body, same headers) sent twice is answered once; the second gets
4105 CONFLICT (HTTP 409) and the CSE (or the AE behind the gateway) sees one request; a replay
sent to a second gateway instance on the same store is refused as well (m2msec replay
detection beyond TS-0003 8.4.1; TS-0004 7.6.2 for the outer Notify).  And the late delivery of
a withheld object: once the inner request's sealed Request Expiration Timestamp has passed,
the gateway (or the AE behind it) answers 4008 REQUEST_TIMEOUT and nothing is executed
(profile R11; TS-0004 7.3.2)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from _gateway_support import GatewayProcess, write_config

from m2msec.esprim import (
    MemoryReceiverState,
    Originator,
    OriginatorPolicy,
    PairwiseKey,
    ProvisionedKeySource,
    Receiver,
)
from m2msec.esprim.transport import SecureOriginator, SecureReceiver
from m2msec.net.acme import AcmeCSE
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread
from m2msec.net.http_binding import request_to_http
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResourceType,
    ResponsePrimitive,
    ResponseStatusCode,
    SecurityInfo,
)
from m2msec.onem2m.primitives import new_request_id

pytestmark = pytest.mark.acme
RSC = ResponseStatusCode
T = TypeVar("T")
ACP_RETRIEVE_NOTIFY = 2 | 16
ACP_ALL = 63


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class World:
    acme: AcmeCSE
    gw: GatewayProcess
    config: Path
    trace: Path
    ae1: str
    ae1_path: str
    kcse: bytes
    kidcse: str
    k12: bytes
    kid12: str
    ae2: str
    ae2_path: str
    ae2_seen: list[RequestPrimitive]


@pytest.fixture(scope="module")
def world(acme: AcmeCSE, gwdir: Path, tag: str) -> Iterator[World]:
    ae1, ae2 = f"Crp-ae1-{tag}", f"Crp-ae2-{tag}"
    kcse, k12 = os.urandom(32), os.urandom(32)
    kidcse, kid12 = f"{secrets.token_hex(16)}@mef.example.com", f"{secrets.token_hex(16)}@mef.example.com"
    config = write_config(gwdir / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name,
                          keys=[{"kid": kidcse, "key_hex": kcse.hex(), "peer": ae1, "suid": 13}])
    trace = gwdir / "trace.jsonl"
    gw = GatewayProcess(config, acme.url, trace=trace)
    ep: EndpointThread | None = None
    try:
        with OneM2MClient(gw.url, ae1) as c1:
            c1.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {"rn": "rp-ae1", "api": "Nm2msec", "rr": False, "srv": ["3"]}})
        seen: list[RequestPrimitive] = []

        async def handle(inner: RequestPrimitive) -> ResponsePrimitive:
            seen.append(inner)
            return ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, rvi="3")

        receiver = Receiver(keys=ProvisionedKeySource([PairwiseKey(kid=kid12, key=k12, peer_id=ae1)], clock=utc_now),
                            state=MemoryReceiverState(clock=utc_now), clock=utc_now)
        secure = SecureReceiver(receiver, handle)
        ep = EndpointThread(secure.dispatcher()).start()
        ae2_path = f"{acme.cse_base}/rp-ae2"
        with OneM2MClient(gw.url, ae2) as c:
            c.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": "rp-ae2", "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url],
                "esi": secure.e2e_sec_info().to_json()}})
            acp = c.create(ae2_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": [ae1], "acop": ACP_RETRIEVE_NOTIFY}, {"acor": [ae2], "acop": ACP_ALL}]},
                "pvs": {"acr": [{"acor": [ae2], "acop": ACP_ALL}]}}})
            c.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        yield World(acme, gw, config, trace, ae1, f"{acme.cse_base}/rp-ae1", kcse, kidcse, k12, kid12, ae2, ae2_path, seen)
    finally:
        if ep is not None:
            ep.stop()
        gw.stop()


def _container(world: World) -> str:
    name = f"cnt-{secrets.token_hex(3)}"
    with OneM2MClient(world.gw.url, world.ae1) as c:
        c.create(world.ae1_path, ResourceType.CONTAINER, {"m2m:cnt": {"rn": name}})
    return f"{world.ae1_path}/{name}"


async def _protected_notify(world: World, client: AsyncOneM2MClient, to: str, inner: RequestPrimitive, *,
                            kid: str, key: bytes, peer: str, policy: OriginatorPolicy | None = None) -> RequestPrimitive:
    """A session is set up (e2eSecInfo read through the gateway); returns the outer Notify."""
    so = SecureOriginator(client, Originator(clock=utc_now, policy=policy), PairwiseKey(kid=kid, key=key, peer_id=peer))
    session = await so.session(to, to)
    obj, _pending = so.originator.protect_request(inner, session)
    return RequestPrimitive.notify_security_info(to=to, fr=world.ae1, seci=SecurityInfo.esprim(obj))


async def _send_twice(urls: tuple[str, str], outer: RequestPrimitive) -> tuple[httpx.Response, httpx.Response]:
    """POST the outer Notify, serialized once, to ``urls[0]`` and then the same octets
    (method, target, headers, body) to ``urls[1]``."""
    method, target, headers, body = request_to_http(outer)
    async with httpx.AsyncClient() as http:
        first = await http.request(method, urls[0] + target, headers=headers, content=body)
        second = await http.request(method, urls[1] + target, headers=headers, content=body)
    return first, second


def _ri_count(trace: Path, where: str, rqi: str) -> int:
    n = 0
    for line in trace.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["dir"] == "out" and where in r["where"] and ["X-M2M-RI", rqi] in [[k, v] for k, v in r["headers"]]:
            n += 1
    return n


def _cni(world: World, cnt: str) -> int:
    with OneM2MClient(world.acme.url, world.ae1) as direct:
        return int(direct.retrieve(cnt).pc["m2m:cnt"]["cni"])


def test_replayed_notify_to_the_cse_is_4105_and_the_cse_sees_one_request(world: World) -> None:
    cb = world.acme.cse_base
    cnt = _container(world)
    inner = RequestPrimitive(op=Operation.CREATE, to=cnt, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             ty=ResourceType.CONTENT_INSTANCE, pc={"m2m:cin": {"con": "switch-on-once"}})

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            outer = await _protected_notify(world, client, cb, inner, kid=world.kidcse, key=world.kcse, peer=cb)
        return await _send_twice((world.gw.url, world.gw.url), outer)

    first, second = run(go())
    assert first.status_code == 200 and first.headers["x-m2m-rsc"] == "2000" and "m2m:seci" in first.json()
    assert second.status_code == 409 and second.headers["x-m2m-rsc"] == str(int(RSC.CONFLICT))
    assert "already accepted" in second.json()["m2m:dbg"]
    assert second.headers["x-m2m-ri"] == first.headers["x-m2m-ri"]
    assert _cni(world, cnt) == 1
    assert _ri_count(world.trace, world.acme.url, inner.rqi) == 1


def test_replayed_notify_to_an_ae_is_relayed_as_4105_and_the_ae_handles_one(world: World) -> None:
    inner = RequestPrimitive(op=Operation.NOTIFY, to=world.ae2_path, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             pc={"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "open-door"}}, "net": 1}, "sur": "/x"}})

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            outer = await _protected_notify(world, client, world.ae2_path, inner, kid=world.kid12, key=world.k12,
                                            peer=world.ae2)
        return await _send_twice((world.gw.url, world.gw.url), outer)

    before = len(world.ae2_seen)
    first, second = run(go())
    assert first.status_code == 200 and first.headers["x-m2m-rsc"] == "2000"
    assert second.status_code == 409 and second.headers["x-m2m-rsc"] == "4105"  # the AE's answer, relayed unchanged
    assert [r.rqi for r in world.ae2_seen[before:]] == [inner.rqi]


def test_replay_through_a_second_gateway_instance_is_4105(world: World) -> None:
    """Instance B shares A's store (SQLite file): the object A accepted is refused by B."""
    cb = world.acme.cse_base
    cnt = _container(world)
    inner = RequestPrimitive(op=Operation.CREATE, to=cnt, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             ty=ResourceType.CONTENT_INSTANCE, pc={"m2m:cin": {"con": "pay-once"}})
    gw2 = GatewayProcess(world.config, world.acme.url)
    try:
        async def go() -> tuple[httpx.Response, httpx.Response]:
            async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
                outer = await _protected_notify(world, client, cb, inner, kid=world.kidcse, key=world.kcse, peer=cb)
            return await _send_twice((world.gw.url, gw2.url), outer)

        first, second = run(go())
        assert first.headers["x-m2m-rsc"] == "2000"
        assert second.status_code == 409 and second.headers["x-m2m-rsc"] == "4105"
        assert _cni(world, cnt) == 1
    finally:
        assert gw2.stop() == 0


async def _send_late(world: World, to: str, inner: RequestPrimitive, **kw: Any) -> httpx.Response:
    """Seal ``inner`` with a 1 s request lifetime, withhold the outer Notify until the sealed
    rqet has passed (as a Transit CSE could), then deliver it; returns the answer."""
    async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
        outer = await _protected_notify(world, client, to, inner, policy=OriginatorPolicy(
            request_lifetime=timedelta(seconds=1)), **kw)
    method, target, headers, body = request_to_http(outer)
    rqet = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)  # >= the sealed now + 1 s, rounded up
    time.sleep(max(0.0, (rqet - datetime.now(UTC)).total_seconds()) + 0.3)
    async with httpx.AsyncClient() as http:
        return await http.request(method, world.gw.url + target, headers=headers, content=body)


def test_withheld_notify_to_the_cse_is_4008_after_its_rqet_and_the_cse_sees_nothing(world: World) -> None:
    cb = world.acme.cse_base
    cnt = _container(world)
    inner = RequestPrimitive(op=Operation.CREATE, to=cnt, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             ty=ResourceType.CONTENT_INSTANCE, pc={"m2m:cin": {"con": "unlock-at-noon"}})
    late = run(_send_late(world, cb, inner, kid=world.kidcse, key=world.kcse, peer=cb))
    assert late.status_code == 504 and late.headers["x-m2m-rsc"] == str(int(RSC.REQUEST_TIMEOUT))
    assert "Request Expiration Timestamp" in late.json()["m2m:dbg"]
    assert _cni(world, cnt) == 0
    assert _ri_count(world.trace, world.acme.url, inner.rqi) == 0


def test_notify_delivered_in_time_reaches_the_cse_with_its_rqet(world: World) -> None:
    """The sealed rqet travels on to ACME (X-M2M-RET), which accepts it."""
    cb = world.acme.cse_base
    cnt = _container(world)
    inner = RequestPrimitive(op=Operation.CREATE, to=cnt, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             ty=ResourceType.CONTENT_INSTANCE, pc={"m2m:cin": {"con": "in-time"}})

    async def go() -> httpx.Response:
        async with AsyncOneM2MClient(world.gw.url, world.ae1) as client:
            outer = await _protected_notify(world, client, cb, inner, kid=world.kidcse, key=world.kcse, peer=cb)
        method, target, headers, body = request_to_http(outer)
        async with httpx.AsyncClient() as http:
            return await http.request(method, world.gw.url + target, headers=headers, content=body)

    rsp = run(go())
    assert rsp.status_code == 200 and rsp.headers["x-m2m-rsc"] == "2000"
    assert _cni(world, cnt) == 1
    sent = [json.loads(line) for line in world.trace.read_text(encoding="utf-8").splitlines()]
    to_cse = [r for r in sent if r["dir"] == "out" and world.acme.url in r["where"]
              and ["X-M2M-RI", inner.rqi] in [[k, v] for k, v in r["headers"]]]
    assert len(to_cse) == 1 and any(k == "X-M2M-RET" for k, _ in to_cse[0]["headers"])


def test_withheld_notify_to_an_ae_is_relayed_as_4008_and_the_ae_handles_nothing(world: World) -> None:
    inner = RequestPrimitive(op=Operation.NOTIFY, to=world.ae2_path, fr=world.ae1, rqi=new_request_id(), rvi="3",
                             pc={"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "late"}}, "net": 1}, "sur": "/x"}})
    before = len(world.ae2_seen)
    late = run(_send_late(world, world.ae2_path, inner, kid=world.kid12, key=world.k12, peer=world.ae2))
    assert late.status_code == 504 and late.headers["x-m2m-rsc"] == "4008"  # the AE's answer, relayed
    assert world.ae2_seen[before:] == []
