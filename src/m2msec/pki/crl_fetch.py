"""Fetching CRLs over HTTP(S) and keeping them fresh (TS-0003 8.1.2.2 "Certificate status
verification"; RFC 5280 4.2.1.13 cRLDistributionPoints, 5 CRL profile, 5.2.6 freshestCRL, 6.3.3).

TS-0003 8.1.2.2 asks for certificate status by CRL as in RFC 5280; where a relying party gets
the CRLs from is left open.  This module adds the usual source to the configured files of
:mod:`m2msec.pki.crl`: the http/https URIs of cRLDistributionPoints, or configured URLs.

* :func:`distribution_points` - the ``http``/``https`` fullName URIs of a certificate's
  cRLDistributionPoints, in order, without duplicates.  LDAP (and every other scheme), relative
  names (nameRelativeToCRLIssuer), distribution points with a cRLIssuer (indirect CRLs) and
  distribution points limited to some reasons (partitioned CRLs) are ignored: none of them can
  lead to a CRL that :func:`m2msec.pki.crl.check_path_revocation` would use.
* :class:`CRLFetcher` - GETs one URL with httpx: a timeout for the whole exchange (default 10 s),
  at most :data:`MAX_REDIRECTS` redirects, a body of at most :data:`DEFAULT_MAX_CRL_SIZE` bytes
  (refused when Content-Length or the bytes read exceed it), DER (one CRL) or PEM (one or more)
  bodies (:func:`m2msec.pki.crl.load_crls`), conditional GET with the last ETag
  (If-None-Match) and Last-Modified (If-Modified-Since) of the URL.  **Every CRL is verified
  before it enters the CRLStore** (:func:`verify_fetched_crl`): its issuer name must equal the
  subject of one of the configured issuer certificates (trust anchors and intermediate CAs)
  whose key verifies the signature and which passes the same usability checks as
  verification (SHA-2 signature, issuer keyUsage with cRLSign, no indirect or reason-partitioned
  CRL, a delta CRL only with a critical deltaCRLIndicator and a cRLNumber, no unknown critical
  extension; entries are checked at use), and its thisUpdate may be at most :data:`CLOCK_SKEW`
  in the future.  Delta CRLs (RFC 5280 5.2.4) are taken like complete ones; the
  :class:`~m2msec.pki.crl.CRLStore` keeps them beside their base.  A response is
  taken all or nothing: if any CRL of a PEM body fails, none is added.  A failed fetch or a
  refused CRL leaves the store unchanged (the previous CRL stays in force) and is logged
  (``m2msec.pki.crl_fetch``, WARNING, with the URL's userinfo removed, never a body).
  :meth:`CRLStore.add` then keeps the later issue (higher cRLNumber), so a replayed older CRL
  changes nothing.  Over https the server certificate is verified against httpx's default
  trust store, or - with ``https_ca`` (:func:`load_https_ca`) - against the CA certificates of
  that PEM file only (the usual choice when the CRL server has a certificate of a private PKI);
  the host name is always checked.  A TLS failure is a failed fetch like any other.
* :class:`CRLRefresher` - the schedule for a long-running service: :meth:`CRLRefresher.run`
  (an asyncio task, :meth:`start` / :meth:`stop`) fetches every URL at once and then each URL
  again after ``min(nextUpdate - margin - now, period)`` (never sooner than ``min_retry``);
  after a failure it retries after ``min_retry`` doubling up to ``period``.  The http(s)
  freshestCRL URIs (RFC 5280 5.2.6, :func:`freshest_crl_points`) of the complete CRLs fetched
  from the configured URLs are fetched too, each on its own schedule: a delta CRL usually has a
  much shorter nextUpdate than its base (RFC 5280 6.3.3 (a)(2)).  They come from CRLs that a
  configured issuer signed, like the distribution points of configured CA certificates; a
  peer's certificate never adds a URL.
  A verified delta whose BaseCRLNumber is above the cRLNumber of the complete CRL held for its
  stream (issuer, key id, scope) shows that a newer base is out (the status from the held base
  is then "superseded", :func:`m2msec.pki.crl.check_path_revocation`): the URLs that base came
  from are fetched again in the same round, at most once per ``min_retry`` per URL and never
  while the URL is backing off after a failure.
  :meth:`CRLRefresher.trigger` makes it fetch every URL now (e.g. on SIGHUP),
  :meth:`CRLRefresher.refresh_once` is the synchronous form for CLIs and tests.  The clock and
  the sleep function are injectable.  :meth:`CRLRefresher.crls` is what the refresher has put
  in the store: a reload of file CRLs must keep these (``store.replace([*files, *r.crls()])``,
  see :func:`m2msec.pki.cli.reload_crls_and_report` ``keep=``) so a SIGHUP does not drop them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from cryptography import x509

from m2msec.pki._background import BackgroundTask
from m2msec.pki.crl import (
    CRLStore,
    _crl_problem,
    _same_stream,
    crl_number,
    delta_base_number,
    is_delta_crl,
    load_crls,
)
from m2msec.pki.errors import CRLError

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_FETCH_TIMEOUT",
    "DEFAULT_MAX_CRL_SIZE",
    "DEFAULT_MIN_RETRY",
    "DEFAULT_REFRESH_MARGIN",
    "DEFAULT_REFRESH_PERIOD",
    "MAX_FRESHEST_URLS",
    "MAX_REDIRECTS",
    "CRLFetchError",
    "CRLFetcher",
    "CRLRefresher",
    "FetchOutcome",
    "FetchResult",
    "distribution_points",
    "freshest_crl_points",
    "load_https_ca",
    "verify_fetched_crl",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_CRL_SIZE = 10 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT = 10.0  # seconds, the whole exchange of one URL
MAX_REDIRECTS = 2
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a fetched CRL's thisUpdate may lie
DEFAULT_REFRESH_PERIOD = timedelta(hours=1)
DEFAULT_REFRESH_MARGIN = timedelta(minutes=5)
DEFAULT_MIN_RETRY = timedelta(seconds=30)
#: at most this many freshestCRL (delta CRL) URLs are followed per configured URL
MAX_FRESHEST_URLS = 4
_SCHEMES = ("http", "https")
_ACCEPT = "application/pkix-crl, application/x-pem-file;q=0.9, */*;q=0.5"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CRLFetchError(CRLError):
    """A CRL could not be fetched from a URL or the fetched CRL is refused."""


# ------------------------------------------------------------------ distribution points


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The http/https fullName URIs of ``cert``'s cRLDistributionPoints (see the module docstring).

    ``[]`` without the extension; :class:`CRLError` when the certificate's extensions cannot be parsed.
    """
    try:
        cdps = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        raise CRLError("the certificate's extensions cannot be parsed") from None
    return _http_full_names(cdps)


def freshest_crl_points(crl: x509.CertificateRevocationList) -> list[str]:
    """The http/https fullName URIs of a *complete* CRL's freshestCRL extension (RFC 5280 5.2.6:
    where its delta CRLs are published), filtered like :func:`distribution_points`.  ``[]`` for
    a delta CRL (5.2.6: the extension belongs in complete CRLs), without the extension, or when
    the CRL's extensions cannot be parsed."""
    try:
        exts = crl.extensions
        if any(isinstance(e.value, x509.DeltaCRLIndicator) for e in exts):
            return []
        fresh = exts.get_extension_for_class(x509.FreshestCRL).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return _http_full_names(fresh)


def _http_full_names(dps: Iterable[x509.DistributionPoint]) -> list[str]:
    out: list[str] = []
    for dp in dps:
        if dp.crl_issuer or dp.reasons or not dp.full_name:
            continue
        for gn in dp.full_name:
            if isinstance(gn, x509.UniformResourceIdentifier):
                scheme = urllib.parse.urlsplit(gn.value).scheme.lower()
                if scheme in _SCHEMES and gn.value not in out:
                    out.append(gn.value)
    return out


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise ValueError(f"not an http(s) CRL URL: {redact_url(url)!r}")
    return url


def redact_url(url: str) -> str:
    """``url`` without userinfo (for logs and messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def load_https_ca(path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS client context that trusts exactly the CA certificates (PEM) in ``path``, for CRL
    fetches over https (host name checked, TLS 1.2 or later).  :class:`CRLError` if the file
    cannot be read or holds no CA certificate."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CRLError(f"cannot load the https CA file {os.fspath(path)!r}: {type(exc).__name__}") from None
    if not ctx.get_ca_certs():
        raise CRLError(f"the https CA file {os.fspath(path)!r} holds no CA certificate")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ------------------------------------------------------------------ verification


def _name(n: x509.Name) -> str:
    try:
        return n.rfc4514_string() or "<empty name>"
    except ValueError:
        return "<unparsable name>"


def verify_fetched_crl(
    crl: x509.CertificateRevocationList, issuers: Iterable[x509.Certificate], *, now: datetime,
    clock_skew: timedelta = CLOCK_SKEW,
) -> x509.Certificate:
    """The issuer certificate that vouches for ``crl``, or :class:`CRLFetchError`.

    One of ``issuers`` (configured trust anchors / intermediate CAs) must have the CRL's issuer
    name as subject and pass :func:`m2msec.pki.crl._crl_problem` (signature with its key,
    SHA-2, cRLSign, no indirect or reason-partitioned CRL, a delta CRL only with a critical
    deltaCRLIndicator and a cRLNumber, no unknown critical extension); thisUpdate must not be later
    than ``now + clock_skew``.  A stale CRL (nextUpdate passed) is accepted: it still proves
    revocation, and the store keeps the later issue anyway.
    """
    candidates = [c for c in issuers if c.subject == crl.issuer]
    if not candidates:
        raise CRLFetchError(f"CRL issuer {_name(crl.issuer)!r} is not a configured issuer certificate")
    problem = ""
    for issuer in candidates:
        why = _crl_problem(crl, issuer)
        if why is None:
            if crl.last_update_utc > now + clock_skew:
                raise CRLFetchError(f"CRL of {_name(crl.issuer)!r} is not valid before "
                                    f"{crl.last_update_utc.isoformat()}")
            return issuer
        problem = problem or why
    raise CRLFetchError(f"CRL of {_name(crl.issuer)!r} refused: {problem}")


# ------------------------------------------------------------------ fetcher


class FetchOutcome(str, enum.Enum):
    """How one fetch ended."""

    UPDATED = "updated"  # at least one CRL of the response entered the store
    UNCHANGED = "unchanged"  # verified, but the store already held an equal or later issue
    NOT_MODIFIED = "not-modified"  # 304 to a conditional GET
    FAILED = "failed"  # transport/HTTP/parse/verification failure; the store is unchanged


@dataclass(frozen=True)
class FetchResult:
    """One fetch of ``url`` at ``at``."""

    url: str
    outcome: FetchOutcome
    at: datetime
    crls: tuple[x509.CertificateRevocationList, ...] = field(default=(), repr=False)  # verified (not on FAILED)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != FetchOutcome.FAILED


@dataclass
class _UrlState:
    etag: str | None = None
    last_modified: str | None = None
    held: CRLStore = field(default_factory=CRLStore)  # the latest verified issue per issuer and key

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        return tuple(self.held)


class CRLFetcher:
    """Fetches CRLs from http(s) URLs into ``store`` after verifying them against ``issuers``.

    :meth:`fetch` (async) and :meth:`fetch_sync` share one sans-I/O core; the only state is
    per URL: the conditional-GET validators and the latest verified CRLs (:meth:`crls`).
    ``client=`` of :meth:`fetch` / :meth:`fetch_sync` lends an httpx client (its own redirect,
    timeout and TLS settings then apply; the size cap and the total deadline still hold).
    ``https_ca``: a PEM file of the CA certificates that https CRL servers are verified against
    instead of httpx's default trust store (or an :class:`ssl.SSLContext`, see :func:`load_https_ca`).
    """

    def __init__(
        self,
        store: CRLStore,
        issuers: Iterable[x509.Certificate],
        *,
        clock: Callable[[], datetime] = _utc_now,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_size: int = DEFAULT_MAX_CRL_SIZE,
        max_redirects: int = MAX_REDIRECTS,
        clock_skew: timedelta = CLOCK_SKEW,
        https_ca: str | os.PathLike[str] | ssl.SSLContext | None = None,
    ) -> None:
        if timeout <= 0 or max_size <= 0 or max_redirects < 0:
            raise ValueError("timeout and max_size must be positive, max_redirects not negative")
        self.store = store
        self.issuers: tuple[x509.Certificate, ...] = tuple(issuers)
        self._clock = clock
        self.timeout = timeout
        self.max_size = max_size
        self.max_redirects = max_redirects
        self.clock_skew = clock_skew
        self.https_ca: ssl.SSLContext | None = (
            https_ca if isinstance(https_ca, ssl.SSLContext) or https_ca is None else load_https_ca(https_ca))
        self._state: dict[str, _UrlState] = {}

    def __repr__(self) -> str:
        return f"CRLFetcher(urls={len(self._state)}, issuers={len(self.issuers)}, store={self.store!r})"

    def crls(self) -> list[x509.CertificateRevocationList]:
        """Every CRL the fetcher last verified, over all URLs (to re-add after a ``store.replace``)."""
        return [c for s in list(self._state.values()) for c in s.crls]

    def crls_of(self, url: str) -> tuple[x509.CertificateRevocationList, ...]:
        s = self._state.get(url)
        return s.crls if s is not None else ()

    # -- sans-I/O core
    def _headers(self, url: str) -> dict[str, str]:
        h = {"Accept": _ACCEPT}
        s = self._state.get(url)
        if s is not None and s.crls:  # a validator is only useful while we still hold its content
            if s.etag:
                h["If-None-Match"] = s.etag
            if s.last_modified:
                h["If-Modified-Since"] = s.last_modified
        return h

    def _failed(self, url: str, at: datetime, why: str) -> FetchResult:
        log.warning("CRL fetch from %s failed: %s (previous CRLs kept)", redact_url(url), why)
        return FetchResult(url, FetchOutcome.FAILED, at, error=why)

    def _complete(self, url: str, at: datetime, status: int, headers: httpx.Headers, body: bytes) -> FetchResult:
        state = self._state.setdefault(url, _UrlState())
        if status == 304 and state.crls:
            log.info("CRL at %s not modified", redact_url(url))
            for c in state.crls:  # back into the store if a replace() without keep= dropped it
                self.store.add(c)
            return FetchResult(url, FetchOutcome.NOT_MODIFIED, at, crls=state.crls)
        if status != 200:
            return self._failed(url, at, f"HTTP status {status}")
        try:
            crls = load_crls(body)
            for c in crls:
                verify_fetched_crl(c, self.issuers, now=at, clock_skew=self.clock_skew)
        except CRLError as exc:
            return self._failed(url, at, str(exc.args[0]))
        # Remember the content before the store sees it: a concurrent replace([*files, *crls()])
        # then either includes these CRLs or runs before the add below.  ``held`` keeps the later
        # issue, so a replayed older CRL cannot come back through crls() either.
        for c in crls:
            state.held.add(c)
        state.etag = headers.get("etag")
        state.last_modified = headers.get("last-modified")
        added = [self.store.add(c) for c in crls]
        outcome = FetchOutcome.UPDATED if any(added) else FetchOutcome.UNCHANGED
        nums = ", ".join(str(crl_number(c)) for c in crls)
        log.info("CRL at %s %s (cRLNumber %s)", redact_url(url), outcome.value, nums)
        return FetchResult(url, outcome, at, crls=tuple(crls))

    def _too_big(self, headers: httpx.Headers) -> bool:
        try:
            return int(headers.get("content-length", "0")) > self.max_size
        except ValueError:
            return False

    def _client_kwargs(self) -> dict[str, object]:
        kw: dict[str, object] = {"timeout": httpx.Timeout(self.timeout), "follow_redirects": self.max_redirects > 0,
                                 "max_redirects": self.max_redirects, "trust_env": False}
        if self.https_ca is not None:
            kw["verify"] = self.https_ca
        return kw

    # -- I/O
    async def fetch(self, url: str, *, client: httpx.AsyncClient | None = None) -> FetchResult:
        """GET ``url`` (async); never raises for network, HTTP or CRL problems (see :class:`FetchResult`)."""
        _check_url(url)
        at = self._clock()
        own = client is None
        c = client or httpx.AsyncClient(**self._client_kwargs())  # type: ignore[arg-type]
        try:
            async def get() -> tuple[int, httpx.Headers, bytes]:
                async with c.stream("GET", url, headers=self._headers(url)) as rsp:
                    if rsp.status_code != 200:
                        return rsp.status_code, rsp.headers, b""
                    if self._too_big(rsp.headers):
                        raise CRLFetchError(f"the CRL is larger than {self.max_size} bytes")
                    buf = bytearray()
                    async for chunk in rsp.aiter_bytes():
                        buf += chunk
                        if len(buf) > self.max_size:
                            raise CRLFetchError(f"the CRL is larger than {self.max_size} bytes")
                    return rsp.status_code, rsp.headers, bytes(buf)

            try:
                status, headers, body = await asyncio.wait_for(get(), self.timeout)
            except TimeoutError:
                return self._failed(url, at, f"timed out after {self.timeout:g} s")
            except CRLFetchError as exc:
                return self._failed(url, at, str(exc.args[0]))
            except httpx.HTTPError as exc:
                return self._failed(url, at, _http_error(exc))
            except Exception as exc:  # noqa: BLE001 - a refresher task must survive anything (e.g. httpx.InvalidURL)
                return self._failed(url, at, type(exc).__name__)
            return self._complete(url, at, status, headers, body)
        finally:
            if own:
                await c.aclose()

    def fetch_sync(self, url: str, *, client: httpx.Client | None = None) -> FetchResult:
        """GET ``url`` (blocking); same results as :meth:`fetch`."""
        _check_url(url)
        at = self._clock()
        deadline = time.monotonic() + self.timeout
        own = client is None
        c = client or httpx.Client(**self._client_kwargs())  # type: ignore[arg-type]
        try:
            try:
                with c.stream("GET", url, headers=self._headers(url)) as rsp:
                    if rsp.status_code != 200:
                        return self._complete(url, at, rsp.status_code, rsp.headers, b"")
                    if self._too_big(rsp.headers):
                        raise CRLFetchError(f"the CRL is larger than {self.max_size} bytes")
                    buf = bytearray()
                    for chunk in rsp.iter_bytes():
                        buf += chunk
                        if len(buf) > self.max_size:
                            raise CRLFetchError(f"the CRL is larger than {self.max_size} bytes")
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("deadline")
                    status, headers, body = rsp.status_code, rsp.headers, bytes(buf)
            except httpx.TimeoutException:
                return self._failed(url, at, f"timed out after {self.timeout:g} s")
            except CRLFetchError as exc:
                return self._failed(url, at, str(exc.args[0]))
            except httpx.HTTPError as exc:
                return self._failed(url, at, _http_error(exc))
            except Exception as exc:  # noqa: BLE001 - see fetch()
                return self._failed(url, at, type(exc).__name__)
            return self._complete(url, at, status, headers, body)
        finally:
            if own:
                c.close()


def _http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "the https server's certificate does not verify (see https_ca)"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}"  # the message may echo the URL (userinfo): keep the class only


# ------------------------------------------------------------------ refresher


Sleep = Callable[[float], Awaitable[None]]


class CRLRefresher(BackgroundTask):
    """Keeps the CRLs of ``urls`` fresh in ``store`` (see the module docstring for the schedule).

    ``issuers``: the certificates allowed to sign the CRLs (trust anchors and intermediate CAs).
    ``clock`` and ``sleep`` are injectable; ``period``, ``margin`` and ``min_retry`` set the
    schedule; ``timeout``/``max_size``/``max_redirects``/``https_ca`` go to the :class:`CRLFetcher`.

    ``follow_freshest`` (default True): the http(s) freshestCRL URIs of the verified complete
    CRLs fetched from ``urls`` (:func:`freshest_crl_points`, at most :data:`MAX_FRESHEST_URLS`
    per URL) are fetched too, with the same fetcher (limits, timeout, verification) and each on
    its own schedule (a delta's short nextUpdate makes its URL come round sooner).  They are
    fetched in the round that discovers them and again whenever their base CRL changed;
    :attr:`delta_urls` lists them.  A delta CRL's own freshestCRL is never followed, and a URL
    the base no longer names is dropped (with what was fetched from it).

    **A newer base is fetched at once.**  When a round brings a verified delta CRL whose
    BaseCRLNumber is above the cRLNumber of the complete CRL of its stream (issuer name, key id,
    scope) held in the store - the CA issued a newer base, and until it is held the status from
    the old one is "superseded" (``require`` refuses) - every scheduled URL whose last verified
    CRLs include an older complete CRL of that stream is fetched again in the same round (after
    the round's other fetches; then the new deltas the new base names, if any).  Guards: at most
    one such early fetch per URL per ``min_retry`` (so a server that keeps serving the old base
    costs one extra GET per ``min_retry`` at most, and only when a delta was fetched), none while
    the URL is backing off after a failure (its back-off schedule stands), and the early fetch is
    an ordinary fetch: a failure keeps the previous CRLs and starts the usual back-off, a success
    reschedules the URL as usual.  :attr:`early_fetches` counts them.
    """

    _task_name = "CRL refresher"

    def __init__(
        self,
        store: CRLStore,
        urls: Sequence[str],
        issuers: Iterable[x509.Certificate],
        *,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Sleep | None = None,
        period: timedelta = DEFAULT_REFRESH_PERIOD,
        margin: timedelta = DEFAULT_REFRESH_MARGIN,
        min_retry: timedelta = DEFAULT_MIN_RETRY,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_size: int = DEFAULT_MAX_CRL_SIZE,
        max_redirects: int = MAX_REDIRECTS,
        https_ca: str | os.PathLike[str] | ssl.SSLContext | None = None,
        follow_freshest: bool = True,
    ) -> None:
        if period <= timedelta(0) or min_retry <= timedelta(0) or margin < timedelta(0):
            raise ValueError("period and min_retry must be positive, margin not negative")
        self.urls: tuple[str, ...] = tuple(dict.fromkeys(_check_url(u) for u in urls))
        self.fetcher = CRLFetcher(store, issuers, clock=clock, timeout=timeout, max_size=max_size,
                                  max_redirects=max_redirects, https_ca=https_ca)
        super().__init__(sleep)
        self._clock = clock
        self.period = period
        self.margin = margin
        self.min_retry = min(min_retry, period)
        self._due: dict[str, datetime] = {}
        self._failures: dict[str, int] = {}
        self.last: dict[str, FetchResult] = {}
        self.follow_freshest = follow_freshest
        self._freshest: dict[str, tuple[str, ...]] = {}  # configured URL -> delta CRL URLs its CRLs name
        self._early: dict[str, datetime] = {}  # base URL -> when it was last fetched early (newer base named)
        self.early_fetches = 0  # fetches made because a delta named a newer base than the one held

    def __repr__(self) -> str:
        return f"CRLRefresher(urls={len(self.urls)}, period={self.period}, store={self.fetcher.store!r})"

    @property
    def store(self) -> CRLStore:
        return self.fetcher.store

    def crls(self) -> list[x509.CertificateRevocationList]:
        """The verified CRLs fetched so far (keep them across a ``store.replace``)."""
        return self.fetcher.crls()

    # -- schedule (pure)
    def next_delay(self, result: FetchResult) -> timedelta:
        """How long after ``result`` its URL is fetched again."""
        if not result.ok:
            n = self._failures.get(result.url, 1)
            return min(self.period, self.min_retry * (2 ** min(n - 1, 30)))
        delay = self.period
        crls = self.fetcher.crls_of(result.url) or result.crls
        nexts = [c.next_update_utc for c in crls if c.next_update_utc is not None]
        if nexts:
            delay = min(delay, min(nexts) - self.margin - result.at)
        return max(delay, self.min_retry)

    def due(self, url: str) -> datetime | None:
        """When ``url`` is next fetched (None before its first fetch)."""
        return self._due.get(url)

    @property
    def delta_urls(self) -> tuple[str, ...]:
        """The freshestCRL URLs currently followed (not among :attr:`urls`), in discovery order."""
        out = dict.fromkeys(u for us in self._freshest.values() for u in us if u not in self.urls)
        return tuple(out)

    @property
    def scheduled_urls(self) -> tuple[str, ...]:
        """Every URL the refresher fetches: :attr:`urls`, then :attr:`delta_urls`."""
        return (*self.urls, *self.delta_urls)

    def _discover(self, result: FetchResult) -> list[str]:
        """Update the freshestCRL URLs named by the CRLs of a configured URL after ``result``;
        the delta URLs to fetch now (new ones, and all of them when the base changed)."""
        if not self.follow_freshest or not result.ok or result.url not in self.urls:
            return []
        names: list[str] = []
        for crl in self.fetcher.crls_of(result.url):
            for u in freshest_crl_points(crl):
                try:
                    _check_url(u)
                except ValueError:
                    continue
                if u not in names and u != result.url:
                    names.append(u)
        names = names[:MAX_FRESHEST_URLS]
        before = set(self.delta_urls)
        self._freshest[result.url] = tuple(names)
        after = set(self.delta_urls)
        for gone in before - after:  # no longer named by any base: stop fetching, forget its CRLs
            log.info("delta CRL URL %s no longer named by a freshestCRL; not fetched any more", redact_url(gone))
            for d in (self._due, self._failures, self.last, self.fetcher._state):
                d.pop(gone, None)
        new = [u for u in names if u in after and u not in before]
        for u in new:
            log.info("following freshestCRL %s of the CRL at %s", redact_url(u), redact_url(result.url))
        if result.outcome is FetchOutcome.UPDATED:
            return [u for u in names if u in after]
        return new

    def _newer_base_urls(self, results: Sequence[FetchResult], now: datetime) -> list[str]:
        """The scheduled URLs to fetch again at once because a verified delta among ``results``
        names a newer base (BaseCRLNumber above the cRLNumber of the complete CRL of its stream in
        the store, or no such CRL held) than the complete CRL of that stream they last brought;
        minus those fetched early less than ``min_retry`` ago or backing off after a failure."""
        out: list[str] = []
        for r in results:
            if not r.ok:
                continue
            for delta in r.crls:
                wanted = delta_base_number(delta)
                if wanted is None:
                    continue
                if any(_same_stream(b, delta) and (crl_number(b) or 0) >= wanted
                       for b in self.store.complete_for(delta.issuer)):
                    continue  # the newer base is held already (fetched, or from a file)
                for u in self.scheduled_urls:
                    if u in out or not any(
                            not is_delta_crl(c) and _same_stream(c, delta) and (crl_number(c) or 0) < wanted
                            for c in self.fetcher.crls_of(u)):
                        continue
                    if self._failures.get(u):
                        log.info("a delta CRL names complete CRL %d; %s is backing off after a failure, "
                                 "not fetched early", wanted, redact_url(u))
                        continue
                    last = self._early.get(u)
                    if last is not None and now - last < self.min_retry:
                        continue  # at most one early fetch per min_retry (a server still serving the old base)
                    log.info("a delta CRL names complete CRL %d, newer than the one held: fetching %s again now",
                             wanted, redact_url(u))
                    out.append(u)
        for u in out:
            self._early[u] = now
        self.early_fetches += len(out)
        return out

    def _record(self, result: FetchResult) -> FetchResult:
        if result.url not in self.urls and result.url not in self.delta_urls:
            return result  # a delta URL dropped while it was being fetched
        self.last[result.url] = result
        if result.ok:
            self._failures.pop(result.url, None)
        else:
            self._failures[result.url] = self._failures.get(result.url, 0) + 1
        self._due[result.url] = result.at + self.next_delay(result)
        return result

    def _follow(self, results: Sequence[FetchResult], fetched: Iterable[str]) -> list[str]:
        done = set(fetched)
        out: list[str] = []
        for r in results:
            out += [u for u in self._discover(r) if u not in done and u not in out]
        return out

    # -- one round
    def refresh_once(self, urls: Iterable[str] | None = None) -> list[FetchResult]:
        """Fetch ``urls`` (default: all scheduled) now, one after the other (blocking), then the
        delta CRL URLs their CRLs name that are new or whose base changed, then the URLs of a
        base that a fetched delta shows to be superseded (see the class docstring)."""
        todo = self.scheduled_urls if urls is None else tuple(urls)
        with httpx.Client(**self.fetcher._client_kwargs()) as client:  # type: ignore[arg-type]
            results = [self._record(self.fetcher.fetch_sync(u, client=client)) for u in todo]
            more = self._follow(results, todo)
            results += [self._record(self.fetcher.fetch_sync(u, client=client)) for u in more]
            early = self._newer_base_urls(results, self._clock())
            if early:  # a delta named a newer base: fetch it now, then the new deltas it names
                again = [self._record(self.fetcher.fetch_sync(u, client=client)) for u in early]
                more = self._follow(again, (*todo, *more, *early))
                results += again + [self._record(self.fetcher.fetch_sync(u, client=client)) for u in more]
        return results

    async def refresh(self, urls: Iterable[str] | None = None) -> list[FetchResult]:
        """Fetch ``urls`` (default: all scheduled) now, concurrently, then the delta CRL URLs
        their CRLs name that are new or whose base changed, then the URLs of a base that a
        fetched delta shows to be superseded (see the class docstring)."""
        todo = self.scheduled_urls if urls is None else tuple(urls)
        async with httpx.AsyncClient(**self.fetcher._client_kwargs()) as client:  # type: ignore[arg-type]
            results = [self._record(r) for r in await asyncio.gather(
                *(self.fetcher.fetch(u, client=client) for u in todo))]
            more = self._follow(results, todo)
            if more:
                results += [self._record(r) for r in await asyncio.gather(
                    *(self.fetcher.fetch(u, client=client) for u in more))]
            early = self._newer_base_urls(results, self._clock())
            if early:  # a delta named a newer base: fetch it now, then the new deltas it names
                again = [self._record(r) for r in await asyncio.gather(
                    *(self.fetcher.fetch(u, client=client) for u in early))]
                more = self._follow(again, (*todo, *more, *early))
                if more:
                    again += [self._record(r) for r in await asyncio.gather(
                        *(self.fetcher.fetch(u, client=client) for u in more))]
                results += again
        return results

    # -- long-running task
    def trigger(self) -> None:
        """Mark every URL (delta CRL URLs included) due now and wake :meth:`run` (e.g. on SIGHUP)."""
        now = self._clock()
        for u in self.scheduled_urls:
            self._due[u] = now
        self._wake_up()

    async def run(self) -> None:
        """Fetch all URLs now, then each when due, until cancelled."""
        if not self.urls:
            return
        self._wake = asyncio.Event()
        try:
            while True:  # a URL never fetched is due now
                now = self._clock()
                scheduled = self.scheduled_urls
                due = [u for u in scheduled if self._due.get(u, now) <= now]
                if due:
                    try:
                        await self.refresh(due)
                    except Exception:
                        log.exception("CRL refresh failed")
                        for u in due:
                            self._due[u] = now + self.min_retry
                    continue
                await self._nap((min(self._due[u] for u in scheduled) - now).total_seconds())
        finally:
            self._wake = None
