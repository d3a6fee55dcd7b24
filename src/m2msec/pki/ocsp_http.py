"""OCSP over HTTP (TS-0003 8.1.2.2 "Certificate status verification"; RFC 6960 Appendix A, RFC 5019).

TS-0003 8.1.2.2 allows the HTTP mapping of OCSP of RFC 6960 Appendix A.  Both ends:

* :class:`OCSPHTTPServer` - an asyncio HTTP/1.1 responder (h11, the stack of
  :mod:`m2msec.pki.crl_http`) around a ``respond(request_der) -> response_der`` callable
  (e.g. :meth:`m2msec.pki.ocsp.OCSPResponder.respond`, run in a worker thread):

  - ``POST <base>`` with ``Content-Type: application/ocsp-request`` and the DER request as
    body (at most :data:`MAX_REQUEST_SIZE` bytes, 413 beyond; 415 for another media type);
  - ``GET <base><url-encoded base64 of the DER request>`` (A.1.1);
  - the answer is ``200`` with ``application/ocsp-response`` for every OCSP-level result
    (``malformedRequest``/``unauthorized`` included); 404 outside ``<base>``, 405 for other
    methods (``Allow: GET, POST``);
  - caching (RFC 5019 6.2): a successful response to a GET without nonce carries
    ``Cache-Control: max-age=<seconds to nextUpdate>, public, no-transform, must-revalidate``,
    ``Last-Modified`` = thisUpdate, ``Expires`` = nextUpdate, ``ETag`` (quoted SHA-256 of the
    DER) and ``Date``; every other response (POST, a request with a nonce - its answer echoes
    the nonce -, unsuccessful responses) carries ``Cache-Control: no-store``.

* :class:`OCSPClient` - queries one configured responder URL with httpx (POST by default,
  or GET when the encoded request is at most 255 bytes and ``method="GET"``), one
  exchange within ``timeout`` (default 10 s), no redirects, a response of at most
  :data:`MAX_RESPONSE_SIZE` bytes, a fresh nonce per query (:func:`m2msec.pki.ocsp.build_request`)
  that the response must echo, and verification by :func:`m2msec.pki.ocsp.verify_response`
  before anything is returned or put in an :class:`~m2msec.pki.ocsp.OCSPStore`.  Failures
  raise :class:`OCSPFetchError` (transport, HTTP status, size) or
  :class:`~m2msec.pki.ocsp.OCSPResponseError` (the response).  As for CRLs (P13), the URL is
  configured, never taken from a peer certificate's authorityInfoAccess.  Over https the
  responder's certificate is verified against httpx's default store or, with ``https_ca``
  (a PEM file, :func:`m2msec.pki.crl_fetch.load_https_ca`), against those CAs only.
  :meth:`OCSPClient.fetch` also returns the DER of the verified response (for stapling,
  :mod:`m2msec.pki.ocsp_staple`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import h11
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from m2msec.errors import M2MSecError
from m2msec.net.connlimits import ConnectionLimits
from m2msec.net.plainhttp import PlainHTTPServer, header_value
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.pki.crl_fetch import _http_error, load_https_ca, redact_url
from m2msec.pki.ocsp import (
    DEFAULT_MAX_AGE,
    OCSPResult,
    OCSPStore,
    build_request,
    load_request,
    load_response,
    verify_response,
)

__all__ = [
    "DEFAULT_OCSP_TIMEOUT",
    "MAX_REQUEST_SIZE",
    "MAX_RESPONSE_SIZE",
    "OCSP_REQUEST_TYPE",
    "OCSP_RESPONSE_TYPE",
    "OCSPClient",
    "OCSPFetchError",
    "OCSPHTTPServer",
    "get_url",
]

log = logging.getLogger(__name__)

OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
MAX_REQUEST_SIZE = 16 * 1024
MAX_RESPONSE_SIZE = 64 * 1024
DEFAULT_OCSP_TIMEOUT = 10.0

RespondFn = Callable[[bytes], bytes]


class OCSPFetchError(M2MSecError):
    """The OCSP responder could not be queried (network, HTTP status, size)."""

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED


def get_url(base_url: str, request_der: bytes) -> str:
    """The RFC 6960 A.1 GET URL: ``base_url`` + '/' + url-encoded base64 of the DER request."""
    enc = urllib.parse.quote(base64.b64encode(request_der).decode("ascii"), safe="")
    return base_url.rstrip("/") + "/" + enc


# ------------------------------------------------------------------ server


class OCSPHTTPServer(PlainHTTPServer):
    """RFC 6960 Appendix A responder under ``base_path`` (default ``/``); ``clock`` gives aware UTC now."""

    max_body = MAX_REQUEST_SIZE

    def __init__(self, respond: RespondFn, *, host: str = "127.0.0.1", port: int = 0, base_path: str = "/",
                 idle_timeout: float = 30.0, clock: Callable[[], datetime] | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        if not base_path.startswith("/"):
            raise ValueError("base_path must start with '/'")
        super().__init__(host=host, port=port, idle_timeout=idle_timeout, limits=limits)
        self.respond = respond
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"OCSPHTTPServer({self.host}:{self.port}{self.base_path})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"

    async def _answer(self, req: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        method = req.method.decode("latin-1")
        target = req.target.decode("latin-1").split("?", 1)[0]
        text = [("Content-Type", "text/plain")]
        if not (target + "/").startswith(self.base_path) and target != self.base_path.rstrip("/"):
            return 404, text, b"not an OCSP path\n"
        if method == "POST":
            ctype = (header_value(req.headers, b"content-type") or "").split(";", 1)[0].strip().lower()
            if ctype != OCSP_REQUEST_TYPE:
                return 415, text, b"use Content-Type: application/ocsp-request\n"
            der, cacheable = body, False
        elif method == "GET":
            enc = target[len(self.base_path):] if target.startswith(self.base_path) else ""
            try:
                der = base64.b64decode(urllib.parse.unquote(enc), validate=True)
            except ValueError:
                der = b""  # answered with malformedRequest
            cacheable = True
        else:
            return 405, [("Allow", "GET, POST"), *text], b"use GET or POST\n"
        try:
            out = await asyncio.to_thread(self.respond, der)
        except Exception:  # noqa: BLE001 - no stack trace to the peer
            log.exception("OCSP response could not be produced")
            out = ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.INTERNAL_ERROR).public_bytes(serialization.Encoding.DER)
        headers = [("Content-Type", OCSP_RESPONSE_TYPE), ("Date", format_datetime(self.clock(), usegmt=True))]
        headers += self._cache_headers(der, out) if cacheable else [("Cache-Control", "no-store")]
        return 200, headers, out

    def _cache_headers(self, req_der: bytes, out: bytes) -> list[tuple[str, str]]:
        no_store = [("Cache-Control", "no-store")]
        try:
            req = load_request(req_der)
            if any(isinstance(e.value, x509.OCSPNonce) for e in req.extensions):
                return no_store
            resp = ocsp.load_der_ocsp_response(out)
            if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                return no_store
            this_update, next_update = resp.this_update_utc, resp.next_update_utc
        except (M2MSecError, ValueError):
            return no_store
        if next_update is None:
            return no_store
        max_age = max(0, int((next_update - self.clock()).total_seconds()))
        return [("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
                ("Last-Modified", format_datetime(this_update, usegmt=True)),
                ("Expires", format_datetime(next_update, usegmt=True)),
                ("ETag", '"' + hashlib.sha256(out).hexdigest() + '"')]




# ------------------------------------------------------------------ client


class OCSPClient:
    """Queries the responder at ``url`` and verifies the answer (see the module docstring).

    ``store``: verified responses are also added there (for path verification).
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None, timeout: float = DEFAULT_OCSP_TIMEOUT,
                 max_size: int = MAX_RESPONSE_SIZE, method: str = "POST", nonce: bool = True,
                 store: OCSPStore | None = None, max_age: Any = DEFAULT_MAX_AGE,
                 https_ca: str | os.PathLike[str] | ssl.SSLContext | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) OCSP URL: {redact_url(url)!r}")
        if method not in ("GET", "POST"):
            raise ValueError("method is GET or POST")
        if timeout <= 0 or max_size <= 0:
            raise ValueError("timeout and max_size must be positive")
        self.url = url
        self.clock = clock or (lambda: datetime.now(UTC))
        self.timeout = timeout
        self.max_size = max_size
        self.method = method
        self.nonce = nonce
        self.store = store
        self.max_age = max_age
        self.https_ca: ssl.SSLContext | None = (
            https_ca if isinstance(https_ca, ssl.SSLContext) or https_ca is None else load_https_ca(https_ca))

    def __repr__(self) -> str:
        return f"OCSPClient({redact_url(self.url)!r}, {self.method})"

    def _prepare(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, str, bytes, bytes | None]:
        req, nonce = build_request(cert, issuer, nonce=self.nonce)
        der = req.public_bytes(serialization.Encoding.DER)
        if self.method == "GET":
            url = get_url(self.url, der)
            if len(url) - len(self.url) <= 255:  # RFC 5019 5: POST beyond 255 bytes
                return "GET", url, b"", nonce
        return "POST", self.url, der, nonce

    def _finish(self, status: int, ctype: str, body: bytes, cert: x509.Certificate, issuer: x509.Certificate,
                nonce: bytes | None) -> tuple[OCSPResult, bytes]:
        if status != 200:
            raise OCSPFetchError(f"OCSP responder {redact_url(self.url)} answered HTTP {status}")
        if ctype.split(";", 1)[0].strip().lower() != OCSP_RESPONSE_TYPE:
            raise OCSPFetchError(f"OCSP responder {redact_url(self.url)} answered {ctype or 'no'} content type")
        resp = load_response(body)
        result = verify_response(resp, cert, issuer, now=self.clock(), nonce=nonce, max_age=self.max_age)
        if self.store is not None:
            self.store.add(resp)
        return result, body

    def _check_size(self, headers: httpx.Headers, n: int) -> None:
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        if declared > self.max_size or n > self.max_size:
            raise OCSPFetchError(f"the OCSP response is larger than {self.max_size} bytes")

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"timeout": httpx.Timeout(self.timeout), "follow_redirects": False, "trust_env": False}
        if self.https_ca is not None:
            kw["verify"] = self.https_ca
        return kw

    async def query(self, cert: x509.Certificate, issuer: x509.Certificate) -> OCSPResult:
        """Status of ``cert`` (issued by ``issuer``, already validated) from the responder."""
        return (await self.fetch(cert, issuer))[0]

    def query_sync(self, cert: x509.Certificate, issuer: x509.Certificate) -> OCSPResult:
        """Blocking form of :meth:`query`."""
        return self.fetch_sync(cert, issuer)[0]

    async def fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[OCSPResult, bytes]:
        """:meth:`query`, plus the DER of the verified response."""
        method, url, body, nonce = self._prepare(cert, issuer)
        headers = {"Accept": OCSP_RESPONSE_TYPE}
        if method == "POST":
            headers["Content-Type"] = OCSP_REQUEST_TYPE

        async def exchange() -> tuple[int, str, bytes]:
            async with httpx.AsyncClient(**self._kwargs()) as c, \
                    c.stream(method, url, content=body or None, headers=headers) as rsp:
                buf = bytearray()
                self._check_size(rsp.headers, 0)
                async for chunk in rsp.aiter_bytes():
                    buf += chunk
                    self._check_size(rsp.headers, len(buf))
                return rsp.status_code, rsp.headers.get("content-type", ""), bytes(buf)

        try:
            status, ctype, data = await asyncio.wait_for(exchange(), self.timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise OCSPFetchError(f"OCSP query to {redact_url(self.url)} timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise OCSPFetchError(f"OCSP query to {redact_url(self.url)} failed: {_http_error(exc)}") from None
        return self._finish(status, ctype, data, cert, issuer, nonce)

    def fetch_sync(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[OCSPResult, bytes]:
        """Blocking form of :meth:`fetch`."""
        method, url, body, nonce = self._prepare(cert, issuer)
        headers = {"Accept": OCSP_RESPONSE_TYPE}
        if method == "POST":
            headers["Content-Type"] = OCSP_REQUEST_TYPE
        deadline = time.monotonic() + self.timeout
        try:
            with httpx.Client(**self._kwargs()) as c, \
                    c.stream(method, url, content=body or None, headers=headers) as rsp:
                buf = bytearray()
                self._check_size(rsp.headers, 0)
                for chunk in rsp.iter_bytes():
                    buf += chunk
                    self._check_size(rsp.headers, len(buf))
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("deadline")
                status, ctype, data = rsp.status_code, rsp.headers.get("content-type", ""), bytes(buf)
        except httpx.TimeoutException:
            raise OCSPFetchError(f"OCSP query to {redact_url(self.url)} timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise OCSPFetchError(f"OCSP query to {redact_url(self.url)} failed: {_http_error(exc)}") from None
        return self._finish(status, ctype, data, cert, issuer, nonce)
