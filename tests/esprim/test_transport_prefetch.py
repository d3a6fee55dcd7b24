"""SecureReceiver's ``prefetch`` hook (keys learnt on first sight, TS-0003 C.6a): awaited with the
``kid`` of a sit-5 ESPrim Object before ``Receiver.open_request``; its M2MSecError is the outer
error; an unparsable object never reaches it."""

from __future__ import annotations

import asyncio
from typing import Any

from m2msec.esprim import MemoryReceiverState, PairwiseKey, ProvisionedKeySource, Receiver, SessionReady
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.transport import SecureReceiver
from m2msec.onem2m import RequestPrimitive, ResponsePrimitive, ResponseStatusCode, SecurityInfo

from esprim_helpers import KID, ORIGINATOR_ID, RECEIVER_ID, FakeClock, as_sealed, inner_request, inner_response, make_originator

RSC = ResponseStatusCode


def _setup(clock: FakeClock, key: bytes, prefetch: Any) -> tuple[Any, SecureReceiver, ProvisionedKeySource, list[Any]]:
    keys = ProvisionedKeySource([], clock=clock)
    receiver = Receiver(keys=keys, state=MemoryReceiverState(clock=clock), clock=clock)
    seen: list[RequestPrimitive] = []

    async def app(req: RequestPrimitive) -> ResponsePrimitive:
        seen.append(req)
        return inner_response(req)

    secure = SecureReceiver(receiver, app, prefetch=prefetch)
    originator = make_originator(clock)
    step = originator.start(PairwiseKey(kid=KID, key=key, peer_id=RECEIVER_ID), receiver.e2e_sec_info())
    assert isinstance(step, SessionReady)
    return (originator, step.session), secure, keys, seen


def _outer(obj: str) -> tuple[RequestPrimitive, SecurityInfo]:
    outer = RequestPrimitive.notify_security_info(to=RECEIVER_ID, fr=ORIGINATOR_ID, seci=SecurityInfo.esprim(obj))
    seci = outer.security_info()
    assert seci is not None
    return outer, seci


def test_prefetch_stores_the_key_before_open_request() -> None:
    clock, key = FakeClock(), bytes(range(32))
    calls: list[str] = []
    holder: dict[str, ProvisionedKeySource] = {}

    async def prefetch(kid: str) -> None:
        calls.append(kid)
        holder["keys"].add(PairwiseKey(kid=kid, key=key, peer_id=ORIGINATOR_ID))

    (originator, session), secure, keys, seen = _setup(clock, key, prefetch)
    holder["keys"] = keys
    req = inner_request()
    obj, pending = originator.protect_request(req, session)
    rsp = asyncio.run(secure.on_esprim_object(*_outer(obj)))
    assert rsp.rsc == RSC.OK and calls == [KID] and [as_sealed(r) for r in seen] == [req]
    got = originator.open_response(rsp.security_info(clock=clock).esprim_object, pending)
    assert got == inner_response(req)


def test_without_prefetch_an_unknown_kid_is_4112() -> None:
    clock, key = FakeClock(), bytes(32)
    (originator, session), secure, _keys, seen = _setup(clock, key, None)
    obj, _ = originator.protect_request(inner_request(), session)
    rsp = asyncio.run(secure.on_esprim_object(*_outer(obj)))
    assert rsp.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID and seen == []


def test_prefetch_refusal_is_the_outer_error() -> None:
    clock, key = FakeClock(), bytes(32)

    async def prefetch(kid: str) -> None:
        raise UnknownKeyID(f"MAF refused {kid}")

    (originator, session), secure, _keys, seen = _setup(clock, key, prefetch)
    obj, _ = originator.protect_request(inner_request(), session)
    outer, seci = _outer(obj)
    rsp = asyncio.run(secure.on_esprim_object(outer, seci))
    assert rsp.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID and rsp.rqi == outer.rqi and seen == []
    assert "MAF refused" in rsp.pc["m2m:dbg"]


def test_unparsable_object_does_not_reach_prefetch() -> None:
    clock, key = FakeClock(), bytes(32)
    calls: list[str] = []

    async def prefetch(kid: str) -> None:
        calls.append(kid)

    _o, secure, _keys, seen = _setup(clock, key, prefetch)
    rsp = asyncio.run(secure.on_esprim_object(*_outer("eyJhbGciOiJkaXIifQ..AAAA.AAAA.AAAA")))
    assert rsp.rsc == RSC.BAD_REQUEST and calls == [] and seen == []
