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
* HTTP/1.1 keep-alive through h11 with an idle timeout and a bound on the request head
  (:class:`m2msec.net.plainhttp.PlainHTTPServer`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

import h11
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.plainhttp import PlainHTTPServer, header_value

__all__ = ["CRL_MEDIA_TYPE", "CRLHTTPServer"]

log = logging.getLogger(__name__)

CRL_MEDIA_TYPE = "application/pkix-crl"
PREFIX = "/crl/"

CRLSourceFn = Callable[[], x509.CertificateRevocationList]


class CRLHTTPServer(PlainHTTPServer):
    """``/crl/<name>.crl`` for each ``sources[name]``; ``clock`` gives aware UTC now."""

    def __init__(self, sources: Mapping[str, CRLSourceFn], *, host: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float = 30.0, clock: Callable[[], datetime] | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        for name in sources:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"bad CRL name {name!r}")
        super().__init__(host=host, port=port, idle_timeout=idle_timeout, limits=limits)
        self.sources = dict(sources)
        self.clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"CRLHTTPServer({sorted(self.sources)}, {self.host}:{self.port})"

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}{PREFIX}{name}.crl"

    async def _answer(self, req: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
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
        inm = header_value(req.headers, b"if-none-match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return 304, headers, b""
        headers.append(("Content-Type", CRL_MEDIA_TYPE))
        if method == "HEAD":
            headers.append(("Content-Length", str(len(der))))
            return 200, headers, b""
        return 200, headers, der
