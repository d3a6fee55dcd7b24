"""A server's own OCSP response, kept fresh for stapling (TS-0003 8.1.2.2 "Certificate status
verification"; RFC 6960, RFC 6066 8 "Certificate Status Request", RFC 5019 4 and 6).

TS-0003 8.1.2.2 lets a relying party establish certificate status with OCSP.  With OCSP
stapling (RFC 6066 8) the *server* fetches the response for its own certificate and hands it to
clients in the TLS handshake, so clients need not reach the responder.  :class:`OCSPStapler`
does the fetching for a long-running service (``maf serve``, ``mef serve``, ``m2msec tls
server``); its :meth:`OCSPStapler.staple` is the ``TLSConfig.ocsp_staple`` source of
:mod:`m2msec.tls.engine`.

* Query: :class:`m2msec.pki.ocsp_http.OCSPClient` against one *configured* responder URL (as
  for CRLs, never a URL from the certificate's authorityInfoAccess), for the server certificate
  and its issuer (the next certificate of the configured chain); the request carries a fresh
  nonce and the answer is verified (signature by the issuer or a delegated responder, CertID,
  thisUpdate/nextUpdate, nonce) before it is kept.  Over https, ``https_ca`` names the CA
  certificates (PEM) the responder's certificate must chain to.
* What is stapled: the last verified response while it is current (now < nextUpdate; without
  nextUpdate, within ``max_age`` of thisUpdate), whatever its status - GOOD, and also REVOKED
  or UNKNOWN, which are logged at ERROR/WARNING: a server does not hide its own revocation, the
  client decides (a checking client then refuses the handshake with bad_certificate_status_response).
  Nothing (no staple) before the first success, and once the held response is no longer current.
  A failed query keeps the held response.
* Schedule (:meth:`OCSPStapler.next_delay`): after a success again at half of the remaining
  validity, ``(nextUpdate - now) / 2`` (without nextUpdate: ``(thisUpdate + max_age - now) / 2``),
  at most ``period`` (default 1 h) and at least ``min_retry`` (default 30 s); after ``n``
  failures in a row after ``min_retry * 2**(n-1)``, at most ``period`` and, while a current
  response is held, at most half its remaining validity (never below ``min_retry``).
  :meth:`OCSPStapler.run` (an asyncio task via :meth:`start`/:meth:`stop`) queries at once and
  then when due; :meth:`trigger` (SIGHUP) queries at once; :meth:`refresh_once` is the blocking
  form for CLIs and tests.  The clock and the sleep function are injectable.

Each process keeps its own stapler: ``--workers N`` means N queries per refresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509

from m2msec.errors import M2MSecError
from m2msec.pki._background import BackgroundTask
from m2msec.pki.crl_fetch import redact_url
from m2msec.pki.ocsp import DEFAULT_MAX_AGE, OCSPResult, OCSPStatus
from m2msec.pki.ocsp_http import DEFAULT_OCSP_TIMEOUT, OCSPClient

__all__ = [
    "DEFAULT_STAPLE_MIN_RETRY",
    "DEFAULT_STAPLE_PERIOD",
    "OCSPStapler",
    "StapleFetch",
]

log = logging.getLogger(__name__)

DEFAULT_STAPLE_PERIOD = timedelta(hours=1)
DEFAULT_STAPLE_MIN_RETRY = timedelta(seconds=30)

Sleep = Callable[[float], Awaitable[None]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StapleFetch:
    """The outcome of one query: ``result`` (verified) or ``error`` (why not)."""

    at: datetime
    result: OCSPResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


class OCSPStapler(BackgroundTask):
    """Keeps the verified OCSP response for ``cert`` (issued by ``issuer``) from ``url``.

    Use :meth:`staple` as ``TLSConfig.ocsp_staple``.  See the module docstring.
    """

    _task_name = "OCSP stapler"

    def __init__(self, url: str, cert: x509.Certificate, issuer: x509.Certificate, *,
                 clock: Callable[[], datetime] = _utc_now, sleep: Sleep | None = None,
                 https_ca: str | os.PathLike[str] | ssl.SSLContext | None = None,
                 timeout: float = DEFAULT_OCSP_TIMEOUT, period: timedelta = DEFAULT_STAPLE_PERIOD,
                 min_retry: timedelta = DEFAULT_STAPLE_MIN_RETRY, max_age: timedelta = DEFAULT_MAX_AGE) -> None:
        if period <= timedelta(0) or min_retry <= timedelta(0):
            raise ValueError("period and min_retry must be positive")
        if cert.issuer != issuer.subject:
            raise ValueError("the OCSP staple issuer certificate is not the issuer of the server certificate "
                             "(put the issuing CA certificate right after the leaf in the chain)")
        self.client = OCSPClient(url, clock=clock, timeout=timeout, https_ca=https_ca, max_age=max_age)
        self.cert = cert
        self.issuer = issuer
        super().__init__(sleep)
        self._clock = clock
        self.period = period
        self.min_retry = min(min_retry, period)
        self.max_age = max_age
        self._held: tuple[bytes, OCSPResult] | None = None
        self._failures = 0
        self.last: StapleFetch | None = None
        self._due: datetime | None = None

    def __repr__(self) -> str:
        held = self._held[1].status.value if self._held else "none"
        return f"OCSPStapler({redact_url(self.client.url)!r}, serial={self.cert.serial_number:x}, held={held})"

    @property
    def url(self) -> str:
        return self.client.url

    # -- what is stapled
    @property
    def held(self) -> OCSPResult | None:
        """The last verified response (current or not)."""
        return self._held[1] if self._held else None

    def _expiry(self, r: OCSPResult) -> datetime:
        return r.next_update if r.next_update is not None else r.this_update + self.max_age

    def current(self) -> OCSPResult | None:
        """The held response if it is still current."""
        if self._held is None:
            return None
        r = self._held[1]
        return r if r.current(self._clock(), self.max_age) else None

    def staple(self, cert: x509.Certificate) -> bytes | None:
        """``TLSConfig.ocsp_staple``: the DER to staple for ``cert`` (None: nothing current)."""
        if self._held is None or cert != self.cert or self.current() is None:
            return None
        return self._held[0]

    __call__ = staple

    # -- schedule (pure)
    def next_delay(self, fetch: StapleFetch) -> timedelta:
        """How long after ``fetch`` the responder is queried again."""
        if fetch.result is not None:
            delay = (self._expiry(fetch.result) - fetch.at) / 2
        else:
            delay = self.min_retry * (2 ** min(max(self._failures, 1) - 1, 30))
            held = self.current()
            if held is not None:
                delay = min(delay, (self._expiry(held) - fetch.at) / 2)
        return max(self.min_retry, min(delay, self.period))

    def due(self) -> datetime | None:
        """When the next query is due (None before the first)."""
        return self._due

    def _record(self, fetch: StapleFetch, der: bytes | None = None) -> StapleFetch:
        self.last = fetch
        what = f"serial {self.cert.serial_number:x} from {redact_url(self.url)}"
        if fetch.result is not None and der is not None:
            self._held = (der, fetch.result)
            self._failures = 0
            r = fetch.result
            if r.status is OCSPStatus.REVOKED:
                log.error("OCSP: our own certificate (%s) is REVOKED; stapling that answer", what)
            elif r.status is OCSPStatus.UNKNOWN:
                log.warning("OCSP: the responder does not know our certificate (%s); stapling that answer", what)
            else:
                log.info("OCSP staple for %s: good until %s", what,
                         r.next_update.isoformat() if r.next_update else "(no nextUpdate)")
        else:
            self._failures += 1
            kept = "keeping the current staple" if self.current() is not None else "no staple"
            log.warning("OCSP staple query for %s failed: %s (%s)", what, fetch.error, kept)
        self._due = fetch.at + self.next_delay(fetch)
        return fetch

    # -- one query
    async def refresh(self) -> StapleFetch:
        """Query the responder now (never raises for network or response problems)."""
        at = self._clock()
        try:
            result, der = await self.client.fetch(self.cert, self.issuer)
        except M2MSecError as exc:
            return self._record(StapleFetch(at, error=str(exc.args[0]) if exc.args else type(exc).__name__))
        except Exception as exc:  # noqa: BLE001 - a refresher task must survive anything
            return self._record(StapleFetch(at, error=type(exc).__name__))
        return self._record(StapleFetch(at, result=result), der)

    def refresh_once(self) -> StapleFetch:
        """Blocking form of :meth:`refresh`."""
        at = self._clock()
        try:
            result, der = self.client.fetch_sync(self.cert, self.issuer)
        except M2MSecError as exc:
            return self._record(StapleFetch(at, error=str(exc.args[0]) if exc.args else type(exc).__name__))
        except Exception as exc:  # noqa: BLE001 - see refresh()
            return self._record(StapleFetch(at, error=type(exc).__name__))
        return self._record(StapleFetch(at, result=result), der)

    # -- long-running task
    def trigger(self) -> None:
        """Query now (e.g. on SIGHUP) and wake :meth:`run`."""
        self._due = self._clock()
        self._wake_up()

    async def run(self) -> None:
        """Query now (unless a query is not yet due), then whenever due, until cancelled."""
        self._wake = asyncio.Event()
        try:
            while True:
                now = self._clock()
                if self._due is None or self._due <= now:
                    await self.refresh()
                    continue
                await self._nap((self._due - now).total_seconds())
        finally:
            self._wake = None


def stapler_for_chain(url: str, chain: list[x509.Certificate] | tuple[x509.Certificate, ...], **kw: object) -> OCSPStapler:
    """An :class:`OCSPStapler` for ``chain[0]`` with ``chain[1]`` as issuer (ValueError if the
    chain holds only the leaf: the issuer is needed for the OCSP CertID and the verification)."""
    if len(chain) < 2:
        raise ValueError("OCSP stapling needs the issuing CA certificate after the server certificate "
                         "in the certificate file")
    return OCSPStapler(url, chain[0], chain[1], **kw)  # type: ignore[arg-type]


__all__ += ["stapler_for_chain"]
