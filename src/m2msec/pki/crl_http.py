"""Publishing CRLs over HTTP (TS-0003 8.1.2.2; RFC 5280 4.2.1.13, RFC 2585 section 3).

RFC 5280 4.2.1.13 names ``http`` URIs for cRLDistributionPoints and RFC 2585 says how to
serve them: a GET of the URI returns the DER CRL with media type ``application/pkix-crl``.
CRLs are signed, so plain HTTP is the norm (fetching them over TLS would need a certificate
status check of its own).  :class:`CRLHTTPServer` answers exactly that, for a fixed set of
names ``/crl/<name>.crl``, each backed by a callable returning the current CRL (which may do
blocking work such as re-signing it from a database: it runs in a worker thread):

* ``GET`` and ``HEAD`` only (405 otherwise, with ``Allow``); unknown names 404; a request
  body is ignored up to 4 KiB (413 beyond);
* ``ETag`` (SHA-256 of the DER, quoted) and ``If-None-Match`` -> 304; ``Last-Modified`` =
  thisUpdate; ``Cache-Control: max-age`` up to nextUpdate (0 once it has passed);
* HTTP/1.1 keep-alive through h11 with an idle timeout and a bound on the request head.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import h11
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, write_response

__all__ = ["CRL_MEDIA_TYPE", "CRLHTTPServer"]

log = logging.getLogger(__name__)

CRL_MEDIA_TYPE = "application/pkix-crl"
PREFIX = "/crl/"
_MAX_HEAD = 16 * 1024
_MAX_BODY = 4096  # a GET has none; a stray body is read (and ignored) up to this

CRLSourceFn = Callable[[], x509.CertificateRevocationList]


class CRLHTTPServer:
    """``/crl/<name>.crl`` for each ``sources[name]``; ``clock`` gives aware UTC now."""

    def __init__(self, sources: Mapping[str, CRLSourceFn], *, host: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float = 30.0, clock: Callable[[], datetime] | None = None) -> None:
        for name in sources:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"bad CRL name {name!r}")
        self.sources = dict(sources)
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.clock = clock or (lambda: datetime.now(UTC))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"CRLHTTPServer({sorted(self.sources)}, {self.host}:{self.port})"

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}{PREFIX}{name}.crl"

    async def start(self) -> CRLHTTPServer:
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

    async def __aenter__(self) -> CRLHTTPServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        try:
            while True:
                try:
                    req, _body = await read_request(conn, reader, _MAX_BODY, timeout=self.idle_timeout)
                except (TimeoutError, ConnectionError):
                    return
                except (h11.RemoteProtocolError, BodyTooLarge) as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 400
                        with contextlib.suppress(Exception):
                            await write_response(conn, writer, status,
                                                 [("Connection", "close"), ("Content-Length", "0")], b"")
                    return
                if req is None:
                    return
                status, headers, body = await self._answer(req)
                if status != 304 and req.method != b"HEAD":
                    headers.append(("Content-Length", str(len(body))))
                await write_response(conn, writer, status, headers, body)
                if not next_cycle(conn):
                    return
        except (ConnectionError, h11.LocalProtocolError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, req: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        method = req.method.decode("latin-1")
        path = req.target.decode("latin-1").split("?", 1)[0]
        name = path[len(PREFIX):-len(".crl")] if path.startswith(PREFIX) and path.endswith(".crl") else None
        if name is None or name not in self.sources:
            return 404, [("Content-Type", "text/plain")], b"no such CRL\n"
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"use GET\n"
        try:
            crl = await asyncio.to_thread(self.sources[name])
        except Exception:  # noqa: BLE001 - no stack trace to the peer
            log.exception("CRL %s could not be produced", name)
            return 503, [("Content-Type", "text/plain"), ("Retry-After", "10")], b"CRL unavailable\n"
        der = crl.public_bytes(serialization.Encoding.DER)
        etag = '"' + hashlib.sha256(der).hexdigest() + '"'
        now = self.clock()
        nxt = crl.next_update_utc
        max_age = max(0, int((nxt - now).total_seconds())) if nxt is not None else 0
        headers = [("ETag", etag), ("Last-Modified", format_datetime(crl.last_update_utc, usegmt=True)),
                   ("Cache-Control", f"public, max-age={max_age}")]
        inm = _header(req.headers, b"if-none-match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return 304, headers, b""
        headers.append(("Content-Type", CRL_MEDIA_TYPE))
        if method == "HEAD":
            headers.append(("Content-Length", str(len(der))))
            return 200, headers, b""
        return 200, headers, der


def _header(headers: Any, name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None
