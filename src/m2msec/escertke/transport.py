"""ESCertKE over oneM2M Notify (TS-0004 7.5.1.2.12): two request/response round trips.

Messages 1 and 3 travel in Notify requests, 2 and 4 in their responses, each as
``m2m:seci`` with securityInfoType 6 and the message in ``escertkeMessage`` (``eckm``,
base64).  The Initiating End-Point uses :func:`run_initiator` (or the blocking
:func:`run_initiator_sync`) with a :class:`~m2msec.net.client.AsyncOneM2MClient` /
:class:`~m2msec.net.client.OneM2MClient` pointed at the Terminating End-Point, directly or
through its CSE; the Terminating End-Point plugs :func:`terminator_handler` into a
:class:`~m2msec.net.endpoint.NotifyDispatcher` (``on_escertke_message=``).

A refusal is an error response whose RSC comes from :class:`~m2msec.escertke.ESCertKEError`
with the reason in ``m2m:dbg``; an Initiator receiving one raises ``ESCertKEError``
(reason PEER_REFUSED, the peer's RSC).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from m2msec.errors import M2MSecError, ParseError
from m2msec.escertke.errors import ESCertKEError, Reason
from m2msec.escertke.keys import ESCertKEResult
from m2msec.escertke.procedure import Initiator, TerminatingEndPoint
from m2msec.onem2m.enums import SecurityInfoType
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.security import SecurityInfo

__all__ = ["message_from_response", "notify_request", "run_initiator", "run_initiator_sync", "terminator_handler"]


def notify_request(initiator: Initiator, originator: str, message: bytes) -> RequestPrimitive:
    """The Notify request carrying ESCertKE Message 1 or 3 to the Terminating End-Point."""
    return RequestPrimitive.notify_security_info(to=initiator.target.notify_target, fr=originator,
                                                 seci=SecurityInfo.escertke(message))


def message_from_response(rsp: ResponsePrimitive, expected: int, initiator: Initiator | None = None) -> bytes:
    """The ESCertKE message in a Notify response (TS-0004 7.5.1.2.12 Originator steps)."""
    def fail(err: ESCertKEError) -> ESCertKEError:
        if initiator is not None:
            initiator._abort(err)
        return err

    if not rsp.is_success:
        dbg = rsp.pc.get("m2m:dbg") if isinstance(rsp.pc, dict) else None
        rsc = rsp.rsc if isinstance(rsp.rsc, RSC) else RSC.BAD_REQUEST
        raise fail(ESCertKEError(Reason.PEER_REFUSED, f"Message {expected - 1} answered {int(rsp.rsc)}"
                                 + (f": {str(dbg)[:300]}" if dbg else ""), rsc=rsc))
    try:
        seci = rsp.security_info()
    except ParseError as exc:
        raise fail(ESCertKEError(Reason.MALFORMED, f"response to Message {expected - 1}: {exc.args[0]}")) from exc
    if seci is None or seci.sit is not SecurityInfoType.ESCERTKE_MESSAGE or seci.escertke_message is None:
        raise fail(ESCertKEError(Reason.MALFORMED, f"response to Message {expected - 1} carries no ESCertKE message"))
    return seci.escertke_message


async def run_initiator(client: Any, initiator: Initiator) -> ESCertKEResult:
    """Run one procedure over an :class:`AsyncOneM2MClient` (its originator is the From)."""
    async def send(req: RequestPrimitive) -> ResponsePrimitive:
        try:
            return await client.send(req)
        except M2MSecError as exc:
            raise initiator._abort(ESCertKEError(Reason.TRANSPORT, exc.args[0], rsc=exc.rsc)) from exc

    m1 = initiator.message_1()
    m2 = message_from_response(await send(notify_request(initiator, client.originator, m1)), 2, initiator)
    m3 = initiator.receive_message_2(m2)
    m4 = message_from_response(await send(notify_request(initiator, client.originator, m3)), 4, initiator)
    return initiator.receive_message_4(m4)


def run_initiator_sync(client: Any, initiator: Initiator) -> ESCertKEResult:
    """:func:`run_initiator` over a blocking :class:`OneM2MClient`."""
    def send(req: RequestPrimitive) -> ResponsePrimitive:
        try:
            return client.send(req)
        except M2MSecError as exc:
            raise initiator._abort(ESCertKEError(Reason.TRANSPORT, exc.args[0], rsc=exc.rsc)) from exc

    m1 = initiator.message_1()
    m2 = message_from_response(send(notify_request(initiator, client.originator, m1)), 2, initiator)
    m3 = initiator.receive_message_2(m2)
    m4 = message_from_response(send(notify_request(initiator, client.originator, m3)), 4, initiator)
    return initiator.receive_message_4(m4)


def terminator_handler(
    terminator: TerminatingEndPoint,
) -> Callable[[RequestPrimitive, SecurityInfo], Awaitable[ResponsePrimitive]]:
    """``NotifyDispatcher(on_escertke_message=terminator_handler(t))``: Message 1/3 in,
    Message 2/4 (or an error response with the RSC and reason) out."""

    async def on_escertke_message(req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        assert seci.escertke_message is not None
        try:
            out = terminator.handle(req.fr, seci.escertke_message)
        except M2MSecError as exc:
            return ResponsePrimitive(rsc=exc.rsc, rqi=req.rqi, pc={"m2m:dbg": exc.args[0]},
                                     rvi=req.rvi or DEFAULT_RVI)
        return ResponsePrimitive.with_security_info(req, SecurityInfo.escertke(out))

    return on_escertke_message
