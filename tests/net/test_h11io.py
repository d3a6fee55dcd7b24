"""m2msec.net.h11io: the shared h11 request/response I/O, in-process over asyncio streams."""

from __future__ import annotations

import asyncio

import h11
import pytest

from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, send_request, write_response


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


REQ = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"


def test_read_request_body_and_keep_alive() -> None:
    async def go() -> None:
        conn = h11.Connection(h11.SERVER)
        reader = _reader(REQ + REQ.replace(b"hello", b"world"))
        req, body = await read_request(conn, reader, 100)
        assert req is not None and req.target == b"/x" and body == b"hello"
        w = _Writer()
        await write_response(conn, w, 200, [("Content-Length", "2")], b"ok")
        assert w.data.startswith(b"HTTP/1.1 200 \r\n") and w.data.endswith(b"\r\n\r\nok")
        assert next_cycle(conn)
        req, body = await read_request(conn, reader, 100)
        assert req is not None and body == b"world"
        await write_response(conn, w, 204, [("Content-Length", "0")], b"")
        assert next_cycle(conn)
        assert await read_request(conn, reader, 100) == (None, b"")

    _run(go())


def test_read_request_too_large_after_reading_and_declared() -> None:
    async def go() -> None:
        with pytest.raises(BodyTooLarge) as info:
            await read_request(h11.Connection(h11.SERVER), _reader(REQ), 4, too_large="nope")
        assert info.value.error_status_hint == 413 and str(info.value) == "nope"
        # declared Content-Length over the limit: refused before any body byte arrives
        head_only = REQ[: REQ.index(b"hello")]
        with pytest.raises(BodyTooLarge):
            await read_request(h11.Connection(h11.SERVER), _reader(head_only, eof=False), 4, check_declared=True)
        # exactly at the limit is accepted
        req, body = await read_request(h11.Connection(h11.SERVER), _reader(REQ), 5)
        assert req is not None and body == b"hello"

    _run(go())


def test_read_request_timeout() -> None:
    async def go() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await read_request(h11.Connection(h11.SERVER), _reader(b"", eof=False), 10, timeout=0.05)

    _run(go())


def test_next_cycle_false_on_connection_close() -> None:
    async def go() -> None:
        conn = h11.Connection(h11.SERVER)
        req = REQ.replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n")
        await read_request(conn, _reader(req), 100)
        await write_response(conn, _Writer(), 200, [("Content-Length", "0")], b"")
        assert not next_cycle(conn)

    _run(go())


def test_send_request_keep_alive_and_errors() -> None:
    async def go() -> None:
        conn = h11.Connection(h11.CLIENT)
        w = _Writer()
        rsp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        reader = _reader(rsp + b"HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n")
        hdrs = [("Host", "h"), ("Content-Length", "2")]
        response, body = await send_request(conn, reader, w, "POST", "/p", hdrs, b"hi")
        assert response.status_code == 200 and body == b"abc"
        assert w.data.startswith(b"POST /p HTTP/1.1\r\n") and w.data.endswith(b"\r\n\r\nhi")
        response, body = await send_request(conn, reader, w, "GET", "/q", [("Host", "h")], b"")
        assert response.status_code == 201 and body == b""
        # the peer closing before a complete response is h11's framing error (callers map it)
        with pytest.raises(h11.RemoteProtocolError):
            await send_request(conn, reader, w, "GET", "/r", [("Host", "h")], b"")
        with pytest.raises(BodyTooLarge):
            await send_request(h11.Connection(h11.CLIENT), _reader(rsp), _Writer(), "GET", "/", [("Host", "h")], b"",
                               max_body=2)

    _run(go())
