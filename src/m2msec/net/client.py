"""oneM2M HTTP client towards a CSE (TS-0009 clause 6, TS-0004 clause 6.4).

Sends :class:`~m2msec.onem2m.RequestPrimitive` objects over HTTP/1.1 with httpx
and returns :class:`~m2msec.onem2m.ResponsePrimitive` objects.  The mapping is
:mod:`m2msec.net.http_binding`; this module adds the I/O and three checks:

* the response's X-M2M-RI must equal the request's Request Identifier
  (TS-0004 clause 6.4.2: the Request Identifier of a response is that of the
  request) -- otherwise :class:`RequestIdMismatchError`;
* the response must map strictly onto a response primitive (X-M2M-RSC present,
  JSON/CBOR body well formed) -- otherwise :class:`OneM2MProtocolError` (4000);
* transport failures become :class:`OneM2MTransportError` with
  TARGET_NOT_REACHABLE (5103) or REQUEST_TIMEOUT (4008).

``send`` returns every well-formed response, successful or not (a gateway
forwards errors); the helpers ``create``/``retrieve``/``update``/``delete``/
``notify`` raise :class:`OneM2MResponseError` (carrying the RSC and the response)
unless ``check=False``.

:class:`OneM2MClient` is synchronous, :class:`AsyncOneM2MClient` the asyncio twin;
:class:`StreamOneM2MClient` speaks HTTP/1.1 (h11) over an already open asyncio
stream pair, e.g. a TLS-PSK connection from :func:`m2msec.tls.aio.open_connection`
(SAEF, TS-0003 8.2), where httpx cannot be used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import h11
import httpx

from m2msec.errors import M2MSecError
from m2msec.net.h11io import BodyTooLarge, send_request
from m2msec.net.http_binding import BindingError, Serialization, http_to_response, request_to_http
from m2msec.onem2m.enums import Operation, ResourceType, ResultContent
from m2msec.onem2m.primitives import DEFAULT_RVI, RequestPrimitive, ResponsePrimitive, new_request_id
from m2msec.onem2m.rsc import ResponseStatusCode

__all__ = [
    "AsyncOneM2MClient",
    "StreamOneM2MClient",
    "OneM2MClient",
    "OneM2MProtocolError",
    "OneM2MResponseError",
    "OneM2MTransportError",
    "RequestIdMismatchError",
]


class OneM2MProtocolError(BindingError):
    """The peer's HTTP response does not map onto a oneM2M response primitive (4000)."""


class RequestIdMismatchError(OneM2MProtocolError):
    """The response's X-M2M-RI differs from the request's Request Identifier."""


class OneM2MTransportError(M2MSecError):
    """The CSE could not be reached or did not answer in time."""

    default_rsc = ResponseStatusCode.TARGET_NOT_REACHABLE


def _as_rsc(value: ResponseStatusCode | int) -> ResponseStatusCode:
    if isinstance(value, ResponseStatusCode):
        return value
    return ResponseStatusCode.BAD_REQUEST if 4000 <= value < 5000 else ResponseStatusCode.INTERNAL_SERVER_ERROR


class OneM2MResponseError(M2MSecError):
    """A well-formed response whose RSC is not a success (``response`` holds it).

    ``rsc`` is the response's RSC; for a code outside :class:`ResponseStatusCode`
    it is BAD_REQUEST/INTERNAL_SERVER_ERROR by class and ``response.rsc`` keeps
    the original number.
    """

    def __init__(self, request: RequestPrimitive, response: ResponsePrimitive) -> None:
        dbg = ""
        if isinstance(response.pc, Mapping) and isinstance(response.pc.get("m2m:dbg"), str):
            dbg = f": {response.pc['m2m:dbg'][:300]}"
        super().__init__(
            f"{request.op.name} {request.to} answered {int(response.rsc)}{dbg}", rsc=_as_rsc(response.rsc)
        )
        self.request = request
        self.response = response


class _Core:
    """Shared request building and response checking (no I/O)."""

    def __init__(
        self,
        base_url: str,
        originator: str,
        rvi: str = DEFAULT_RVI,
        *,
        serialization: Serialization = "json",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL: {base_url!r}")
        if not originator:
            raise ValueError("originator must be non-empty")
        self.base_url = base_url.rstrip("/")
        self.originator = originator
        self.rvi = rvi
        self.serialization: Serialization = serialization

    def build(
        self,
        op: Operation,
        to: str,
        *,
        pc: Any = None,
        ty: ResourceType | None = None,
        rcn: ResultContent | None = None,
        fr: str | None = None,
        **params: Any,
    ) -> RequestPrimitive:
        """A request primitive from this client's originator with a fresh rqi."""
        return RequestPrimitive(
            op=op,
            to=to,
            fr=fr if fr is not None else self.originator,
            rqi=new_request_id(),
            rvi=self.rvi,
            ty=ty,
            pc=pc,
            rcn=rcn,
            **params,
        )

    def _http(self, req: RequestPrimitive) -> tuple[str, str, list[tuple[str, str]], bytes]:
        method, target, headers, body = request_to_http(req, serialization=self.serialization)
        return method, self.base_url + target, headers, body

    @staticmethod
    def _response(req: RequestPrimitive, r: httpx.Response) -> ResponsePrimitive:
        try:
            rsp = http_to_response(r.status_code, list(r.headers.raw), r.content)
        except BindingError as exc:
            raise OneM2MProtocolError(
                f"{req.op.name} {req.to}: malformed response (HTTP {r.status_code}): {exc.args[0]}"
            ) from None
        if rsp.rqi != req.rqi:
            raise RequestIdMismatchError(
                f"{req.op.name} {req.to}: response X-M2M-RI {rsp.rqi!r} does not echo request {req.rqi!r}"
            )
        return rsp

    @staticmethod
    def _transport_error(req: RequestPrimitive, exc: httpx.HTTPError) -> OneM2MTransportError:
        if isinstance(exc, httpx.TimeoutException):
            return OneM2MTransportError(
                f"{req.op.name} {req.to}: timed out ({type(exc).__name__})", rsc=ResponseStatusCode.REQUEST_TIMEOUT
            )
        return OneM2MTransportError(f"{req.op.name} {req.to}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _checked(req: RequestPrimitive, rsp: ResponsePrimitive, check: bool) -> ResponsePrimitive:
        if check and not rsp.is_success:
            raise OneM2MResponseError(req, rsp)
        return rsp


class OneM2MClient(_Core):
    """Synchronous oneM2M HTTP client (httpx.Client, keep-alive)."""

    def __init__(
        self,
        base_url: str,
        originator: str,
        rvi: str = DEFAULT_RVI,
        *,
        timeout: float = 10.0,
        serialization: Serialization = "json",
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, originator, rvi, serialization=serialization)
        self._own = http_client is None
        self._http_client = http_client if http_client is not None else httpx.Client(timeout=timeout)

    def send(self, req: RequestPrimitive) -> ResponsePrimitive:
        """Send one request primitive; return its (checked) response primitive."""
        method, url, headers, body = self._http(req)
        try:
            r = self._http_client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise self._transport_error(req, exc) from None
        return self._response(req, r)

    def create(self, to: str, ty: ResourceType, content: Any, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.CREATE, to, pc=content, ty=ty, **kw)
        return self._checked(req, self.send(req), check)

    def retrieve(self, to: str, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.RETRIEVE, to, **kw)
        return self._checked(req, self.send(req), check)

    def update(self, to: str, content: Any, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.UPDATE, to, pc=content, **kw)
        return self._checked(req, self.send(req), check)

    def delete(self, to: str, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.DELETE, to, **kw)
        return self._checked(req, self.send(req), check)

    def notify(self, to: str, content: Any, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.NOTIFY, to, pc=content, **kw)
        return self._checked(req, self.send(req), check)

    def close(self) -> None:
        if self._own:
            self._http_client.close()

    def __enter__(self) -> OneM2MClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncOneM2MClient(_Core):
    """asyncio oneM2M HTTP client (httpx.AsyncClient, keep-alive)."""

    def __init__(
        self,
        base_url: str,
        originator: str,
        rvi: str = DEFAULT_RVI,
        *,
        timeout: float = 10.0,
        serialization: Serialization = "json",
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, originator, rvi, serialization=serialization)
        self._own = http_client is None
        self._http_client = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(self, req: RequestPrimitive) -> ResponsePrimitive:
        method, url, headers, body = self._http(req)
        try:
            r = await self._http_client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise self._transport_error(req, exc) from None
        return self._response(req, r)

    async def create(
        self, to: str, ty: ResourceType, content: Any, *, check: bool = True, **kw: Any
    ) -> ResponsePrimitive:
        req = self.build(Operation.CREATE, to, pc=content, ty=ty, **kw)
        return self._checked(req, await self.send(req), check)

    async def retrieve(self, to: str, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.RETRIEVE, to, **kw)
        return self._checked(req, await self.send(req), check)

    async def update(self, to: str, content: Any, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.UPDATE, to, pc=content, **kw)
        return self._checked(req, await self.send(req), check)

    async def delete(self, to: str, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.DELETE, to, **kw)
        return self._checked(req, await self.send(req), check)

    async def notify(self, to: str, content: Any, *, check: bool = True, **kw: Any) -> ResponsePrimitive:
        req = self.build(Operation.NOTIFY, to, pc=content, **kw)
        return self._checked(req, await self.send(req), check)

    async def aclose(self) -> None:
        if self._own:
            await self._http_client.aclose()

    async def __aenter__(self) -> AsyncOneM2MClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class StreamOneM2MClient:
    """oneM2M requests over one open asyncio stream pair, HTTP/1.1 framed by h11.

    ``writer`` is an ``asyncio.StreamWriter`` or a
    :class:`m2msec.tls.aio.TLSStreamWriter`.  Requests are sent one at a time
    (keep-alive, no pipelining); the same checks as :class:`AsyncOneM2MClient`
    apply (X-M2M-RI echo, strict mapping).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: Any,
        host: str,
        *,
        serialization: Serialization = "json",
        timeout: float = 10.0,
        max_body: int = 1 << 20,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._serialization: Serialization = serialization
        self._timeout = timeout
        self._max_body = max_body
        self._conn = h11.Connection(h11.CLIENT)
        self._lock = asyncio.Lock()

    async def send(self, req: RequestPrimitive) -> ResponsePrimitive:
        async with self._lock:
            try:
                return await self._send(req)
            except (h11.ProtocolError, asyncio.TimeoutError, ConnectionError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    raise OneM2MTransportError(
                        f"{req.op.name} {req.to}: timed out", rsc=ResponseStatusCode.REQUEST_TIMEOUT
                    ) from None
                if isinstance(exc, h11.RemoteProtocolError):
                    raise OneM2MProtocolError(f"{req.op.name} {req.to}: malformed HTTP response: {exc}") from None
                raise OneM2MTransportError(f"{req.op.name} {req.to}: {type(exc).__name__}: {exc}") from None

    async def _send(self, req: RequestPrimitive) -> ResponsePrimitive:
        method, target, headers, body = request_to_http(req, serialization=self._serialization)
        hdrs = [("Host", self._host), *headers, ("Content-Length", str(len(body)))]
        try:
            response, content = await send_request(
                self._conn, self._reader, self._writer, method, target, hdrs, body,
                timeout=self._timeout, max_body=self._max_body,
            )
        except BodyTooLarge:
            raise OneM2MProtocolError(f"{req.op.name} {req.to}: response body over {self._max_body} bytes") from None
        try:
            rsp = http_to_response(response.status_code, list(response.headers), content)
        except BindingError as exc:
            raise OneM2MProtocolError(
                f"{req.op.name} {req.to}: malformed response (HTTP {response.status_code}): {exc.args[0]}"
            ) from None
        if rsp.rqi != req.rqi:
            raise RequestIdMismatchError(
                f"{req.op.name} {req.to}: response X-M2M-RI {rsp.rqi!r} does not echo request {req.rqi!r}"
            )
        return rsp

    async def aclose(self) -> None:
        self._writer.close()
