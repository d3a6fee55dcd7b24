"""The MAF server: MAF Handshake + HTTP/1.1 (h11) + JSON procedures (TS-0003 8.8.2, 10.2.2, 10.3.1).

One TLS 1.2 listener (:func:`m2msec.tls.aio.start_server`) accepts both MAF Handshake kinds of
8.8.2.2: TLS-PSK with ``psk_identity`` = KmID / ``psk`` = Km (looked up in the store) or a KeID
(Km fetched from the MEF), and certificate TLS with the client verified against the configured
MAF Client Certificate Information (:mod:`m2msec.tls.pkiverify`, 8.1.2.5).  After the handshake
:meth:`~m2msec.maf.service.MAFService.bind` fixes the authenticated identity of the session; no
request header can change it.  Each request is a ``POST`` of a JSON body to a procedure path
(:class:`~m2msec.maf.protocol.Procedure`); the response carries the JSON response message or
``{"rsc", "error"}``, the HTTP status of TS-0009 table 6.3.2-1 for that RSC and ``X-M2M-RSC``.
Procedures run in a worker thread (the store is blocking) inside one store transaction, except
Key Retrieval (:meth:`~m2msec.maf.service.MAFService.run_async`): its reads run in a worker thread
or from the retrieval cache, and its audit record is group-committed before the response is sent.
``reuse_port=True`` (Linux) sets SO_REUSEPORT so that several MAF processes, each with its own
store connection, listen on one host/port (``m2msec maf serve --workers N``).
OCSP stapling (TS-0003 8.1.2.2, RFC 6066 8): with ``[tls] ocsp_staple_url`` the certificate
handshake staples the MAF certificate's current OCSP response, kept by an
:class:`~m2msec.pki.ocsp_staple.OCSPStapler` (:meth:`MAFServerConfig.stapler`) that ``serve`` runs.
OCSP status of client certificates (TS-0003 8.1.2.2): with ``[tls] client_ocsp = true`` a
:class:`~m2msec.pki.ocsp_check.PeerOCSPChecker` (:meth:`MAFServerConfig.client_ocsp_checker`)
is the verify hook's second status source and the engine's ``peer_status_check``: a client
certificate whose status no current CRL or held answer gives is looked up while the server's
Finished is held back (:mod:`m2msec.tls.engine`); a refusal ends the handshake with
``certificate_revoked`` / ``certificate_unknown``, so no request of that connection is read.
Established certificate sessions (:mod:`m2msec.pki.session_status`): before each request the
session's path is held against the current client CRLs and held OCSP answers (re-checked
only after either changed); a certificate revoked since the handshake gets
ORIGINATOR_NOT_AUTHENTICATED (4106, HTTP 403, ``Connection: close``, audited as ``session``)
and the connection is closed.  ``[tls] client_ocsp_failure_cache_s`` reuses a failed query.
Connection limits (:mod:`m2msec.net.connlimits`): ``max_connections`` /
``max_connections_per_ip`` bound the open connections of the listener (per process); one
over a limit is aborted before the MAF Handshake, unaudited.  Failed MAF Handshakes are
audited at most ``HANDSHAKE_AUDIT_RATE`` per second (:class:`HandshakeAuditThrottle`): the
next record written says how many were left out, so unauthenticated peers cannot make the
MAF write to its store without bound.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import h11
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from m2msec.errors import M2MSecError, ParseError
from m2msec.keys import LABEL_CONNECTION
from m2msec.maf.mef import FetcherMEFClient, MEFClient
from m2msec.net.connlimits import ConnectionGate, ConnectionLimits
from m2msec.maf.protocol import ErrorBody, MAFError, Procedure, decode_body, encode_body
from m2msec.maf.service import (
    AUDIT_SYNC_INTERVAL_DEFAULT,
    MEF_RECHECK_INTERVAL_DEFAULT,
    MEF_RECHECK_INTERVAL_LIMIT,
    MAX_KEYS_PER_CLIENT_DEFAULT,
    MAX_KEYS_PER_CLIENT_LIMIT,
    MAX_KEYS_TOTAL_DEFAULT,
    MAX_KEYS_TOTAL_LIMIT,
    AdminConfig,
    MAFPeer,
    MAFService,
    SessionEnded,
)
from m2msec.net.h11io import BodyTooLarge, next_cycle, read_request, write_response
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import (
    CRLError,
    CRLRefresher,
    CRLStore,
    RevocationPolicy,
    distribution_points,
    load_crl_files,
    load_https_ca,
)
from m2msec.onem2m.timestamps import Clock
from m2msec.pki.ocsp_check import PeerOCSPChecker, PeerOCSPSettings, parse_peer_ocsp_settings
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain
from m2msec.store import KeyEncryptionKey, Store, open_store
from m2msec.store.autoseal import DEFAULT_INTERVAL_S as DEFAULT_SEAL_INTERVAL_S
from m2msec.store.autoseal import parse_interval as parse_seal_interval
from m2msec.tls.aio import TLSStreamWriter, start_server
from m2msec.tls.engine import CertCredentials, Role, TLSConfig, TLSContext
from m2msec.tomlkeys import check_keys

__all__ = ["HandshakeAuditThrottle", "MAFServer", "MAFServerConfig", "load_config"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class MAFServerConfig:
    """``maf.toml``: see :func:`load_config`."""

    fqdn: str
    store_url: str
    host: str = "127.0.0.1"
    port: int = 0
    admins: tuple[AdminConfig, ...] = ()
    max_registration_lifetime: timedelta = timedelta(days=365)
    max_key_lifetime: timedelta = timedelta(days=30)
    key_cache_ttl: timedelta = timedelta(seconds=1)  # Key Retrieval cache entry lifetime (0: no cache)
    max_keys_per_client: int = MAX_KEYS_PER_CLIENT_DEFAULT  # live Key Registrations per Source MAF Client
    max_keys_total: int = MAX_KEYS_TOTAL_DEFAULT  # live Key Registrations of all clients together
    credentials: CertCredentials | None = field(default=None, repr=False)
    client_trust_anchors: tuple[x509.Certificate, ...] = ()
    kek_file: str | None = None
    mef: dict[str, Any] | None = field(default=None, repr=False)
    client_crls: CRLStore | None = field(default=None, repr=False)  # TS-0003 8.1.2.2 certificate status
    client_crl_files: tuple[str, ...] = ()  # where client_crls came from (re-read on SIGHUP by ``serve``)
    revocation: RevocationPolicy = RevocationPolicy.IF_AVAILABLE
    client_crl_urls: tuple[str, ...] = ()  # CRLs fetched into client_crls (m2msec.pki.crl_fetch)
    client_crl_issuers: tuple[x509.Certificate, ...] = ()  # intermediate CAs that may sign fetched CRLs
    client_crl_refresh: timedelta = timedelta(hours=1)  # longest interval between two fetches of a URL
    client_crl_https_ca: str | None = None  # PEM CA file for https CRL servers (None: httpx's default store)
    ocsp_staple_url: str | None = None  # OCSP responder for the MAF's own certificate (stapling, RFC 6066 8)
    ocsp_staple_https_ca: str | None = None  # PEM CA file for an https responder (None: httpx's default store)
    client_ocsp: PeerOCSPSettings | None = None  # OCSP queries about client certificates (None: off)
    audit_seal_interval: float = DEFAULT_SEAL_INTERVAL_S  # seconds between seals by ``serve`` (0: off)
    audit_sync_interval: float = AUDIT_SYNC_INTERVAL_DEFAULT  # retrieval audit: disk sync deferred (0: none)
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits.default)  # per listener/process

    @property
    def mef_recheck_interval(self) -> float:
        """``[mef] recheck_interval_s`` (seconds; 0 = never; no ``[mef]``: 0)."""
        if not self.mef:
            return 0.0
        return float(self.mef.get("recheck_interval_s", MEF_RECHECK_INTERVAL_DEFAULT))

    def client_ocsp_checker(self, *, clock: Clock) -> PeerOCSPChecker | None:
        """The :class:`~m2msec.pki.ocsp_check.PeerOCSPChecker` of ``[tls] client_ocsp`` (None when off)."""
        if self.client_ocsp is None:
            return None
        return self.client_ocsp.checker(clock=clock, policy=self.revocation)

    @property
    def stapling_configured(self) -> bool:
        return self.ocsp_staple_url is not None and self.credentials is not None

    def stapler(self, *, clock: Clock) -> OCSPStapler | None:
        """The :class:`~m2msec.pki.ocsp_staple.OCSPStapler` of the MAF certificate (None without
        ``ocsp_staple_url``); the issuer is the certificate after the leaf in ``[tls] cert``."""
        if self.ocsp_staple_url is None or self.credentials is None:
            return None
        return stapler_for_chain(self.ocsp_staple_url, [self.credentials.certificate, *self.credentials.chain],
                                 clock=clock, https_ca=self.ocsp_staple_https_ca)

    def crl_refresher(self, *, clock: Clock) -> CRLRefresher | None:
        """The refresher of ``client_crl_urls`` into ``client_crls`` (None without URLs); fetched
        CRLs must be signed by a client trust anchor or a ``client_crl_issuers`` certificate."""
        if not self.client_crl_urls or self.client_crls is None:
            return None
        return CRLRefresher(self.client_crls, self.client_crl_urls,
                            (*self.client_trust_anchors, *self.client_crl_issuers), clock=clock,
                            period=self.client_crl_refresh, https_ca=self.client_crl_https_ca)

    def mef_client(self) -> MEFClient | None:
        """A :class:`FetcherMEFClient` over the MEF component's fetcher for the ``[mef]`` table."""
        if not self.mef:
            return None
        from m2msec.mef.client import MEFKeyFetcher, mef_tls_config  # noqa: PLC0415
        from m2msec.tls.engine import PSKCredentials  # noqa: PLC0415

        m = self.mef
        tls = mef_tls_config(psk=PSKCredentials.from_hex(str(m["psk_identity"]), str(m["psk_hex"])))
        fetcher = MEFKeyFetcher(str(m.get("host", "127.0.0.1")), int(m["port"]), tls, target_id=self.fqdn,
                                mef_fqdn=str(m["fqdn"]))
        return FetcherMEFClient(fetcher)


#: every key and table of maf.toml (docs/configuration.md); anything else is a configuration error
MAF_TOML_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"fqdn", "store", "kek_file", "host", "port", "max_registration_lifetime_s", "max_key_lifetime_s",
                   "key_cache_ttl_s", "max_keys_per_client", "max_keys_total", "audit_seal_interval_s",
                   "audit_sync_interval_s", "max_connections", "max_connections_per_ip", "mef", "tls", "admin"}),
    "mef": frozenset({"fqdn", "host", "port", "psk_identity", "psk_hex", "recheck_interval_s"}),
    "tls": frozenset({"cert", "key", "client_trust_anchors", "client_crls", "client_crl_urls", "client_crl_issuers",
                      "client_crl_from_cdp", "client_crl_refresh_s", "client_crl_https_ca", "revocation",
                      "ocsp_staple_url", "ocsp_staple_https_ca", "client_ocsp", "client_ocsp_url",
                      "client_ocsp_https_ca", "client_ocsp_timeout_s", "client_ocsp_failure_cache_s"}),
    "admin[]": frozenset({"fqdn", "client_config"}),
}
MAF_TOML_FREE = ("admin[].client_config",)  # the stakeholder's MAF Client Configuration: any members


def _pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_config(path: str | Path) -> MAFServerConfig:
    """Read ``maf.toml`` (every key, type and default: ``docs/configuration.md``)::

        fqdn = "maf.example.com"           # MAF-FQDN (MAF-ID)
        store = "sqlite:///var/lib/maf.db" # or postgresql://...
        kek_file = "kek.hex"               # else M2MSEC_KEK_FILE / M2MSEC_KEK
        host = "127.0.0.1"
        port = 8443
        max_registration_lifetime_s = 31536000
        max_key_lifetime_s = 2592000
        key_cache_ttl_s = 1                # Key Retrieval cache: entry lifetime in seconds, 0 = off;
                                           # other instances' changes invalidate it at once
        max_keys_per_client = 1000         # live Key Registrations per Source MAF Client (1-100000);
                                           # one more is refused with 4103 (HTTP 403)
        max_keys_total = 1000000           # live Key Registrations of all clients together
                                           # (1-10000000); one more: 4103 as well
        audit_seal_interval_s = 300        # serve seals the audit trail at start, this often and
                                           # at stop (m2msec.store.autoseal); 0 = off, else 0.5-86400
        audit_sync_interval_s = 1          # Key Retrieval / refusal audit records are committed
                                           # before the answer, synced to disk at most this much
                                           # later (0 = sync each commit first; 0-60)
        max_connections = 1024             # open connections per process (default 1024, or the
                                           # open-file limit minus 64 when smaller); more: aborted
        max_connections_per_ip = 128       # of them from one IPv4 address / IPv6 /64
        [mef]                              # optional: remotely provisioned clients (KeID -> Km)
        fqdn = "mef.example.com"
        host = "127.0.0.1"
        port = 8444
        psk_identity = "maf@mef.example.com"  # the MAF's credentials towards the MEF
        psk_hex = "..."
        recheck_interval_s = 300           # ask the MEF again about every Km it gave (0 = never):
                                           # a revoked Enrolee loses its KmID within this time
        [tls]                              # optional: certificate MAF Handshake
        cert = "maf.pem"                   # MAF certificate (+ chain)
        key = "maf.key"
        client_trust_anchors = "clients-ca.pem"
        client_crls = ["clients-ca.crl"]   # optional CRLs (PEM/DER) of the clients' PKI
        client_crl_urls = ["http://pki.example.com/issuing.crl"]  # optional: fetched and refreshed
        client_crl_issuers = "clients-sub-ca.pem"  # intermediate CAs whose CRLs are fetched
        client_crl_from_cdp = false        # also fetch the http(s) cRLDistributionPoints of
                                           # client_trust_anchors and client_crl_issuers
        client_crl_refresh_s = 3600        # refresh at least this often (earlier near nextUpdate)
        client_crl_https_ca = "crl-server-ca.pem"  # optional: trust anchors of https CRL servers
                                           # (default: httpx's default trust store)
        revocation = "if-available"        # off | if-available (default) | require
        client_ocsp = false                # true: ask an OCSP responder about client certificates
                                           # whose status no current CRL / held answer gives
        client_ocsp_url = "http://pki.example.com/ocsp"  # optional: every query goes there
                                           # (default: the certificate's authorityInfoAccess)
        client_ocsp_https_ca = "ocsp-server-ca.pem"  # optional: trust anchors of an https responder
        client_ocsp_timeout_s = 5          # per query, (0, 9]
        client_ocsp_failure_cache_s = 30   # a failed query is reused this long per certificate
                                           # (0 = off, at most 3600); revocation decides on it as on
                                           # a fresh failure
        [[admin]]
        fqdn = "sp.example.com"
        client_config = { httpPort = 8443 }  # optional MAF Client Configuration (8.8.2.4)
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ParseError(f"cannot read MAF configuration {p}: {exc}") from None
    check_keys(data, MAF_TOML_KEYS, source=f"invalid MAF configuration {p}", free=MAF_TOML_FREE)
    base = p.parent

    def rel(v: str) -> Path:
        q = Path(v)
        return q if q.is_absolute() else base / q

    try:
        admins = tuple(AdminConfig(a["fqdn"].lower(), a.get("client_config")) for a in data.get("admin", []))
        creds = None
        anchors: tuple[x509.Certificate, ...] = ()
        crls: CRLStore | None = None
        crl_paths: tuple[str, ...] = ()
        crl_urls: tuple[str, ...] = ()
        crl_issuers: tuple[x509.Certificate, ...] = ()
        crl_refresh = timedelta(hours=1)
        crl_https_ca: str | None = None
        staple_url: str | None = None
        staple_https_ca: str | None = None
        revocation = RevocationPolicy.IF_AVAILABLE
        client_ocsp: PeerOCSPSettings | None = None
        tls = data.get("tls")
        if tls:
            certs = _pem_certs(rel(tls["cert"]))
            key = load_pem_private_key(rel(tls["key"]).read_bytes(), None)
            creds = CertCredentials(key, certs[0], tuple(certs[1:]))  # type: ignore[arg-type]
            anchors = tuple(_pem_certs(rel(tls["client_trust_anchors"])))
            crl_files = tls.get("client_crls", [])
            crl_files = [crl_files] if isinstance(crl_files, str) else list(crl_files)
            crl_paths = tuple(str(rel(f)) for f in crl_files)
            if crl_paths:
                crls = CRLStore(load_crl_files(crl_paths))
            issuer_files = tls.get("client_crl_issuers", [])
            issuer_files = [issuer_files] if isinstance(issuer_files, str) else list(issuer_files)
            crl_issuers = tuple(c for f in issuer_files for c in _pem_certs(rel(f)))
            urls = tls.get("client_crl_urls", [])
            urls = [urls] if isinstance(urls, str) else [str(u) for u in urls]
            from_cdp = tls.get("client_crl_from_cdp", False)
            if not isinstance(from_cdp, bool):
                raise TypeError("client_crl_from_cdp must be true or false")
            if from_cdp:
                urls += [u for c in (*anchors, *crl_issuers) for u in distribution_points(c)]
            crl_urls = tuple(dict.fromkeys(urls))
            refresh_s = int(tls.get("client_crl_refresh_s", 3600))
            if refresh_s <= 0:
                raise ValueError("client_crl_refresh_s must be positive")
            if "client_crl_https_ca" in tls:
                ca_file = tls["client_crl_https_ca"]
                if not isinstance(ca_file, str) or not ca_file:
                    raise TypeError("client_crl_https_ca must be a PEM file name")
                crl_https_ca = str(rel(ca_file))
                load_https_ca(crl_https_ca)  # readable, holds CA certificates
            if crl_urls:
                crl_refresh = timedelta(seconds=refresh_s)
                if crls is None:
                    crls = CRLStore()
                CRLRefresher(crls, crl_urls, ())  # validates the URLs (http/https with a host)
            revocation = RevocationPolicy(tls.get("revocation", RevocationPolicy.IF_AVAILABLE.value))
            if "ocsp_staple_https_ca" in tls:
                ca_file = tls["ocsp_staple_https_ca"]
                if not isinstance(ca_file, str) or not ca_file:
                    raise TypeError("ocsp_staple_https_ca must be a PEM file name")
                staple_https_ca = str(rel(ca_file))
                load_https_ca(staple_https_ca)  # readable, holds CA certificates
            if "ocsp_staple_url" in tls:
                staple_url = tls["ocsp_staple_url"]
                if not isinstance(staple_url, str):
                    raise TypeError("ocsp_staple_url must be an http(s) URL")
                try:  # the URL (http/https with a host) and the issuer after the leaf in cert
                    stapler_for_chain(staple_url, certs)
                except ValueError as exc:
                    raise ValueError(f"ocsp_staple_url: {exc}") from None
            elif staple_https_ca is not None:
                raise ValueError("ocsp_staple_https_ca without ocsp_staple_url")
            client_ocsp = parse_peer_ocsp_settings(
                tls, ("client_ocsp", "client_ocsp_url", "client_ocsp_https_ca", "client_ocsp_timeout_s"),
                revocation=revocation, resolve=lambda f: str(rel(f)),
                failure_cache_key="client_ocsp_failure_cache_s")
        kek_file = data.get("kek_file")
        if "mef" in data:  # checked here, not first when serve builds the MEF client
            mef_t = data["mef"]
            missing = [k for k in ("fqdn", "port", "psk_identity", "psk_hex") if k not in mef_t]
            if missing:
                raise KeyError(f"[mef] needs {', '.join(missing)}")
            int(mef_t["port"])
            bytes.fromhex(str(mef_t["psk_hex"]))
            recheck = mef_t.get("recheck_interval_s", MEF_RECHECK_INTERVAL_DEFAULT)
            if (isinstance(recheck, bool) or not isinstance(recheck, (int, float))
                    or not (recheck == 0 or 10 <= recheck <= MEF_RECHECK_INTERVAL_LIMIT)):
                raise ValueError(f"[mef] recheck_interval_s must be 0 (never) or 10 to {int(MEF_RECHECK_INTERVAL_LIMIT)}")
        cache_ttl = float(data.get("key_cache_ttl_s", 1))
        if not 0 <= cache_ttl <= 86400:
            raise ValueError("key_cache_ttl_s must be 0 (no cache) to 86400")
        max_keys = data.get("max_keys_per_client", MAX_KEYS_PER_CLIENT_DEFAULT)
        if (isinstance(max_keys, bool) or not isinstance(max_keys, int)
                or not 1 <= max_keys <= MAX_KEYS_PER_CLIENT_LIMIT):
            raise ValueError(f"max_keys_per_client must be an integer from 1 to {MAX_KEYS_PER_CLIENT_LIMIT}")
        max_total = data.get("max_keys_total", MAX_KEYS_TOTAL_DEFAULT)
        if (isinstance(max_total, bool) or not isinstance(max_total, int)
                or not 1 <= max_total <= MAX_KEYS_TOTAL_LIMIT):
            raise ValueError(f"max_keys_total must be an integer from 1 to {MAX_KEYS_TOTAL_LIMIT}")
        seal_interval = parse_seal_interval(data.get("audit_seal_interval_s", DEFAULT_SEAL_INTERVAL_S))
        sync_interval = data.get("audit_sync_interval_s", AUDIT_SYNC_INTERVAL_DEFAULT)
        if isinstance(sync_interval, bool) or not isinstance(sync_interval, int | float) or not 0 <= sync_interval <= 60:
            raise ValueError("audit_sync_interval_s must be a number from 0 (sync every audit commit) to 60")
        limits = ConnectionLimits.from_toml(data, total_key="max_connections", source_key_name="max_connections_per_ip")
        return MAFServerConfig(
            fqdn=str(data["fqdn"]), store_url=str(data["store"]), host=str(data.get("host", "127.0.0.1")),
            port=int(data.get("port", 0)), admins=admins,
            max_registration_lifetime=timedelta(seconds=int(data.get("max_registration_lifetime_s", 365 * 86400))),
            max_key_lifetime=timedelta(seconds=int(data.get("max_key_lifetime_s", 30 * 86400))),
            key_cache_ttl=timedelta(seconds=cache_ttl), max_keys_per_client=max_keys, max_keys_total=max_total,
            credentials=creds, client_trust_anchors=anchors, client_crls=crls, client_crl_files=crl_paths,
            revocation=revocation, client_crl_urls=crl_urls, client_crl_issuers=crl_issuers,
            client_crl_refresh=crl_refresh, client_crl_https_ca=crl_https_ca,
            ocsp_staple_url=staple_url, ocsp_staple_https_ca=staple_https_ca, client_ocsp=client_ocsp,
            kek_file=str(rel(kek_file)) if kek_file else None, mef=dict(data["mef"]) if "mef" in data else None,
            audit_seal_interval=seal_interval, audit_sync_interval=float(sync_interval), connection_limits=limits,
        )
    except (KeyError, TypeError, ValueError, OSError, CRLError) as exc:
        raise ParseError(f"invalid MAF configuration {p}: {type(exc).__name__}: {exc}") from None


def open_config_store(cfg: MAFServerConfig, *, clock: Clock | None = None) -> Store:
    kek = KeyEncryptionKey.from_file(cfg.kek_file) if cfg.kek_file else KeyEncryptionKey.from_env()
    return open_store(cfg.store_url, kek, clock=clock)


def _http(rsc: RSC, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    return rsc.http_status, [("Content-Type", CONTENT_TYPE), ("X-M2M-RSC", str(int(rsc)))], body


def _error(exc: M2MSecError) -> tuple[int, list[tuple[str, str]], bytes]:
    return _http(exc.rsc, encode_body(ErrorBody(int(exc.rsc), exc.args[0] if exc.args else "")))


#: failed MAF Handshakes audited per second at most (a burst of up to this many at once)
HANDSHAKE_AUDIT_RATE = 10.0


class HandshakeAuditThrottle:
    """A token bucket for audit records of failed handshakes (unauthenticated peers).

    :meth:`take` returns the number of failures left out since the last record (0 usually),
    or None when this failure must not be written (it is counted instead)."""

    def __init__(self, rate: float = HANDSHAKE_AUDIT_RATE, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()
        self.left_out = 0  # failures not audited since the last record written

    def take(self) -> int | None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            self.left_out += 1
            return None
        self._tokens -= 1.0
        n, self.left_out = self.left_out, 0
        return n


class MAFServer:
    """An asyncio MAF instance.  ``async with MAFServer(service, ...) as srv: srv.port``."""

    def __init__(self, service: MAFService, *, host: str = "127.0.0.1", port: int = 0,
                 credentials: CertCredentials | None = None, idle_timeout: float = 30.0,
                 reuse_port: bool = False,
                 ocsp_staple: Callable[[x509.Certificate], bytes | None] | None = None,
                 limits: ConnectionLimits | None = None, mef_recheck_interval: float = 0.0) -> None:
        if reuse_port and not sys.platform.startswith("linux"):
            raise ValueError("reuse_port (several MAF processes on one port) needs Linux SO_REUSEPORT "
                             f"load balancing; not available on {sys.platform}")
        self.service = service
        #: seconds between :meth:`MAFService.recheck_mef_credentials` passes while serving (0: none)
        self.mef_recheck_interval = mef_recheck_interval
        self._recheck_task: asyncio.Task[None] | None = None
        self.reuse_port = reuse_port
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        #: open connections of this listener (limits, counters of refusals)
        self.connections = ConnectionGate(limits, name=f"MAF {service.fqdn}")
        self._handshake_audit = HandshakeAuditThrottle()
        kw: dict[str, Any] = {}
        if credentials is not None:
            if not service.client_trust_anchors:
                raise ValueError("certificate MAF Handshake needs MAF Client trust anchors")
            kw = {"credentials": credentials, "trust_anchors": service.client_trust_anchors,
                  "verify_peer": service.tls_verify_hook(), "verify_peer_authoritative": True,
                  "ocsp_staple": ocsp_staple,
                  "peer_status_check": service.client_ocsp.status_check if service.client_ocsp else None}
        if service.mef is not None:
            # KeID handshakes: the MEF fetch runs before the PSK callback, off the loop's critical path
            kw["psk_prefetch"] = service.psk_prefetch
            service.prefetch_only = True
        self.tls_context = TLSContext(TLSConfig(role=Role.SERVER, psk_lookup=service.psk_lookup, **kw))
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"MAFServer({self.service.fqdn!r}, {self.host}:{self.port})"

    async def start(self) -> MAFServer:
        self.service.start_cache_listener()  # PostgreSQL: connects while the first clients handshake
        self._server = await start_server(self._connection, self.host, self.port, self.tls_context,
                                          on_handshake_error=self._handshake_failed, reuse_port=self.reuse_port,
                                          limits=self.connections)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.mef_recheck_interval > 0 and self.service.mef is not None:
            self._recheck_task = asyncio.get_running_loop().create_task(self._recheck_mef())
        return self

    def set_mef_recheck_interval(self, seconds: float) -> None:
        """A new ``[mef] recheck_interval_s`` (SIGHUP): the next pass comes ``seconds`` from now;
        0 ends the passes."""
        self.mef_recheck_interval = seconds
        task, self._recheck_task = self._recheck_task, None
        if task is not None:
            task.cancel()
        if seconds > 0 and self._server is not None and self.service.mef is not None:
            self._recheck_task = asyncio.get_running_loop().create_task(self._recheck_mef())

    async def _recheck_mef(self) -> None:
        """Every ``mef_recheck_interval`` s: which Km from the MEF are revoked (see the service)."""
        while True:
            await asyncio.sleep(self.mef_recheck_interval)
            try:
                await self.service.recheck_mef_credentials()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("MEF re-check pass failed")

    async def close(self) -> None:
        """Stop listening, wait for the open connections to end, then put the audit records
        committed so far on disk (``audit_sync_interval``)."""
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            try:
                await self._recheck_task
            except asyncio.CancelledError:
                pass
            self._recheck_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            await asyncio.to_thread(self.service.audit.sync)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> MAFServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _handshake_failed(self, exc: Exception, peer: Any) -> None:
        left_out = self._handshake_audit.take()
        if left_out is None:
            return  # over the rate: counted, reported with the next record and log line written
        if left_out:
            log.info("MAF Handshake with %s failed: %s (%d earlier failures not logged or audited)",
                     peer, exc, left_out)
        else:
            log.info("MAF Handshake with %s failed: %s", peer, exc)
        details: dict[str, Any] = {"reason": str(exc)}
        if left_out:
            details["not_audited_before"] = left_out
        try:
            self.service.store.append_audit("maf", "handshake", str(peer[0]) if peer else "?", "refused", details)
        except M2MSecError:  # pragma: no cover
            pass

    async def _connection(self, reader: asyncio.StreamReader, writer: TLSStreamWriter) -> None:
        engine = writer.engine
        try:
            peer = self.service.bind(engine)
        except M2MSecError as exc:
            self._handshake_failed(exc, writer.get_extra_info("peername"))
            return
        cert_status = self.service.session_status(peer)  # None for PSK sessions: nothing per request
        exported: list[tuple[bytes, bytes]] = []

        def exporter() -> tuple[bytes, bytes]:
            if not exported:
                exported.append(engine.export_onem2m_key(LABEL_CONNECTION))
            return exported[0]

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                try:
                    event, body = await read_request(conn, reader, MAX_BODY, timeout=self.idle_timeout)
                except BodyTooLarge:
                    status, headers, out = _error(MAFError(f"body larger than {MAX_BODY} bytes"))
                    headers.append(("Connection", "close"))
                    await self._send(conn, writer, status, headers, out)
                    return
                if event is None:
                    return
                if cert_status is not None and (why := cert_status.revoked()) is not None:
                    # revoked since the handshake (a refreshed CRL, a held OCSP answer): refuse, close
                    status, headers, out = _error(await self.service.refuse_revoked_session(peer, why))
                    headers.append(("Connection", "close"))
                    await self._send(conn, writer, status, headers, out)
                    return
                status, headers, out = await self._dispatch(peer, event, body, exporter)
                await self._send(conn, writer, status, headers, out)
                if not next_cycle(conn):
                    return
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status, headers, out = _error(MAFError(f"malformed HTTP request: {exc}"))
                try:
                    await self._send(conn, writer, status, headers, out)
                except (h11.LocalProtocolError, ConnectionError):
                    pass
        except (asyncio.TimeoutError, ConnectionError, h11.LocalProtocolError):
            return

    @staticmethod
    async def _send(conn: h11.Connection, writer: TLSStreamWriter, status: int,
                    headers: list[tuple[str, str]], body: bytes) -> None:
        hdrs = [*headers, ("Content-Length", str(len(body)))]
        await write_response(conn, writer, status, hdrs, body)

    async def _dispatch(self, peer: MAFPeer, req: h11.Request, body: bytes,
                        exporter: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        path = req.target.decode("ascii", "replace").split("?", 1)[0]
        proc = Procedure.by_path(path)
        if proc is None:
            return _error(MAFError(f"no MAF procedure at {path!r}", rsc=RSC.NOT_FOUND))
        if req.method != b"POST":
            return _error(MAFError(f"{proc.path} takes POST", rsc=RSC.OPERATION_NOT_ALLOWED))
        ctype = next((v for k, v in req.headers if k.lower() == b"content-type"), None)
        if ctype is not None and ctype.split(b";")[0].strip().lower() != CONTENT_TYPE.encode():
            return _error(MAFError(f"unsupported media type {ctype.decode('latin-1')!r}",
                                   rsc=RSC.UNSUPPORTED_MEDIA_TYPE))
        try:
            request = decode_body(proc.request_type, body)
            response = await self.service.run_async(proc, peer, request, exporter)
        except SessionEnded as exc:  # the session's credential was removed: answer, then close
            status, headers, out = _error(exc)
            headers.append(("Connection", "close"))
            return status, headers, out
        except M2MSecError as exc:
            return _error(exc)
        except Exception:  # noqa: BLE001 - never leak internals
            log.exception("MAF procedure %s failed", proc.name)
            return _error(MAFError("internal error", rsc=RSC.INTERNAL_SERVER_ERROR))
        return _http(proc.success, encode_body(response))


def build_server(cfg: MAFServerConfig, store: Store, *, clock: Clock, mef: MEFClient | None = None,
                 reuse_port: bool = False, stapler: OCSPStapler | None = None) -> MAFServer:
    """The MAF of ``cfg``; ``stapler`` (see :meth:`MAFServerConfig.stapler`) staples its OCSP response."""
    service = MAFService(store, cfg.fqdn, admins=cfg.admins, clock=clock, mef=mef or cfg.mef_client(),
                         client_trust_anchors=cfg.client_trust_anchors, client_crls=cfg.client_crls,
                         revocation=cfg.revocation, max_registration_lifetime=cfg.max_registration_lifetime,
                         max_key_lifetime=cfg.max_key_lifetime, key_cache_ttl=cfg.key_cache_ttl,
                         max_keys_per_client=cfg.max_keys_per_client, max_keys_total=cfg.max_keys_total,
                         client_ocsp=cfg.client_ocsp_checker(clock=clock),
                         audit_sync_interval=cfg.audit_sync_interval)
    return MAFServer(service, host=cfg.host, port=cfg.port, credentials=cfg.credentials, reuse_port=reuse_port,
                     ocsp_staple=stapler.staple if stapler is not None else None, limits=cfg.connection_limits,
                     mef_recheck_interval=cfg.mef_recheck_interval)


__all__ += ["build_server", "open_config_store"]
