"""ESPrim across two CSEs: AE1 on an MN-CSE (ACME, registered to the IN-CSE) talks to AE2 on
the IN-CSE.  Each CSE has its gateway; the MN's gateway routes the ``m2m:seci`` Notify for
``/id-in/...`` to the IN's gateway (``[[routes]]``), which forwards it to AE2's poa.  The
Receiver's e2eSecInfo is read through the MN-CSE, which retargets the RETRIEVE along its
``<remoteCSE>``."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from m2msec.esprim import MemoryReceiverState, Originator, PairwiseKey, ProvisionedKeySource, Receiver
from m2msec.esprim.transport import SecureOriginator, SecureReceiver
from m2msec.net.acme import AcmeCSE, acme_available
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponsePrimitive, ResponseStatusCode
from m2msec.onem2m.primitives import new_request_id
from m2msec.store import KeyEncryptionKey

from _gateway_support import GatewayProcess, write_config

pytestmark = pytest.mark.acme
RSC = ResponseStatusCode


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Two:
    gw_in: GatewayProcess
    gw_mn: GatewayProcess
    ae1: str
    ae2: str
    ae2_path: str
    key: PairwiseKey
    trace_in: Path
    seen: list[RequestPrimitive]


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCSE]:
    """The IN-CSE; ACME accepts a CSE registration only from a listed originator."""
    if not acme_available():
        pytest.skip("acmecse is not installed")
    cse = AcmeCSE(tmp_path_factory.mktemp("acme-in"), allowed_csr_originators=("id-mn",))
    cse.start()
    try:
        yield cse
    finally:
        cse.stop()


@pytest.fixture(scope="module")
def two(acme: AcmeCSE, tmp_path_factory: pytest.TempPathFactory, tag: str) -> Iterator[Two]:
    mn = AcmeCSE(tmp_path_factory.mktemp("acme-mn"), cse_id="id-mn", cse_name="cse-mn", cse_type="MN", registrar=acme)
    mn.start()
    d_in, d_mn = tmp_path_factory.mktemp("gw-in"), tmp_path_factory.mktemp("gw-mn")
    for d in (d_in, d_mn):
        KeyEncryptionKey.generate().write_file(d / "gateway.kek")
    gw_in = gw_mn = None
    ep = None
    try:
        gw_in = GatewayProcess(write_config(d_in / "gateway.toml", cse_id="id-in", cse_name="cse-in", keys=[]),
                               acme.url, trace=d_in / "trace.jsonl")
        gw_mn = GatewayProcess(write_config(d_mn / "gateway.toml", cse_id="id-mn", cse_name="cse-mn", keys=[],
                                            routes={"/id-in": gw_in.url}), mn.url, trace=d_mn / "trace.jsonl")
        ae1, ae2 = f"Cmc-ae1-{tag}", f"Cmc-ae2-{tag}"
        k = os.urandom(32)
        kid = f"{secrets.token_hex(16)}@mef.example.com"
        seen: list[RequestPrimitive] = []

        async def handler(req: RequestPrimitive) -> ResponsePrimitive:
            seen.append(req)
            return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, pc={"m2m:cin": {"con": "FAR-AWAY-SECRET"}}, rvi="3")

        receiver = Receiver(keys=ProvisionedKeySource([PairwiseKey(kid=kid, key=k, peer_id=ae1)], clock=utc_now),
                            state=MemoryReceiverState(clock=utc_now), clock=utc_now)
        secure = SecureReceiver(receiver, handler)
        ep = EndpointThread(secure.dispatcher()).start()
        with OneM2MClient(gw_mn.url, ae1) as c1:
            c1.create(mn.cse_base, ResourceType.AE, {"m2m:ae": {"rn": "ae1", "api": "Nm2msec", "rr": False, "srv": ["3"]}})
        ae2_path = f"{acme.cse_base}/mc-ae2"
        with OneM2MClient(gw_in.url, ae2) as c2:
            c2.create(acme.cse_base, ResourceType.AE, {"m2m:ae": {
                "rn": "mc-ae2", "api": "Nm2msec", "rr": True, "srv": ["3"], "poa": [ep.url],
                "esi": secure.e2e_sec_info().to_json()}})
            acp = c2.create(ae2_path, ResourceType.ACCESS_CONTROL_POLICY, {"m2m:acp": {
                "rn": "acp", "pv": {"acr": [{"acor": ["all"], "acop": 2 | 16}, {"acor": [ae2], "acop": 63}]},
                "pvs": {"acr": [{"acor": [ae2], "acop": 63}]}}})
            c2.update(ae2_path, {"m2m:ae": {"acpi": [acp.pc["m2m:acp"]["ri"]]}})
        yield Two(gw_in, gw_mn, ae1, ae2, ae2_path, PairwiseKey(kid=kid, key=k, peer_id=ae2), d_in / "trace.jsonl", seen)
    finally:
        if ep is not None:
            ep.stop()
        for g in (gw_mn, gw_in):
            if g is not None:
                g.stop()
        mn.stop()


def test_secured_retrieve_from_mn_to_in_via_both_gateways(two: Two) -> None:
    async def go() -> tuple[ResponsePrimitive, SecureOriginator]:
        async with AsyncOneM2MClient(two.gw_mn.url, two.ae1) as client:
            so = SecureOriginator(client, Originator(clock=utc_now), two.key)
            req = RequestPrimitive(op=Operation.RETRIEVE, to=two.ae2_path + "/x", fr=two.ae1, rqi=new_request_id(), rvi="3")
            return await so.send(req, two.ae2_path, two.ae2_path), so

    rsp, so = asyncio.run(go())
    assert rsp.rsc == RSC.OK and rsp.pc == {"m2m:cin": {"con": "FAR-AWAY-SECRET"}}
    assert two.seen and two.seen[-1].fr == two.ae1
    assert so.rand_object_requests == 0  # the shared object came through the MN-CSE's retargeting
    trace = two.trace_in.read_text(encoding="utf-8")
    bodies = [json.loads(line)["body"] for line in trace.splitlines()]
    assert any('"m2m:seci"' in b for b in bodies) and "FAR-AWAY-SECRET" not in trace
