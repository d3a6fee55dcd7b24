"""ESPrim over oneM2M HTTP: the I/O around the sans-I/O Originator and Receiver.

TS-0003 8.4.2 (phases B and C), TS-0004 7.5.1.2.11 (securityInfoType 3 request / 4
response), 7.5.1.2.13 and 7.6.2 (the outer Notify carrying the ESPrim Object), TS-0004
table 7.6.2-1 (outer error responses), TS-0009 (HTTP binding, via :mod:`m2msec.net`).

Originator side -- "send this request to that AE/CSE, secured"::

    async with AsyncOneM2MClient(gateway_url, "Cae1") as client:
        secure = SecureOriginator(client, Originator(clock=utc_now), key)
        rsp = await secure.send(inner_request, receiver="/id-in/cse-in/ae2",
                                receiver_resource="/id-in/cse-in/ae2")

``send`` reads the Receiver's ``e2eSecInfo`` (``esi``) from ``receiver_resource`` (the
object form of TS-0004 6.3.5.52 or the JSON text that ACME stores), establishes a session
from the shared receiverESPrimRandObject or, when there is none or it is no longer usable,
with a type-3 Notify and its type-4 response, sends the outer Notify with ``m2m:seci``
(sit 5) and returns the verified inner response.  On 4112/4113/4114 from the Receiver it
re-establishes once (:meth:`Originator.handle_error`); other outer errors raise
:class:`OuterResponseError` carrying the outer RSC.

Receiver side -- "serve these handlers, secured"::

    secure = SecureReceiver(receiver, app_handler)        # async (inner req) -> inner rsp
    async with AEEndpoint(secure.dispatcher()) as ep: ...

:class:`SecureReceiver` answers sit 3 with sit 4 (a unique rand object), opens sit 5
(decrypt, impersonation check), calls the application handler with the inner request,
and seals its response (C.8).  Rejections are outer responses whose RSC is the row of
table 7.6.2-1 with ``{"m2m:dbg": reason}``; the endpoint echoes X-M2M-RI.

Keys fetched on first sight (the MAF option, C.6a.1-6): the sans-I/O Receiver resolves
pairwiseESPrimKeyIDs synchronously, so ``SecureReceiver(..., prefetch=keys.prefetch)`` takes an
async hook that is awaited with the ``kid`` of every sit-5 ESPrim Object
(:meth:`Receiver.peek`) before :meth:`Receiver.open_request`; the hook stores the key where the
Receiver's key source finds it (e.g. :meth:`m2msec.maf.keysources.MAFESPrimKeySource.prefetch`).
An :class:`~m2msec.errors.M2MSecError` from the hook becomes the outer error response (a
refused MAF Key Retrieval is 4112, unknown pairwiseESPrimKeyID); an object whose header does not
parse is left to ``open_request`` to reject.

m2msec decisions:

* ``esi`` is read from a RETRIEVE of ``receiver_resource`` by the Originator itself and
  cached until its shared rand object is no longer usable; a NEW_SESSION advice drops the
  cache so the retry sees the Receiver's current ``esi``;
* one retry at most after 4112/4113/4114 (4113 resends the full ``oro``; 4112/4114 start a
  new session); no retry for any other RSC;
* an exception from the application handler becomes an *inner* error response (its RSC
  for an :class:`~m2msec.errors.M2MSecError`, otherwise 5000 without detail), sealed like
  any response: the transit CSEs learn nothing from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim.errors import ESPrimError, ESPrimNotSupported, ESPrimParseError
from m2msec.esprim.keysource import PairwiseKey
from m2msec.esprim.originator import ErrorAdvice, Originator, OriginatorSession, RandObjectNeeded
from m2msec.esprim.receiver import Receiver
from m2msec.net.endpoint import NotifyDispatcher
from m2msec.onem2m.enums import Operation, SecurityInfoType
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive, new_request_id
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.security import E2ESecInfo, SecurityInfo

__all__ = [
    "InnerHandler",
    "OuterResponseError",
    "SecureOriginator",
    "SecureReceiver",
    "esi_from_resource",
]

log = logging.getLogger(__name__)

InnerHandler = Callable[[RequestPrimitive], Awaitable[ResponsePrimitive]]

_ESI_ROOTS = ("m2m:ae", "m2m:csr", "m2m:cb")


class OuterResponseError(ESPrimError):
    """The Receiver (or a transit CSE) answered the outer Notify with an error RSC."""

    def __init__(self, message: str, response: ResponsePrimitive) -> None:
        rsc = response.rsc if isinstance(response.rsc, RSC) else (
            RSC.BAD_REQUEST if 4000 <= int(response.rsc) < 5000 else RSC.INTERNAL_SERVER_ERROR
        )
        super().__init__(message, rsc=rsc)
        self.response = response


def esi_from_resource(pc: object, *, clock: Any = None) -> E2ESecInfo | None:
    """The ``esi`` of a retrieved ``<AE>``/``<remoteCSE>``/``<CSEBase>`` Content, in either
    the standard object form or the JSON-text form (ACME types ``esi`` as a string)."""
    if not isinstance(pc, Mapping) or len(pc) != 1:
        raise ESPrimParseError("e2eSecInfo: the retrieved Content is not a single AE/remoteCSE/CSEBase")
    (root,) = pc.keys()
    res = pc[root]
    if root not in _ESI_ROOTS or not isinstance(res, Mapping):
        raise ESPrimParseError(f"e2eSecInfo: {root!r} does not carry e2eSecInfo")
    raw = res.get("esi")
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise ESPrimParseError("e2eSecInfo: the esi string is not JSON") from None
    try:
        return E2ESecInfo.from_json(raw, clock=clock, path=f"pc.{root}.esi")
    except (ParseError, ValueError) as exc:
        raise ESPrimParseError(f"e2eSecInfo does not parse: {exc}") from None


async def _call(client: Any, req: RequestPrimitive) -> ResponsePrimitive:
    """Send with an AsyncOneM2MClient (awaited) or a OneM2MClient (in a worker thread)."""
    send = client.send
    if inspect.iscoroutinefunction(send):
        return await send(req)  # type: ignore[no-any-return]
    return await asyncio.to_thread(send, req)  # type: ignore[no-any-return]


class SecureOriginator:
    """ESPrim Originator bound to one client and one pairwiseESPrimKey (one Receiver)."""

    def __init__(self, client: Any, originator: Originator, key: PairwiseKey) -> None:
        self.client = client
        self.originator = originator
        self.key = key
        self._esi: dict[str, E2ESecInfo | None] = {}
        self._lock = asyncio.Lock()
        self.rand_object_requests = 0  # type-3 Notifies sent (observability, tests)

    @property
    def _clock(self) -> Any:
        return self.originator._clock

    async def fetch_esi(self, receiver_resource: str, *, fresh: bool = False) -> E2ESecInfo | None:
        """RETRIEVE ``receiver_resource`` and read its ``esi`` (cached unless ``fresh``)."""
        if not fresh and receiver_resource in self._esi:
            return self._esi[receiver_resource]
        req = self.client.build(Operation.RETRIEVE, receiver_resource)
        rsp = await _call(self.client, req)
        if not rsp.is_success:
            raise OuterResponseError(
                f"RETRIEVE {receiver_resource} for its e2eSecInfo answered {int(rsp.rsc)}", rsp
            )
        esi = esi_from_resource(rsp.pc, clock=self._clock)
        self._esi[receiver_resource] = esi
        return esi

    async def session(self, receiver: str, receiver_resource: str, *, fresh: bool = False) -> OriginatorSession:
        """Phase B: the current session, or a new one (shared or on-request rand object)."""
        async with self._lock:
            step = self.originator.start(self.key, None)
            if isinstance(step, RandObjectNeeded):
                esi = await self.fetch_esi(receiver_resource, fresh=fresh)
                if esi is None:
                    raise ESPrimNotSupported(f"{receiver_resource} publishes no e2eSecInfo")
                step = self.originator.start(self.key, esi)
            if isinstance(step, RandObjectNeeded):
                self.rand_object_requests += 1
                out = step.request(to=receiver, fr=self.client.originator, rqi=new_request_id())
                rsp = await _call(self.client, out)
                if not rsp.is_success:
                    raise OuterResponseError(f"receiverESPrimRandObject request answered {int(rsp.rsc)}", rsp)
                step = self.originator.accept_rand_object(step, rsp)
            return step.session

    async def send(self, inner: RequestPrimitive, receiver: str, receiver_resource: str) -> ResponsePrimitive:
        """Phase C: protect ``inner``, Notify it to ``receiver``, return the verified inner response."""
        session = await self.session(receiver, receiver_resource)
        for attempt in (0, 1):
            obj, pending = self.originator.protect_request(inner, session)
            outer = RequestPrimitive.notify_security_info(
                to=receiver, fr=self.client.originator, seci=SecurityInfo.esprim(obj), rqi=new_request_id()
            )
            rsp = await _call(self.client, outer)
            if rsp.is_success:
                try:
                    seci = rsp.security_info(clock=self._clock)
                except ParseError as exc:
                    raise ESPrimParseError(f"outer response securityInfo does not parse: {exc}") from None
                if seci is None or seci.sit != SecurityInfoType.ESPRIM_OBJECT or seci.esprim_object is None:
                    raise ESPrimParseError("outer response carries no ESPrim Object (securityInfoType 5)")
                return self.originator.open_response(seci.esprim_object, pending)
            advice = self.originator.handle_error(pending, int(rsp.rsc))
            if attempt == 0 and advice is ErrorAdvice.RESEND:
                continue
            if attempt == 0 and advice is ErrorAdvice.NEW_SESSION:
                self._esi.pop(receiver_resource, None)
                session = await self.session(receiver, receiver_resource, fresh=True)
                continue
            dbg = rsp.pc.get("m2m:dbg") if isinstance(rsp.pc, Mapping) else None
            raise OuterResponseError(f"ESPrim Notify to {receiver} answered {int(rsp.rsc)}: {dbg}", rsp)
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return f"SecureOriginator(originator={self.client.originator!r}, key={self.key!r})"


class SecureReceiver:
    """ESPrim Receiver behind an endpoint: sit 3 -> sit 4, sit 5 -> handler -> sit 5."""

    def __init__(self, receiver: Receiver, handler: InnerHandler, *,
                 prefetch: Callable[[str], Awaitable[object]] | None = None) -> None:
        self.receiver = receiver
        self.handler = handler
        self.prefetch = prefetch

    def e2e_sec_info(self) -> E2ESecInfo:
        """The ``esi`` to publish on this entity's resource."""
        return self.receiver.e2e_sec_info()

    async def on_rand_object_request(self, req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        try:
            return self.receiver.rand_object_response(req)
        except M2MSecError as exc:
            return self.receiver.error_response(exc, req)

    async def on_esprim_object(self, req: RequestPrimitive, seci: SecurityInfo) -> ResponsePrimitive:
        assert seci.esprim_object is not None
        if self.prefetch is not None:
            try:
                kid: str | None = Receiver.peek(seci.esprim_object).kid
            except M2MSecError:
                kid = None  # open_request rejects the object with its own RSC
            if kid is not None:
                try:
                    await self.prefetch(kid)
                except M2MSecError as exc:
                    return self.receiver.error_response(exc, req)
        try:
            inner, ctx = self.receiver.open_request(seci.esprim_object, outer_from=req.fr)
        except M2MSecError as exc:
            return self.receiver.error_response(exc, req)
        inner_rsp = await self._run(inner)
        try:
            obj = self.receiver.protect_response(ctx, inner_rsp)
        except M2MSecError as exc:
            return self.receiver.error_response(exc, req)
        return self.receiver.esprim_response(req, obj)

    async def _run(self, inner: RequestPrimitive) -> ResponsePrimitive:
        try:
            rsp = await self.handler(inner)
            if not isinstance(rsp, ResponsePrimitive):
                raise TypeError(f"handler returned {type(rsp).__name__}")
        except M2MSecError as exc:
            rsp = ResponsePrimitive(rsc=exc.rsc, rqi=inner.rqi, pc={"m2m:dbg": str(exc.args[0]) if exc.args else ""},
                                    rvi=inner.rvi or DEFAULT_RVI)
        except Exception:  # noqa: BLE001 - never leak details of an application failure
            log.exception("ESPrim application handler failed (inner rqi %s)", inner.rqi)
            rsp = ResponsePrimitive(rsc=RSC.INTERNAL_SERVER_ERROR, rqi=inner.rqi, pc={"m2m:dbg": "internal error"},
                                    rvi=inner.rvi or DEFAULT_RVI)
        if rsp.rqi != inner.rqi:
            rsp = dataclasses.replace(rsp, rqi=inner.rqi)
        return rsp

    def dispatcher(self, *, on_notification: Any = None, on_request: Any = None) -> NotifyDispatcher:
        """A :class:`~m2msec.net.endpoint.NotifyDispatcher` serving sit 3 and sit 5."""
        return NotifyDispatcher(
            on_rand_object_request=self.on_rand_object_request,
            on_esprim_object=self.on_esprim_object,
            on_notification=on_notification,
            on_request=on_request,
        )

    def __repr__(self) -> str:
        return f"SecureReceiver({self.receiver!r})"
