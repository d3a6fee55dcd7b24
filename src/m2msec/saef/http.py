"""oneM2M HTTP binding over an SAEF security association (TS-0009 6, TS-0003 7.2.1, 8.2).

:class:`SAEFHTTPServer` accepts TLS connections through an
:class:`~m2msec.saef.framework.SAEFEndpoint`, frames HTTP/1.1 with h11, maps
each request to a :class:`~m2msec.onem2m.RequestPrimitive`
(:mod:`m2msec.net.http_binding`, TS-0009 clause 6) and attributes it to the peer identity bound
to the security context: a request whose From (X-M2M-Origin) is not that
identity is answered ORIGINATOR_NOT_AUTHENTICATED (4106, HTTP 403) without
reaching the handler - TS-0003 7.2.1 step 3 names this code for exactly this
check ("the value in the From parameter is the same as the ID associated in
security association").  ORIGINATOR_HAS_NO_PRIVILEGE (4103) is the outcome
of access-control decisions on an *authenticated* originator, which this is not.

For a CSE peer the check can be relaxed with ``allow_cse_forwarding`` (TS-0003
7.2.1 NOTE: a transit CSE forwards requests of other originators).

A request that passed the check goes to ``handler(request, ctx)`` as a primitive or,
for a server that relays HTTP (the ESPrim gateway), to ``http_handler(message, request,
ctx)`` with the received :class:`HTTPMessage` (method, target, headers, body, TCP peer)
and answers with an HTTP response.  ``idle_timeout`` bounds the wait for each read of a
request; ``rejections``, ``session_refusals`` and ``handshake_errors`` keep the latest
``max_records`` entries.

``session_check(ctx)`` (optional) is asked once per association, when it is bound; it returns
None (nothing is checked per request: PSK associations, say) or a callable asked before each
request of that association: None while its authentication holds, else why not.  Then the
request gets ORIGINATOR_NOT_AUTHENTICATED (4106, HTTP 403; TS-0004 7.3: the authentication of
the security association no longer holds) in the form of the 7.2.1 refusals, with
``Connection: close``, before it is parsed or reaches a handler, and the connection is closed.
:class:`m2msec.saef.status.AssociationSessionCheck` is the one for certificate associations
whose certificate is revoked after the handshake (TS-0003 8.1.2.2).

:class:`SAEFHTTPClient` is the matching client: one keep-alive connection, one
request at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11

from m2msec.errors import M2MSecError
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.net.h11io import next_cycle, read_request, send_request, write_response
from m2msec.net.http_binding import (
    BindingError,
    HttpResponse,
    header_value,
    http_to_request,
    http_to_response,
    request_to_http,
    response_to_http,
)
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.saef.context import SecurityContext
from m2msec.saef.framework import SAEFEndpoint, connect, serve
from m2msec.tls.aio import TLSStreamWriter
from m2msec.tls.profiles import Transport

__all__ = ["HTTPMessage", "HTTPRequestHandler", "Rejection", "RequestHandler", "SAEFHTTPClient", "SAEFHTTPServer",
           "SessionCheckFactory"]

log = logging.getLogger(__name__)

RequestHandler = Callable[[RequestPrimitive, SecurityContext], Awaitable[ResponsePrimitive]]
Rejection = tuple[str, "str | None", int]  # (bound peer id, From, RSC)


@dataclass(frozen=True)
class HTTPMessage:
    """A received HTTP request as it came (header names lower-case, latin-1 text)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: Any  # the TCP peer (``getpeername()``), None if unknown


HTTPRequestHandler = Callable[[HTTPMessage, RequestPrimitive, SecurityContext], Awaitable[HttpResponse]]
#: ``session_check``: per association, None or the check asked before each of its requests
SessionCheckFactory = Callable[[SecurityContext], "Callable[[], str | None] | None"]

_MAX_BODY = 1 << 20
_MAX_HEAD = 64 * 1024  # request line and headers, whatever the body limit (as the plain listener)


def _error_response(rsc: ResponseStatusCode, rqi: str | None, rvi: str | None, message: str) -> HttpResponse:
    try:
        rsp = ResponsePrimitive(rsc=rsc, rqi=rqi or "unknown", rvi=rvi or DEFAULT_RVI, pc={"m2m:dbg": message})
    except ValueError:  # e.g. a malformed X-M2M-RVI echoed back
        rsp = ResponsePrimitive(rsc=rsc, rqi=rqi or "unknown", rvi=DEFAULT_RVI, pc={"m2m:dbg": message})
    return response_to_http(rsp)


def _with_length(headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    """h11 headers; Content-Length added when absent (TS-0009 6.4.5)."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if header_value(headers, "Content-Length") is None:
        out.append((b"Content-Length", str(len(body)).encode()))
    return out


def _header(headers: Any, name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


class SAEFHTTPServer:
    """HTTP/1.1 oneM2M binding server on an SAEF TLS endpoint."""

    def __init__(self, endpoint: SAEFEndpoint, handler: RequestHandler | None = None, *, sp_id: str | None = None,
                 cse_id: str | None = None, allow_cse_forwarding: bool = False, max_body: int = _MAX_BODY,
                 http_handler: HTTPRequestHandler | None = None, idle_timeout: float | None = None,
                 max_records: int = 1000, session_check: SessionCheckFactory | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        if endpoint.transport is not Transport.TLS:
            raise ValueError("the HTTP binding runs over TLS (TCP)")
        if (handler is None) == (http_handler is None):
            raise ValueError("give exactly one of handler and http_handler")
        self.endpoint = endpoint
        self.handler = handler
        self.http_handler = http_handler
        self.idle_timeout = idle_timeout
        self.max_records = max_records
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sp_id = sp_id
        self.cse_id = cse_id
        self.allow_cse_forwarding = allow_cse_forwarding
        self.max_body = max_body
        self.rejections: list[Rejection] = []
        self.session_check = session_check
        #: requests refused because ``session_check`` said the association no longer holds
        self.session_refusals: list[Rejection] = []
        self.handshake_errors: list[BaseException] = []
        #: open connections of the listener (``limits``, :mod:`m2msec.net.connlimits`; refusal counters)
        self.connections = ConnectionGate(limits, name="SAEF listener")
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"SAEFHTTPServer({self.endpoint!r})"

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        # asked per connection: assigning ``endpoint`` (a reload) applies to new associations only
        self._server = await serve(lambda: self.endpoint, self._connection, host, port,
                                   on_error=lambda e, _p: self._record(self.handshake_errors, e),
                                   limits=self.connections)
        return self.address

    def _record(self, records: list[Any], entry: Any) -> None:
        records.append(entry)
        if len(records) > self.max_records:
            del records[: len(records) - self.max_records]

    async def close(self) -> None:
        """Stop listening and end the open connections."""
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SAEFHTTPServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one connection ---------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: TLSStreamWriter, ctx: SecurityContext) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer, ctx)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass  # idle, reset or half-closed: end the connection quietly
        except asyncio.CancelledError:
            pass  # close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: TLSStreamWriter,
                                ctx: SecurityContext) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)  # request line + headers
        peer = writer.get_extra_info("peername")
        check = None
        if self.session_check is not None:
            try:
                check = self.session_check(ctx)
            except Exception:  # fail closed: an association whose status cannot be watched is not served
                log.exception("session check of the association with %r failed; connection closed", ctx.peer_id)
                return
        while True:
            try:
                req_event, body = await read_request(conn, reader, self.max_body, timeout=self.idle_timeout)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, writer, _error_response(ResponseStatusCode.BAD_REQUEST, None, None,
                                                                   f"HTTP framing error: {exc}"))
                return
            if req_event is None:
                return
            if check is not None and (why := check()) is not None:
                await self._send(conn, writer, self._refuse_session(req_event, ctx, why))
                return
            resp = await self._dispatch(req_event, body, ctx, peer)
            await self._send(conn, writer, resp)
            if not next_cycle(conn):
                return

    def _refuse_session(self, event: h11.Request, ctx: SecurityContext, why: str) -> HttpResponse:
        """4106 with ``Connection: close`` for a request on an association that no longer holds."""
        fr = _header(event.headers, b"x-m2m-origin")
        self._record(self.session_refusals, (ctx.peer_id, fr, int(ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED)))
        # WARNING: once per association, and a server that configures no logging still shows it
        log.warning("SAEF association with %r (%s) closed: request %r refused with 4106, the association "
                    "no longer authenticates: %s", ctx.peer_id, ctx.credential_id,
                    _header(event.headers, b"x-m2m-ri"), why)
        status, headers, body = _error_response(
            ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED, _header(event.headers, b"x-m2m-ri"),
            _header(event.headers, b"x-m2m-rvi"), f"the security association no longer authenticates: {why}")
        return status, [*headers, ("Connection", "close")], body

    async def _dispatch(self, event: h11.Request, body: bytes, ctx: SecurityContext,
                        peer: Any = None) -> HttpResponse:
        rqi = _header(event.headers, b"x-m2m-ri")
        rvi = _header(event.headers, b"x-m2m-rvi")
        # h11 bounds only a head that arrives in pieces; one that arrives whole is checked here
        if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > _MAX_HEAD:
            return _error_response(ResponseStatusCode.BAD_REQUEST, rqi, rvi,
                                   f"request line and headers exceed {_MAX_HEAD} octets")
        try:
            req = http_to_request(event.method, event.target, event.headers, body)
        except BindingError as exc:
            return _error_response(exc.rsc, rqi, rvi, exc.args[0])
        try:
            ctx.check_originator(req.fr, sp_id=self.sp_id, cse_id=self.cse_id,
                                 allow_cse_forwarding=self.allow_cse_forwarding)
        except M2MSecError as exc:
            self._record(self.rejections, (ctx.peer_id, req.fr, int(exc.rsc)))
            log.info("request %s from %r rejected on the association with %r: %s", req.rqi, req.fr, ctx.peer_id,
                     exc.rsc.name)
            return _error_response(exc.rsc, req.rqi, req.rvi, exc.args[0])
        if self.http_handler is not None:
            msg = HTTPMessage(event.method.decode("ascii", "replace"), event.target.decode("latin-1"),
                              [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in event.headers],
                              body, peer)
            try:
                return await self.http_handler(msg, req, ctx)
            except M2MSecError as exc:
                return _error_response(exc.rsc, req.rqi, req.rvi, exc.args[0])
            except Exception as exc:  # the handler failed: no stack trace to the peer
                log.exception("request handler failed")
                return _error_response(ResponseStatusCode.INTERNAL_SERVER_ERROR, req.rqi, req.rvi,
                                       type(exc).__name__)
        assert self.handler is not None
        try:
            rsp = await self.handler(req, ctx)
        except M2MSecError as exc:
            return _error_response(exc.rsc, req.rqi, req.rvi, exc.args[0])
        except Exception as exc:  # the handler failed: no stack trace to the peer
            log.exception("request handler failed")
            return _error_response(ResponseStatusCode.INTERNAL_SERVER_ERROR, req.rqi, req.rvi, type(exc).__name__)
        return response_to_http(rsp)

    async def _send(self, conn: h11.Connection, writer: TLSStreamWriter, resp: HttpResponse) -> None:
        status, hdrs, body = resp
        await write_response(conn, writer, status, _with_length(hdrs, body), body)


class SAEFHTTPClient:
    """oneM2M HTTP binding client over an SAEF TLS association (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: TLSStreamWriter, context: SecurityContext,
                 host: str) -> None:
        self._reader = reader
        self._writer = writer
        self.context = context
        self.host = host
        self._conn = h11.Connection(h11.CLIENT)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SAEFHTTPClient({self.context!r})"

    @classmethod
    async def connect(cls, endpoint: SAEFEndpoint, host: str, port: int, *, server_name: str | None = None,
                      timeout: float = 10.0) -> SAEFHTTPClient:
        reader, writer, ctx = await connect(endpoint, host, port, server_name=server_name, timeout=timeout)
        return cls(reader, writer, ctx, f"{host}:{port}")

    async def send(self, request: RequestPrimitive, *, timeout: float = 10.0) -> ResponsePrimitive:
        """Send ``request`` and return the mapped response primitive."""
        async with self._lock:
            return await asyncio.wait_for(self._send(request), timeout)

    async def _send(self, request: RequestPrimitive) -> ResponsePrimitive:
        method, target, hdrs, body = request_to_http(request)
        headers = [(b"Host", self.host.encode("idna")), *_with_length(hdrs, body)]
        response, content = await send_request(self._conn, self._reader, self._writer, method, target, headers, body,
                                               closed_message="the server closed the connection before responding")
        return http_to_response(response.status_code, response.headers, content)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

    async def __aenter__(self) -> SAEFHTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
