"""OCSP status checks of peer (client) certificates by a server (TS-0003 8.1.2.2; RFC 6960).

TS-0003 8.1.2.2 lets the relying party obtain certificate status with OCSP next to CRLs.
The MAF (certificate MAF Handshake, 8.8.2.2) and the MEF (certificate-based RSPF and
MEF Key Retrieval, 8.3.2.2) verify their clients' certificates inside the TLS handshake,
in a synchronous verify hook; a network query there would block the event loop.
:class:`PeerOCSPChecker` is the asynchronous half:

1. The verify hook (:class:`~m2msec.tls.pkiverify.PKIVerifyHook`) runs with the checker's
   :attr:`~PeerOCSPChecker.store` as its ``ocsp`` source and with :meth:`PeerOCSPChecker.hook_policy`
   (``require`` becomes ``if-available`` there, because the answer is still to come): a
   held REVOKED answer or a CRL entry refuses at once; a held current GOOD answer or a
   current CRL makes the status GOOD.
2. When the handshake completed in OpenSSL, :meth:`PeerOCSPChecker.status_check` (the
   engine's ``TLSConfig.peer_status_check``) returns None when every certificate below the
   trust anchor already has a status, else an awaitable that queries the responder for each
   UNDETERMINED certificate while the engine holds the server's final flight back
   (:mod:`m2msec.tls.engine`).
3. The responder URL is :attr:`~PeerOCSPChecker.url` when configured (every query goes
   there), else the http/https id-ad-ocsp accessLocation of the queried certificate's
   authorityInfoAccess.  That extension is read only after the path validated against the
   configured trust anchors, so the URL was written by a trusted CA, not chosen by the peer.
   A certificate without one gets no answer (UNDETERMINED).
4. Queries: :class:`~m2msec.pki.ocsp_http.OCSPClient` (httpx async client, POST, fresh
   nonce, :attr:`~PeerOCSPChecker.timeout` for the whole exchange, no redirects, 64 KiB),
   the answer verified strictly (:func:`m2msec.pki.ocsp.verify_response`, P17) before it
   enters the store; a transport failure, an HTTP error or a response that does not verify
   (forged, unsigned, another certificate, stale, nonce not echoed) is *no answer*, logged.
   Concurrent handshakes for one certificate share one query (keyed by issuer name hash,
   issuer key hash and serial); a cancelled handshake does not cancel the shared query.
   Held answers are reused by every connection of the process until their nextUpdate
   (a REVOKED answer for ever, as in :func:`m2msec.pki.ocsp.ocsp_evidence`).
   Failures are remembered too (:attr:`~PeerOCSPChecker.failure_cache`, seconds; 0 = off):
   a query that gave no GOOD or REVOKED answer (responder unreachable, timeout, HTTP error,
   malformed / unsigned / forged / unauthorised response, status *unknown*) is not sent again
   for the same certificate (same key as the shared query: issuer name hash, issuer key
   hash, serial) within that window; the remembered failure is the problem of the next
   handshakes and step 5 decides on it exactly as on a fresh one (``require`` refuses,
   ``if-available`` accepts): a cached failure never becomes GOOD.  Per certificate, not per
   responder: a failure met with one certificate decides nothing about another (a
   per-responder cache would let one client's failed query - or one transient error -
   refuse every client under ``require`` or wave every client through unchecked under
   ``if-available`` for the whole window), while the cost it removes - a full timeout on
   every reconnection of one client - is per certificate.  Concurrent handshakes of
   different certificates already overlap their queries on the event loop.
5. Decision after the queries (:func:`m2msec.pki.ocsp.ocsp_evidence` on the store):
   REVOKED anywhere on the path refuses (``certificate_revoked``, whatever the policy);
   under ``require`` a certificate with neither a current CRL (the hook's GOOD) nor a
   current verified GOOD answer is refused (REVOCATION_UNKNOWN, ``certificate_unknown``);
   under ``if-available`` it is accepted.  The policy ``off`` checks nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID

from m2msec.errors import M2MSecError
from m2msec.pki.crl import RevocationPolicy, RevocationStatus
from m2msec.pki.crl_fetch import load_https_ca, redact_url
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.ocsp import OCSPStore, _key_hash, _name_hash, ocsp_evidence
from m2msec.pki.ocsp_http import OCSPClient
from m2msec.pki.verify import VerifiedPeer

__all__ = ["DEFAULT_FAILURE_CACHE", "DEFAULT_PEER_OCSP_TIMEOUT", "PeerOCSPChecker", "ocsp_urls", "verified_peer_of"]

log = logging.getLogger(__name__)

DEFAULT_PEER_OCSP_TIMEOUT = 5.0  # below the 10 s handshake timeout of the services
MAX_PEER_OCSP_TIMEOUT = 9.0
DEFAULT_FAILURE_CACHE = 30.0  # maf.toml client_ocsp_failure_cache_s / mef.toml enrolee_ocsp_failure_cache_s
MAX_FAILURE_CACHE = 3600.0
_SCHEMES = ("http", "https")

Clock = Callable[[], datetime]


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The http/https id-ad-ocsp accessLocation URIs of ``cert``'s authorityInfoAccess ([] without)."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    out: list[str] = []
    for ad in aia:
        if ad.access_method == AuthorityInformationAccessOID.OCSP and \
                isinstance(ad.access_location, x509.UniformResourceIdentifier):
            u = ad.access_location.value
            parts = urllib.parse.urlsplit(u)
            if parts.scheme.lower() in _SCHEMES and parts.hostname and u not in out:
                out.append(u)
    return out


def verified_peer_of(peer_verification: Any) -> VerifiedPeer | None:
    """The :class:`VerifiedPeer` in a verify hook's result (itself, or inside a tuple)."""
    if isinstance(peer_verification, VerifiedPeer):
        return peer_verification
    if isinstance(peer_verification, tuple):
        return next((x for x in peer_verification if isinstance(x, VerifiedPeer)), None)
    return None


def _refuse(reason: VerificationReason, message: str) -> CertificateVerificationError:
    from m2msec.tls.pkiverify import tls_alert_for

    exc = CertificateVerificationError(reason, message)
    exc.tls_alert = tls_alert_for(reason)  # type: ignore[attr-defined]
    return exc


class PeerOCSPChecker:
    """Asynchronous OCSP status of verified peer certificates (see the module docstring).

    ``policy``: the service's ``revocation`` (``if-available`` or ``require``; ``off`` is a
    ValueError: with ``off`` nothing is checked, so a checker makes no sense).  ``url``: the
    responder for every query (None: the certificates' authorityInfoAccess).  ``https_ca``: a
    PEM file (or an ``ssl.SSLContext``) with the CAs of an https responder.  ``store``: held
    answers, shared with the verify hooks (a new one by default).  ``queries`` counts the
    queries sent (for the logs and the tests).  ``failure_cache``: seconds a failed query is
    remembered per certificate and reused instead of a new query (0: off; see the module
    docstring); ``failures_reused`` counts the reuses.
    """

    def __init__(self, *, clock: Clock, policy: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE,
                 url: str | None = None, https_ca: str | os.PathLike[str] | ssl.SSLContext | None = None,
                 timeout: float = DEFAULT_PEER_OCSP_TIMEOUT, store: OCSPStore | None = None,
                 max_serials: int = 100_000, failure_cache: float = 0.0) -> None:
        self.policy = RevocationPolicy(policy)
        if self.policy is RevocationPolicy.OFF:
            raise ValueError("OCSP status checks need revocation = if-available or require (not off)")
        if not 0 < timeout <= MAX_PEER_OCSP_TIMEOUT:
            raise ValueError(f"the OCSP timeout must be in (0, {MAX_PEER_OCSP_TIMEOUT:g}] seconds "
                             "(it runs inside the handshake timeout)")
        if url is not None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
                raise ValueError(f"not an http(s) OCSP URL: {redact_url(url)!r}")
        if max_serials <= 0:
            raise ValueError("max_serials must be positive")
        if isinstance(failure_cache, bool) or not 0 <= failure_cache <= MAX_FAILURE_CACHE:
            raise ValueError(f"the OCSP failure cache must be 0 (off) to {MAX_FAILURE_CACHE:g} seconds")
        self.clock = clock
        self.url = url
        self.https_ca: ssl.SSLContext | None = (
            https_ca if isinstance(https_ca, ssl.SSLContext) or https_ca is None else load_https_ca(https_ca))
        self.timeout = float(timeout)
        self.store = store if store is not None else OCSPStore()
        self.max_serials = max_serials
        self.queries = 0
        self.failure_cache = float(failure_cache)
        #: handshakes decided on a remembered failure instead of a new query
        self.failures_reused = 0
        self._failures: dict[tuple[bytes, bytes, int], tuple[datetime, str]] = {}  # key -> (until, problem)
        self._inflight: dict[tuple[bytes, bytes, int], asyncio.Task[str | None]] = {}

    def __repr__(self) -> str:
        url = redact_url(self.url) if self.url else "authorityInfoAccess"
        return f"PeerOCSPChecker({url!r}, policy={self.policy.value}, timeout={self.timeout:g})"

    def hook_policy(self) -> RevocationPolicy:
        """The ``revocation`` the synchronous verify hook runs with (the final word is ours)."""
        return RevocationPolicy.IF_AVAILABLE

    # ---------------------------------------------------------------- TLS engine glue

    def status_check(self, peer_verification: Any) -> Awaitable[None] | None:
        """``TLSConfig.peer_status_check``: None when nothing is undetermined, else the check."""
        vp = verified_peer_of(peer_verification)
        if vp is None:  # a certificate handshake the hook did not verify: no status can be known
            if self.policy is RevocationPolicy.REQUIRE:
                raise _refuse(VerificationReason.REVOCATION_UNKNOWN,
                              "the peer's certificate path was not verified: its status cannot be checked")
            return None
        if vp.trust_anchor is None:  # a pinned raw public key or certificate: no path, no status
            return None
        todo = self.undetermined(vp)
        if not todo:
            return None
        return self.check(vp, todo)

    @staticmethod
    def undetermined(vp: VerifiedPeer) -> list[tuple[x509.Certificate, x509.Certificate]]:
        """(certificate, issuer) of the path whose status the hook left UNDETERMINED."""
        if vp.trust_anchor is None:
            return []
        certs = [*vp.path, vp.trust_anchor]
        return [(certs[i], certs[i + 1]) for i, st in enumerate(vp.revocation)
                if st is RevocationStatus.UNDETERMINED and i + 1 < len(certs)]

    async def check(self, vp: VerifiedPeer,
                    todo: list[tuple[x509.Certificate, x509.Certificate]] | None = None) -> VerifiedPeer:
        """Query what is undetermined and decide (raises :class:`CertificateVerificationError`)."""
        todo = self.undetermined(vp) if todo is None else todo
        # per certificate of this path, keyed like the cache (issuer hashes + serial): a leaf and
        # a CA certificate of one path may share a serial number
        problems: dict[tuple[bytes, bytes, int], str] = {}
        fresh: set[tuple[bytes, bytes, int]] = set()  # queried now (not decided on a remembered failure)
        await asyncio.gather(*(self._query_shared(c, i, problems, fresh) for c, i in todo))
        now = self.clock()
        statuses = list(vp.revocation)
        unknown: list[str] = []
        for cert, issuer in todo:
            ev = ocsp_evidence(self.store, cert, issuer, now=now)
            what = f"serial {cert.serial_number:x} of {issuer.subject.rfc4514_string()!r}"
            if ev.revoked is not None:
                r = ev.revoked
                reason = r.revocation_reason.value if r.revocation_reason is not None else "unspecified"
                when = r.revocation_time.isoformat() if r.revocation_time is not None else "?"
                raise _refuse(VerificationReason.REVOKED, f"{what} was revoked at {when} (reason {reason}, OCSP)")
            if ev.good is not None:
                statuses[vp.path.index(cert)] = RevocationStatus.GOOD
                continue
            key = self._key(cert, issuer)
            why = problems.get(key) or (ev.problems[0] if ev.problems else "no usable answer")
            if key in fresh:
                self._remember_failure(cert, issuer, why, now)
            unknown.append(f"{what}: {why}")
        if unknown and self.policy is RevocationPolicy.REQUIRE:
            raise _refuse(VerificationReason.REVOCATION_UNKNOWN,
                          "no current CRL and no good OCSP answer for " + "; ".join(unknown))
        for u in unknown:
            log.info("OCSP status undetermined (accepted, revocation = if-available): %s", u)
        return replace(vp, revocation=tuple(statuses))

    # ---------------------------------------------------------------- queries

    @staticmethod
    def _key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes, int]:
        h = hashes.SHA256()
        return _name_hash(issuer, h), _key_hash(issuer, h), cert.serial_number

    def _remember_failure(self, cert: x509.Certificate, issuer: x509.Certificate, problem: str,
                          now: datetime) -> None:
        if self.failure_cache <= 0:
            return
        failures = self._failures
        if len(failures) >= self.max_serials:  # bound the memory: expired first, then the oldest half
            for k in [k for k, (until, _) in failures.items() if until <= now]:
                del failures[k]
            if len(failures) >= self.max_serials:
                for k in list(failures)[: len(failures) // 2 + 1]:
                    del failures[k]
        key = self._key(cert, issuer)
        failures.pop(key, None)  # re-inserted last (insertion order = age)
        failures[key] = (now + timedelta(seconds=self.failure_cache), problem)

    def remembered_failure(self, cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
        """The failure of ``cert``'s last query while it is within ``failure_cache`` (else None)."""
        if not self._failures:
            return None
        key = self._key(cert, issuer)
        hit = self._failures.get(key)
        if hit is None:
            return None
        until, problem = hit
        if self.clock() >= until:
            self._failures.pop(key, None)
            return None
        return problem

    async def _query_shared(self, cert: x509.Certificate, issuer: x509.Certificate,
                            problems: dict[tuple[bytes, bytes, int], str], fresh: set[tuple[bytes, bytes, int]]) -> None:
        key = self._key(cert, issuer)
        cached = self.remembered_failure(cert, issuer)
        if cached is not None:
            self.failures_reused += 1
            log.info("OCSP query for serial %x not repeated: it failed less than %gs ago (%s)",
                     cert.serial_number, self.failure_cache, cached)
            problems[key] = f"{cached} (remembered failure, no new query)"
            return
        fresh.add(key)
        task = self._inflight.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._query(cert, issuer))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._inflight.pop(k, None) if self._inflight.get(k) is t else None)
        problem = await asyncio.shield(task)  # a refused/closed handshake must not cancel the others' query
        if problem is not None:
            problems[key] = problem

    async def _query(self, cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
        """One query; the problem (None: an answer verified and is held in the store)."""
        urls = [self.url] if self.url is not None else ocsp_urls(cert)
        if not urls:
            return "the certificate names no OCSP responder (authorityInfoAccess)"
        url = urls[0]
        self.queries += 1
        try:
            client = OCSPClient(url, clock=self.clock, timeout=self.timeout, store=self.store,
                                https_ca=self.https_ca)
            res = await client.query(cert, issuer)
        except (M2MSecError, ValueError) as exc:
            log.warning("OCSP query for serial %x to %s failed: %s", cert.serial_number, redact_url(url), exc)
            return str(exc)
        log.info("OCSP answer for serial %x from %s: %s", cert.serial_number, redact_url(url), res.status.value)
        if self.store.serial_count() > self.max_serials:
            self.store.prune(self.clock())
        return None


# ---------------------------------------------------------------- configuration (maf.toml / mef.toml)


@dataclass(frozen=True)
class PeerOCSPSettings:
    """``client_ocsp*`` of maf.toml ``[tls]`` / ``enrolee_ocsp*`` of mef.toml ``[mef]``: on, URL, https CA,
    timeout, failure cache."""

    url: str | None = None
    https_ca: str | None = None  # resolved PEM file name
    timeout: float = DEFAULT_PEER_OCSP_TIMEOUT
    failure_cache: float = 0.0  # seconds a failed query is reused (0: off)

    def checker(self, *, clock: Clock, policy: RevocationPolicy | str) -> PeerOCSPChecker:
        return PeerOCSPChecker(clock=clock, policy=policy, url=self.url, https_ca=self.https_ca,
                               timeout=self.timeout, failure_cache=self.failure_cache)


def parse_peer_ocsp_settings(table: dict[str, Any], keys: tuple[str, str, str, str], *,
                             revocation: RevocationPolicy | str,
                             resolve: Callable[[str], str],
                             failure_cache_key: str | None = None) -> PeerOCSPSettings | None:
    """The settings of ``table`` under ``keys`` = (on/off, URL, https CA file, timeout), e.g.
    ``("client_ocsp", "client_ocsp_url", "client_ocsp_https_ca", "client_ocsp_timeout_s")``;
    None when the first is absent or false.  ValueError / TypeError for a malformed value, for
    the other keys without the first = true and for ``revocation = "off"``.  ``resolve`` turns a
    file name into a path (relative to the configuration file).  ``failure_cache_key``: the key
    of the failure cache in seconds (0 to 3600, default :data:`DEFAULT_FAILURE_CACHE`); without
    it the settings have no failure cache (0)."""
    on_key, url_key, ca_key, t_key = keys
    enabled = table.get(on_key, False)
    if not isinstance(enabled, bool):
        raise TypeError(f"{on_key} must be true or false")
    others = [k for k in (url_key, ca_key, t_key, failure_cache_key) if k is not None and k in table]
    if not enabled:
        if others:
            raise ValueError(f"{', '.join(others)} without {on_key} = true")
        return None
    if RevocationPolicy(revocation) is RevocationPolicy.OFF:
        raise ValueError(f'{on_key} = true needs revocation = "if-available" or "require" (not "off")')
    url = table.get(url_key)
    if url is not None:
        if not isinstance(url, str):
            raise TypeError(f"{url_key} must be an http:// or https:// URL")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
            raise ValueError(f"{url_key} must be an http:// or https:// URL with a host")
    https_ca = None
    if ca_key in table:
        f = table[ca_key]
        if not isinstance(f, str) or not f:
            raise TypeError(f"{ca_key} must be a PEM file name")
        https_ca = resolve(f)
        try:
            load_https_ca(https_ca)
        except (M2MSecError, ValueError, OSError) as exc:
            raise ValueError(f"{ca_key}: {exc}") from None
    timeout = table.get(t_key, DEFAULT_PEER_OCSP_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_PEER_OCSP_TIMEOUT:
        raise ValueError(f"{t_key} must be a number of seconds in (0, {MAX_PEER_OCSP_TIMEOUT:g}]")
    failure_cache = 0.0
    if failure_cache_key is not None:
        fc = table.get(failure_cache_key, DEFAULT_FAILURE_CACHE)
        if isinstance(fc, bool) or not isinstance(fc, int | float) or not 0 <= fc <= MAX_FAILURE_CACHE:
            raise ValueError(f"{failure_cache_key} must be a number of seconds from 0 (off) to "
                             f"{MAX_FAILURE_CACHE:g}")
        failure_cache = float(fc)
    return PeerOCSPSettings(url=url, https_ca=https_ca, timeout=float(timeout), failure_cache=failure_cache)


__all__ += ["PeerOCSPSettings", "parse_peer_ocsp_settings"]
