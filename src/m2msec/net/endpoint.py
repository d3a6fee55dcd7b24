"""AE notification endpoint: an asyncio HTTP/1.1 server (h11) for an AE's pointOfAccess.

The receiving end of TS-0009 clause 6 (HTTP request -> request primitive ->
handler -> response primitive -> HTTP response) for the requests a CSE sends to
an AE: above all NOTIFY (TS-0004 clause 7.5.1.2), including the
``m2m:securityInfo`` Notify of ESPrim (TS-0004 7.5.1.2.11/13, TS-0003 8.4) and
ESCertKE (TS-0004 7.5.1.2.12, TS-0003 8.7).

* HTTP framing is h11's; the mapping is :mod:`m2msec.net.http_binding`.
* Every response echoes the request's X-M2M-RI (TS-0009 6.4.8; ACME rejects a
  forwarded Notify whose response does not), carries X-M2M-RSC and the HTTP
  status of TS-0009 table 6.3.2-1.
* A request that does not map onto a primitive is answered 4000 (4015 for an
  unsupported media type); an :class:`~m2msec.errors.M2MSecError` from the
  handler is answered with its RSC and message; any other exception with 5000
  and no detail.
* Transport is pluggable: ``start_server`` defaults to ``asyncio.start_server``
  and can be ``functools.partial(m2msec.tls.aio.start_server, config=...)`` for
  TLS 1.2 (PSK or certificates); the handler can reach the connection (e.g. the
  TLS engine for the peer identity) through :data:`current_connection`.
* Open connections are bounded (profile T13, :mod:`m2msec.net.connlimits`): with the
  default plain-TCP transport ``limits`` (default 1024, or ``ulimit -n`` minus 64, and
  128 per IPv4 address / IPv6 /64) resets a connection over a limit before a byte is
  read; the TLS transport of :mod:`m2msec.tls.aio` applies its own ``limits`` (pass them
  in the ``partial``) before the handshake.

:class:`NotifyDispatcher` routes Notify requests by content: ``m2m:seci`` by
securityInfoType (3 -> receiverESPrimRandObject request, 5 -> ESPrim Object,
6 -> ESCertKE message; 4 is a response and never arrives in a request: 4000;
other or unknown types: 4000), ``m2m:sgn`` (and ``m2m:agn``) to the notification
callback; other operations to an optional request callback (else 4005).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import h11

from m2msec.errors import M2MSecError, ParseError
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, write_response
from m2msec.net.http_binding import (
    BindingError,
    Serialization,
    http_to_request,
    response_to_http,
)
from m2msec.onem2m.enums import Operation, SecurityInfoType
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.security import SECI_ELEMENT, SecurityInfo

__all__ = [
    "AEEndpoint",
    "EndpointThread",
    "Handler",
    "NotifyDispatcher",
    "SecurityInfoHandler",
    "current_connection",
    "error_response",
    "serve_connection",
]

log = logging.getLogger(__name__)

Handler = Callable[[RequestPrimitive], Awaitable[ResponsePrimitive]]
SecurityInfoHandler = Callable[[RequestPrimitive, SecurityInfo], Awaitable[ResponsePrimitive]]
ClientConnected = Callable[[asyncio.StreamReader, Any], Awaitable[None]]
StartServer = Callable[..., Awaitable[asyncio.Server]]

#: The stream writer of the connection whose request is being handled
#: (``asyncio.StreamWriter`` or ``m2msec.tls.aio.TLSStreamWriter``).
current_connection: contextvars.ContextVar[Any] = contextvars.ContextVar("m2msec_current_connection")

DEFAULT_MAX_BODY = 1 << 20


def error_response(request: RequestPrimitive, rsc: ResponseStatusCode, message: str | None = None) -> ResponsePrimitive:
    """A response to ``request`` with ``rsc`` and, if given, ``{"m2m:dbg": message}``."""
    return ResponsePrimitive(
        rsc=rsc,
        rqi=request.rqi,
        rvi=request.rvi if request.rvi is not None else DEFAULT_RVI,
        pc={"m2m:dbg": message} if message else None,
    )


def _raw_error(rsc: ResponseStatusCode, rqi: str | None, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """An HTTP error answer for a request that is not a primitive (rqi may be unknown)."""
    if rqi:
        rsp = ResponsePrimitive(rsc=rsc, rqi=rqi, pc={"m2m:dbg": message})
        return response_to_http(rsp)
    from m2msec.onem2m._wire import dumps_json

    body = dumps_json({"m2m:dbg": message})
    return rsc.http_status, [("X-M2M-RSC", str(int(rsc))), ("Content-Type", "application/json")], body


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1").strip() or None
    return None


async def _send(conn: h11.Connection, writer: Any, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    hdrs = [(k, v) for k, v in headers if k.lower() != "content-length"]
    hdrs.append(("Content-Length", str(len(body))))
    await write_response(conn, writer, status, hdrs, body)


async def _handle_one(
    handler: Handler,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    serialization: Serialization,
) -> tuple[int, list[tuple[str, str]], bytes]:
    rqi = _header(headers, b"x-m2m-ri")
    try:
        req = http_to_request(method, target, headers, body)
    except ParseError as exc:
        return _raw_error(exc.rsc, rqi, exc.args[0])
    try:
        rsp = await handler(req)
        if not isinstance(rsp, ResponsePrimitive):
            raise TypeError(f"handler returned {type(rsp).__name__}, not a ResponsePrimitive")
    except M2MSecError as exc:
        rsp = error_response(req, exc.rsc, exc.args[0] if exc.args else None)
    except Exception:  # noqa: BLE001 - a handler bug must not kill the connection or leak details
        log.exception("handler failed for %s %s (rqi %s)", req.op.name, req.to, req.rqi)
        rsp = error_response(req, ResponseStatusCode.INTERNAL_SERVER_ERROR, "internal error")
    if rsp.rqi != req.rqi:
        log.warning("handler answered rqi %r to request %r; echoing the request's", rsp.rqi, req.rqi)
        rsp = dataclasses.replace(rsp, rqi=req.rqi)
    if rsp.rvi is None and req.rvi is not None:
        rsp = dataclasses.replace(rsp, rvi=req.rvi)
    try:
        return response_to_http(rsp, serialization=serialization)
    except BindingError as exc:
        log.error("handler response for rqi %s has no HTTP form: %s", req.rqi, exc)
        return response_to_http(error_response(req, ResponseStatusCode.INTERNAL_SERVER_ERROR, "internal error"))


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: Any,
    handler: Handler,
    *,
    serialization: Serialization = "json",
    max_body: int = DEFAULT_MAX_BODY,
    idle_timeout: float = 60.0,
) -> None:
    """Serve oneM2M HTTP requests on one connection until the peer closes it.

    ``writer`` is an ``asyncio.StreamWriter`` or anything with ``write``,
    ``drain``, ``close`` (e.g. :class:`m2msec.tls.aio.TLSStreamWriter`).
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    token = current_connection.set(writer)
    try:
        while True:
            try:
                event, request_body = await read_request(
                    conn, reader, max_body, timeout=idle_timeout, check_declared=True
                )
                if event is None:
                    return
                status, headers, body = await _handle_one(
                    handler, event.method, event.target, list(event.headers), request_body, serialization
                )
                await _send(conn, writer, status, headers, body)
            except BodyTooLarge:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status, headers, body = _raw_error(
                        ResponseStatusCode.BAD_REQUEST, None, f"request body larger than {max_body} bytes"
                    )
                    headers.append(("Connection", "close"))
                    await _send(conn, writer, 413, headers, body)
                return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status, headers, body = _raw_error(
                        ResponseStatusCode.BAD_REQUEST, None, f"malformed HTTP request: {exc}"
                    )
                    try:
                        await _send(conn, writer, exc.error_status_hint if exc.error_status_hint >= 400 else status, headers, body)
                    except (h11.LocalProtocolError, ConnectionError):
                        pass
                return
            if not next_cycle(conn):
                return
    except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        current_connection.reset(token)
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


class AEEndpoint:
    """An AE's pointOfAccess: serves oneM2M HTTP requests with ``handler``.

    ``start_server(client_connected, host, port)`` returns an ``asyncio.Server``;
    the default is ``asyncio.start_server`` (plain TCP).  ``scheme`` only affects
    :attr:`url`.  ``limits`` bounds the open connections of the default transport
    (:attr:`connections` has the counters); a custom ``start_server`` brings its own.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_server: StartServer | None = None,
        scheme: str = "http",
        serialization: Serialization = "json",
        max_body: int = DEFAULT_MAX_BODY,
        idle_timeout: float = 60.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.scheme = scheme
        self._start_server = start_server if start_server is not None else asyncio.start_server
        if start_server is not None and limits is not None:
            raise ValueError("limits apply to the default transport; pass them to the custom start_server")
        #: open connections of the default plain-TCP transport (None with a custom start_server)
        self.connections: ConnectionGate | None = (
            ConnectionGate(limits, name=f"AE endpoint {host}:{port}") if start_server is None else None)
        self._serialization: Serialization = serialization
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def url(self) -> str:
        """The pointOfAccess URL, e.g. ``http://127.0.0.1:45678``."""
        if self._server is None:
            raise RuntimeError("endpoint not started")
        return f"{self.scheme}://{self.host}:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: Any) -> None:
        admitted: str | None = None
        if self.connections is not None:
            admitted = self.connections.admit(writer.get_extra_info("peername"))
            if admitted is None:  # over a limit: reset, nothing read
                writer.transport.abort()
                return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await serve_connection(
                reader,
                writer,
                self.handler,
                serialization=self._serialization,
                max_body=self._max_body,
                idle_timeout=self._idle_timeout,
            )
        except asyncio.CancelledError:
            # close() cancels open keep-alive connections; end those quietly (asyncio's
            # stream callback would otherwise log the cancellation as an error).
            if not self._closing:
                raise
        finally:
            if admitted is not None:
                self.connections.release(admitted)  # type: ignore[union-attr]
            if task is not None:
                self._tasks.discard(task)

    async def start(self) -> AEEndpoint:
        self._server = await self._start_server(self._client, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._closing = True
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            self._closing = False

    async def __aenter__(self) -> AEEndpoint:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class EndpointThread:
    """Runs an :class:`AEEndpoint` on its own event loop in a daemon thread.

    For synchronous programs (the demo, a sync client calling through a CSE that
    calls back into this endpoint).  Use as a context manager; :attr:`url` is
    valid after entering.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._args = (handler, host, port)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.endpoint: AEEndpoint | None = None

    @property
    def url(self) -> str:
        if self.endpoint is None:
            raise RuntimeError("endpoint thread not started")
        return self.endpoint.url

    def start(self) -> EndpointThread:
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.endpoint = loop.run_until_complete(AEEndpoint(*self._args, **self._kwargs).start())
            except BaseException as exc:  # noqa: BLE001
                error.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.endpoint.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="m2msec-endpoint", daemon=True)
        self._thread.start()
        started.wait()
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None
            self._thread = None

    def __enter__(self) -> EndpointThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class NotifyDispatcher:
    """A :data:`Handler` that routes requests by operation and Notify content.

    Callbacks not given are answered NOT_IMPLEMENTED (5001) for the security
    info types 3/5/6 and OK (2000) for ``m2m:sgn`` (a plain notification,
    including a subscription verification request, is acknowledged).
    """

    def __init__(
        self,
        *,
        on_rand_object_request: SecurityInfoHandler | None = None,
        on_esprim_object: SecurityInfoHandler | None = None,
        on_escertke_message: SecurityInfoHandler | None = None,
        on_notification: Handler | None = None,
        on_request: Handler | None = None,
    ) -> None:
        self._seci: dict[SecurityInfoType, SecurityInfoHandler | None] = {
            SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST: on_rand_object_request,
            SecurityInfoType.ESPRIM_OBJECT: on_esprim_object,
            SecurityInfoType.ESCERTKE_MESSAGE: on_escertke_message,
        }
        self._on_notification = on_notification
        self._on_request = on_request

    async def __call__(self, req: RequestPrimitive) -> ResponsePrimitive:
        if req.op is not Operation.NOTIFY:
            if self._on_request is not None:
                return await self._on_request(req)
            return error_response(
                req, ResponseStatusCode.OPERATION_NOT_ALLOWED, f"{req.op.name} is not served by this endpoint"
            )
        pc = req.pc
        if not isinstance(pc, Mapping) or not pc:
            return error_response(req, ResponseStatusCode.BAD_REQUEST, "Notify without Content")
        if SECI_ELEMENT in pc:
            raw = pc[SECI_ELEMENT]
            if isinstance(raw, Mapping) and "sit" in raw:
                sit_value = raw["sit"]
                known = {int(t) for t in SecurityInfoType}
                if isinstance(sit_value, int) and not isinstance(sit_value, bool) and sit_value not in known:
                    return error_response(
                        req, ResponseStatusCode.BAD_REQUEST, f"unknown securityInfoType {sit_value}"
                    )
            try:
                seci = SecurityInfo.from_content(pc)
            except ParseError as exc:
                return error_response(req, exc.rsc, exc.args[0])
            assert seci is not None
            if seci.sit is SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE:
                return error_response(
                    req,
                    ResponseStatusCode.BAD_REQUEST,
                    "securityInfoType 4 (receiverESPrimRandObject response) is not a request",
                )
            if seci.sit not in self._seci:
                return error_response(
                    req, ResponseStatusCode.BAD_REQUEST, f"securityInfoType {int(seci.sit)} is not supported here"
                )
            cb = self._seci[seci.sit]
            if cb is None:
                return error_response(
                    req, ResponseStatusCode.NOT_IMPLEMENTED, f"no handler for securityInfoType {int(seci.sit)}"
                )
            return await cb(req, seci)
        if len(pc) == 1 and ("m2m:sgn" in pc or "m2m:agn" in pc):
            if self._on_notification is not None:
                return await self._on_notification(req)
            return ResponsePrimitive(rsc=ResponseStatusCode.OK, rqi=req.rqi, rvi=req.rvi or DEFAULT_RVI)
        return error_response(
            req, ResponseStatusCode.BAD_REQUEST, f"Notify Content {sorted(pc)[:3]} is neither m2m:seci nor m2m:sgn"
        )
