"""ESCertKE between two real HTTP end-points (TS-0004 7.5.1.2.12 over the TS-0009 binding).

Each AE runs an :class:`~m2msec.net.endpoint.AEEndpoint` (h11, 127.0.0.1) whose
NotifyDispatcher hands ``securityInfoType`` 6 to a Terminating End-Point; the Initiating
End-Point sends Messages 1 and 3 as Notify requests with an AsyncOneM2MClient / OneM2MClient
directly to the other AE's endpoint (ACME does not forward ``m2m:seci`` Notifies; the
gateway path is not covered here).  The resulting key then protects an ESPrim exchange
over the same HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from _escertke_support import INI_ID, TER_ID, PKI, initiator_info, terminator_info  # type: ignore[import-not-found]

from m2msec.escertke import (
    ESCertKEError,
    InitiatingEndPoint,
    Reason,
    TerminatingEndPoint,
    run_initiator,
    run_initiator_sync,
    terminator_handler,
)
from m2msec.esprim import Originator, Receiver, ReceiverPolicy
from m2msec.esprim.originator import SessionReady
from m2msec.esprim.state import MemoryReceiverState
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient
from m2msec.net.endpoint import EndpointThread, NotifyDispatcher
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, SecurityInfo
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC


@pytest.fixture
def served(pki: PKI, clock):
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    receiver = Receiver(keys=ter.keys, state=MemoryReceiverState(clock=clock), clock=clock,
                        policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))

    async def on_esprim(req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        try:
            inner, ctx = receiver.open_request(seci.esprim_object, outer_from=req.fr)
        except Exception as exc:  # noqa: BLE001
            return receiver.error_response(exc, req)  # type: ignore[arg-type]
        reply = ResponsePrimitive(rsc=RSC.OK, rqi=inner.rqi, pc={"m2m:cin": {"con": f"hello {inner.fr}"}}, rvi="3")
        return receiver.esprim_response(req, receiver.protect_response(ctx, reply))

    ep = EndpointThread(NotifyDispatcher(on_escertke_message=terminator_handler(ter), on_esprim_object=on_esprim)).start()
    try:
        yield ter, receiver, ep
    finally:
        ep.stop()


def test_procedure_over_http_then_esprim(served, pki, clock):
    ter, receiver, ep = served
    ini = InitiatingEndPoint(pki.ini, clock=clock)

    async def main():
        async with AsyncOneM2MClient(ep.url, INI_ID) as client:
            res = await run_initiator(client, ini.initiate(terminator_info(pki, address=f"/id-in/{TER_ID}")))
            key = ini.keys.resolve(res.kid)
            originator = Originator(clock=clock)
            step = originator.start(key, receiver.e2e_sec_info())
            assert isinstance(step, SessionReady)
            inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{TER_ID}", fr=INI_ID, rqi="in-1", rvi="3")
            obj, pending = originator.protect_request(inner, step.session)
            outer = RequestPrimitive.notify_security_info(to=f"/id-in/{TER_ID}", fr=INI_ID, seci=SecurityInfo.esprim(obj))
            rsp = await client.send(outer)
            return res, originator.open_response(rsp.security_info().esprim_object, pending)

    res, reply = asyncio.run(main())
    assert ter.keys.for_peer(INI_ID).key == res.key and res.peer_id == TER_ID
    assert reply.pc == {"m2m:cin": {"con": f"hello {INI_ID}"}}


def test_sync_client_and_refusals_over_http(served, pki, clock):
    ter, _, ep = served
    ini = InitiatingEndPoint(pki.ini, clock=clock)
    with OneM2MClient(ep.url, INI_ID) as client:
        assert run_initiator_sync(client, ini.initiate(terminator_info(pki))).key == ter.keys.for_peer(INI_ID).key
    # unconfigured originator: 4103 in the Notify response
    with OneM2MClient(ep.url, "Cstranger") as client:
        with pytest.raises(ESCertKEError) as ei:
            run_initiator_sync(client, ini.initiate(terminator_info(pki)))
    assert ei.value.reason is Reason.PEER_REFUSED and ei.value.rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert "UNKNOWN_INITIATOR" in str(ei.value)
    # wrong Terminator identifier: the Initiator aborts after Message 2, nothing cached
    ini2 = InitiatingEndPoint(pki.ini, clock=clock)
    with OneM2MClient(ep.url, INI_ID) as client:
        with pytest.raises(ESCertKEError) as ei:
            run_initiator_sync(client, ini2.initiate(terminator_info(pki, identifier="https://m2m.example.com/id-in/Cx")))
    assert ei.value.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED and len(ini2.keys) == 0


def test_tampered_replayed_truncated_over_http(served, pki, clock):
    ter, _, ep = served
    ini = InitiatingEndPoint(pki.ini, clock=clock)
    proc = ini.initiate(terminator_info(pki))
    with OneM2MClient(ep.url, INI_ID) as client:
        def notify(msg: bytes) -> ResponsePrimitive:
            return client.notify(TER_ID, SecurityInfo.escertke(msg).to_content(), check=False)

        m1 = proc.message_1()
        r2 = notify(m1)
        assert r2.rsc == RSC.OK
        replay = notify(m1)
        assert replay.rsc == RSC.BAD_REQUEST and "REPLAYED" in replay.pc["m2m:dbg"]
        m3 = bytearray(proc.receive_message_2(r2.security_info().escertke_message))
        m3[-1] ^= 1
        r4 = notify(bytes(m3))
        assert r4.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED and "AUTHENTICATION_FAILED" in r4.pc["m2m:dbg"]
        # truncated base64 in eckm
        eckm = base64.b64encode(m1).decode()[:-3]
        r = client.notify(TER_ID, {"m2m:seci": {"sit": 6, "eckm": eckm}}, check=False)
        assert r.rsc == RSC.BAD_REQUEST
        # out of order: Message 3 without a procedure
        r = notify(bytes(m3))
        assert r.rsc == RSC.BAD_REQUEST and "NO_PROCEDURE" in r.pc["m2m:dbg"]
    assert len(ter.keys) == 0 and ter.unfinished() == {}
    assert json.dumps(r.pc)  # the error body is plain JSON
