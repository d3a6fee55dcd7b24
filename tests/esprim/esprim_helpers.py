"""Shared helpers of the ESPrim tests (imported by module name: pytest puts this directory on sys.path)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from m2msec.esprim import Originator, OriginatorPolicy
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive, ResponseStatusCode

ORIGINATOR_ID = "CAE-orig"
RECEIVER_ID = "/id-recv/cse-recv"
KID = "00112233445566778899aabbccddeeff@prov.example.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def make_originator(clock: Any, **policy: Any) -> Originator:
    return Originator(clock=clock, policy=OriginatorPolicy(**policy))


def inner_request(fr: str | None = ORIGINATOR_ID, rqi: str = "inner-1", **kw: Any) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to="/id-recv/cse-recv/ae1/cnt", fr=fr, rqi=rqi, rvi="3", **kw)


def inner_response(req: RequestPrimitive, **kw: Any) -> ResponsePrimitive:
    return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, pc={"m2m:cin": {"con": "42"}}, rvi="3", **kw)


def as_sealed(got: RequestPrimitive) -> RequestPrimitive:
    """``got`` (an opened inner request) without the Request Expiration Timestamp the
    Originator added (R11), after checking that it is there and absolute."""
    assert got.rqet is not None and got.rqet.absolute is not None, "the Originator seals an absolute rqet"
    return replace(got, rqet=None)


def seen_count(receiver: Any) -> int:
    """How many accepted-object records the Receiver's state holds (memory or store)."""
    from m2msec.esprim import MemoryReceiverState, StoreReceiverState
    from m2msec.esprim.state import NS_SEEN

    st = receiver._state
    if isinstance(st, MemoryReceiverState):
        return len(st._seen)
    assert isinstance(st, StoreReceiverState)
    return len(st._store.list_records(NS_SEEN))
