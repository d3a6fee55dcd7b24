"""A small plain-HTTP/1.1 server base for publishing signed objects (CRLs, OCSP responses).

CRLs (RFC 5280 4.2.1.13, RFC 2585) and OCSP responses (RFC 6960 Appendix A) are signed, so they
are served over plain HTTP (:mod:`m2msec.pki.crl_http`, :mod:`m2msec.pki.ocsp_http`).  This base
holds what those servers share: the asyncio listener and its lifecycle, HTTP/1.1 keep-alive
through h11 with an idle timeout, a bound on the request head and body (a larger body: 413 and
the connection closes; a malformed request: h11's status hint and close), ``Content-Length`` on
every answer (except 304 and answers that set it themselves; a ``HEAD`` answer carries the
length of the GET answer and no body), closing every connection on :meth:`close`, and limits on
the open connections (:mod:`m2msec.net.connlimits`; default :data:`DEFAULT_LIMITS`: 256 in
total, 32 per source address, smaller than a service listener's because these servers often
run in the process of one (the MEF's ``crl_port``) and answer short requests; a connection over
a limit is reset before a byte is read).  A subclass implements :meth:`PlainHTTPServer._answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any

import h11

from m2msec.net.connlimits import ConnectionGate, ConnectionLimits, default_max_connections
from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, write_response

__all__ = ["DEFAULT_LIMITS", "PlainHTTPServer", "header_value"]

#: open connections of a signed-object server unless told otherwise
DEFAULT_LIMITS = ConnectionLimits(min(256, default_max_connections()), 32)

Answer = tuple[int, list[tuple[str, str]], bytes]


def header_value(headers: Any, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) as latin-1 text, or None."""
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


class PlainHTTPServer(ABC):
    """``async with Server(...) as srv: srv.port``; subclasses answer in :meth:`_answer`."""

    #: largest request body read (a GET has none); beyond it 413
    max_body: int = 4096
    #: largest request head (request line and headers)
    max_head: int = 16 * 1024

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, idle_timeout: float = 30.0,
                 limits: ConnectionLimits | None = None) -> None:
        self.host = host
        #: open connections (limits, refusal counters)
        self.connections = ConnectionGate(limits or DEFAULT_LIMITS, name=type(self).__name__)
        self.port = port
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @abstractmethod
    async def _answer(self, req: h11.Request, body: bytes) -> Answer:
        """(status, headers, body) for one request."""

    async def start(self) -> Any:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        admitted = self.connections.admit(writer.get_extra_info("peername"))
        if admitted is None:  # over a limit: reset, nothing read
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        try:
            while True:
                try:
                    req, body = await read_request(conn, reader, self.max_body, timeout=self.idle_timeout,
                                                   check_declared=True)
                except (TimeoutError, ConnectionError):
                    return
                except (h11.RemoteProtocolError, BodyTooLarge) as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 413
                        with contextlib.suppress(Exception):
                            await write_response(conn, writer, status,
                                                 [("Connection", "close"), ("Content-Length", "0")], b"")
                    return
                if req is None:
                    return
                status, headers, out = await self._answer(req, body)
                if status != 304 and not any(k.lower() == "content-length" for k, _ in headers):
                    headers.append(("Content-Length", str(len(out))))
                if req.method == b"HEAD":
                    out = b""  # the headers of the GET answer, no body
                await write_response(conn, writer, status, headers, out)
                if not next_cycle(conn):
                    return
        except (ConnectionError, h11.LocalProtocolError):
            return
        finally:
            self.connections.release(admitted)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
