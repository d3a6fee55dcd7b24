"""HTTP/1.1 message I/O over an asyncio stream pair with h11 (transport of TS-0009 clause 6).

The mechanics every h11 site in m2msec shares -- read an event (``NEED_DATA`` ->
``reader.read``), collect a request or response with its body under a size limit,
write a response or a request with ``Content-Length`` framing, start the next
keep-alive cycle -- and nothing else: status mapping, error bodies, header
construction, limits and timeouts stay with each caller.

``writer`` is an ``asyncio.StreamWriter`` or :class:`m2msec.tls.aio.TLSStreamWriter`.
A ``timeout`` bounds each single ``reader.read`` (``None``: no bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11

__all__ = [
    "BodyTooLarge",
    "READ_CHUNK",
    "next_cycle",
    "next_event",
    "read_request",
    "read_response",
    "send_request",
    "write_message",
    "write_response",
]

READ_CHUNK = 65536


class BodyTooLarge(h11.RemoteProtocolError):
    """A message body exceeds the caller's limit (``error_status_hint`` 413)."""

    def __init__(self, msg: str = "message-body too large") -> None:
        super().__init__(msg, error_status_hint=413)


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float | None = None) -> Any:
    """The next h11 event, reading from ``reader`` while h11 needs data."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            read = reader.read(READ_CHUNK)
            conn.receive_data(await (asyncio.wait_for(read, timeout) if timeout is not None else read))
            continue
        return event


def _declared_length(headers: Any) -> int | None:
    for k, v in headers:
        if k.lower() == b"content-length":
            text = bytes(v).decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader, max_body: int, *,
                       timeout: float | None = None, check_declared: bool = False,
                       too_large: str = "message-body too large") -> tuple[h11.Request | None, bytes]:
    """One request and its body; ``(None, b"")`` when the peer closed (or paused) instead.

    A body over ``max_body`` bytes raises :class:`BodyTooLarge` (``too_large`` is its message);
    with ``check_declared`` a Content-Length over ``max_body`` raises it before the body is read.
    """
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = await next_event(conn, reader, timeout)
        if isinstance(event, h11.Request):
            request = event
            declared = _declared_length(event.headers) if check_declared else None
            if declared is not None and declared > max_body:
                raise BodyTooLarge(too_large)
        elif isinstance(event, h11.Data) and request is not None:
            body += event.data
            if len(body) > max_body:
                raise BodyTooLarge(too_large)
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, bytes(body)
        else:
            return None, b""


async def read_response(conn: h11.Connection, reader: asyncio.StreamReader, *, timeout: float | None = None,
                        max_body: int | None = None,
                        closed_message: str = "connection closed before the response was complete",
                        closed_error: Callable[[], Exception] | None = None) -> tuple[h11.Response, bytes]:
    """The final response and its body (interim 1xx responses are skipped).

    The peer closing first raises ``closed_error()`` or else ``ConnectionError(closed_message)``;
    a body over ``max_body`` raises :class:`BodyTooLarge`.
    """
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = await next_event(conn, reader, timeout)
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
            if max_body is not None and len(body) > max_body:
                raise BodyTooLarge()
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise closed_error() if closed_error is not None else ConnectionError(closed_message)
    assert response is not None
    return response, bytes(body)


async def write_message(conn: h11.Connection, writer: Any, head: h11.Request | h11.Response, body: bytes) -> None:
    """``head``, ``body`` (if any) and end of message, written and drained."""
    data = conn.send(head) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


async def write_response(conn: h11.Connection, writer: Any, status: int, headers: Any, body: bytes) -> None:
    """A response with exactly ``headers`` (the caller supplies Content-Length) and an empty reason."""
    await write_message(conn, writer, h11.Response(status_code=status, headers=headers, reason=b""), body)


async def send_request(conn: h11.Connection, reader: asyncio.StreamReader, writer: Any, method: Any, target: Any,
                       headers: Any, body: bytes, *, timeout: float | None = None, max_body: int | None = None,
                       closed_message: str = "connection closed before the response was complete",
                       closed_error: Callable[[], Exception] | None = None) -> tuple[h11.Response, bytes]:
    """One client exchange on a keep-alive connection: write the request, read the response.

    ``headers`` are sent as given (the caller supplies Host and Content-Length).
    """
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    await write_message(conn, writer, h11.Request(method=method, target=target, headers=headers), body)
    return await read_response(conn, reader, timeout=timeout, max_body=max_body, closed_message=closed_message,
                               closed_error=closed_error)


def next_cycle(conn: h11.Connection) -> bool:
    """Start the next keep-alive cycle; ``False`` when the connection must close instead."""
    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
        return False
    try:
        conn.start_next_cycle()
    except h11.LocalProtocolError:
        return False
    return True
