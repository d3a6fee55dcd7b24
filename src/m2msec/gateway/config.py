"""Gateway configuration file (TOML), see :mod:`m2msec.gateway` for the format.

Keys and KEK are read from files or hex values named in the file; paths are relative to
the configuration file.  Nothing here logs or reprs key bytes.

``[saef]``, ``[[saef_psk]]`` and ``[[saef_cert]]`` configure the SAEF listener (the
Registrar CSE side of TS-0003 8.2 security associations with AEs, 7.2.1): the CSE's
Credential Configuration (8.1.2.3), one Provisioned Symmetric Key entry (Kpsa, KpsaID and
the bound AE-ID, 8.2.2.1) or Association Configuration (CertNameA, RootOfTrustA, IdA,
8.2.2.2) per authorised AE, and ``require_saef_for``, the originators the plain listener
refuses (see :mod:`m2msec.gateway.saef`).  ``[saef_maf]`` adds the MAF-based SAEF (8.2.2.3): the
gateway's own MAF Client configuration (8.8.3.1: Km/KmID or a certificate, the MAF's address,
MAF-FQDN and adminFQDN), with which it retrieves Kc for a Key Identifier an AE presents as
``psk_identity`` (see :mod:`m2msec.gateway.saefmaf`).

Certificate status of the AEs' certificates (TS-0003 8.1.2.2), per ``[[saef_cert]]``: CRL files
(``crls``), CRLs fetched over http(s) and kept fresh (``crl_urls``, ``crl_issuers``,
``crl_from_cdp``, ``crl_refresh_s``, ``crl_https_ca``: the maf.toml ``[tls] client_crl_*`` keys
for one association) and OCSP queries during the handshake (``ocsp``, ``ocsp_url``,
``ocsp_https_ca``, ``ocsp_timeout_s``: maf.toml ``client_ocsp*``, profile P25), all under the
association's ``revocation`` (see :mod:`m2msec.gateway.saefstatus`).
"""

from __future__ import annotations

import hmac
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim.common import ESPRIM_SUIDS
from m2msec.esprim.keysource import PairwiseKey
from m2msec.keys import parse_key_id
from m2msec.maf.client import MAFClientConfig
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.pki import (
    CertificateFlavour,
    CRLError,
    CRLRefresher,
    CRLStore,
    PeerCertInfo,
    RevocationPolicy,
    distribution_points,
    load_crl_files,
    load_https_ca,
)
from m2msec.pki.ocsp_check import PeerOCSPSettings, parse_peer_ocsp_settings
from m2msec.net.connlimits import ConnectionLimits
from m2msec.saef.config import (
    AssociationConfiguration,
    CredentialConfiguration,
    KpsaEntry,
    PeerKind,
)
from m2msec.store.autoseal import DEFAULT_INTERVAL_S as DEFAULT_SEAL_INTERVAL_S
from m2msec.store.autoseal import parse_interval as parse_seal_interval
from m2msec.tls.engine import CertCredentials, PSKCredentials
from m2msec.tomlkeys import check_keys

__all__ = ["ConfigError", "GatewayConfig", "KeyEntry", "MEFSourceConfig", "SAEFCertEntry", "SAEFConfig",
           "SAEFMAFConfig", "load_config", "parse_listen"]


class ConfigError(M2MSecError):
    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR


@dataclass(frozen=True, repr=False)
class KeyEntry:
    kid: str
    key: bytes = field(compare=False)
    peer: str
    suid: SUID = SUID.PRE_PROVISIONED_ESPRIM

    def pairwise(self) -> PairwiseKey:
        return PairwiseKey(kid=self.kid, key=self.key, peer_id=self.peer, suid=self.suid)

    def __repr__(self) -> str:
        return f"KeyEntry(kid={self.kid!r}, peer={self.peer!r}, suid={int(self.suid)}, key=<hidden>)"


#: ``[mef] recheck_interval_s``: default, and the longest allowed (the shortest is 10 s; 0 = never)
DEFAULT_MEF_RECHECK_INTERVAL_S = 300.0
MEF_RECHECK_INTERVAL_LIMIT_S = 86_400.0


@dataclass(frozen=True, repr=False)
class MEFSourceConfig:
    """``[mef]``: fetch RSPF-provisioned pairwiseESPrimKeys (SUID 23) for KeIDs of ``fqdn``
    from the MEF at ``host:port``, authenticated with the CSE's pre-configured PSK;
    ``target_id`` is the CSE's Enrolment Target ID (X-M2M-Origin, the 10.3.7 input);
    ``recheck_interval``: seconds between two MEF re-checks of the fetched keys (0: never)."""

    fqdn: str
    host: str
    port: int
    psk_identity: str
    psk: bytes = field(compare=False)
    target_id: str
    recheck_interval: float = DEFAULT_MEF_RECHECK_INTERVAL_S

    def __repr__(self) -> str:
        return (f"MEFSourceConfig(fqdn={self.fqdn!r}, host={self.host!r}, port={self.port}, "
                f"psk_identity={self.psk_identity!r}, target_id={self.target_id!r}, "
                f"recheck_interval={self.recheck_interval}, psk=<hidden>)")


@dataclass(frozen=True)
class SAEFCertEntry:
    """One ``[[saef_cert]]``: the Association Configuration of an AE (Entity A) on the CSE
    (Entity B) side, 8.2.2.2, the CRL files it was read from and its other certificate status
    sources (8.1.2.2): CRL URLs kept fresh and OCSP (see :mod:`m2msec.gateway.saefstatus`)."""

    association: AssociationConfiguration
    crl_files: tuple[Path, ...] = ()
    #: CRLs fetched before the listener accepts the association and kept fresh (crl_urls and,
    #: with crl_from_cdp, the distribution points of root_of_trust and crl_issuers)
    crl_urls: tuple[str, ...] = ()
    #: intermediate CAs that may sign fetched CRLs (besides root_of_trust)
    crl_issuers: tuple[x509.Certificate, ...] = field(default=(), repr=False)
    #: longest interval between two fetches of a URL
    crl_refresh: timedelta = timedelta(hours=1)
    #: PEM CA file for https CRL servers (None: httpx's default trust store)
    crl_https_ca: Path | None = None
    #: OCSP queries about the AE's certificates during the handshake (None: off)
    ocsp: PeerOCSPSettings | None = None
    #: set by :meth:`m2msec.gateway.saefstatus.SAEFCertStatus.prepare` once the association's
    #: store is the refreshed one and its OCSP checker is set (build_endpoint refuses it unset)
    status_wired: bool = field(default=False, compare=False, repr=False)

    @property
    def needs_status_sources(self) -> bool:
        """CRL URLs or OCSP configured: the association needs :mod:`m2msec.gateway.saefstatus`."""
        return bool(self.crl_urls) or self.ocsp is not None

    @property
    def crl_issuer_certs(self) -> tuple[x509.Certificate, ...]:
        """The certificates allowed to sign fetched CRLs: RootOfTrustA, then ``crl_issuers``."""
        return (*self.association.peer_root_of_trust, *self.crl_issuers)


@dataclass(frozen=True, repr=False)
class SAEFMAFConfig:
    """``[saef_maf]``: the gateway's MAF Client for the MAF-based SAEF (TS-0003 8.2.2.3, 8.8.3.1).
    Exactly one of ``psk`` (KmID, Km) and ``credentials`` (+ ``maf_trust_anchors``)."""

    maf_fqdn: str
    admin_fqdn: str
    host: str
    port: int
    psk: PSKCredentials | None = field(default=None, compare=False)
    credentials: CertCredentials | None = field(default=None, compare=False)
    maf_trust_anchors: tuple[x509.Certificate, ...] = ()
    timeout: float = 5.0
    negative_ttl: float = 5.0
    registration_lifetime: timedelta = timedelta(days=1)
    #: seconds between two re-checks of the cached Kc with the MAF (0: never); not part of
    #: :meth:`same_settings` (a new interval keeps the MAF Client)
    recheck_interval: float = field(default=DEFAULT_MEF_RECHECK_INTERVAL_S, compare=False)

    def __repr__(self) -> str:
        who = f"kmid={self.psk.identity.decode('utf-8', 'replace')!r}" if self.psk else "certificate"
        return (f"SAEFMAFConfig(maf_fqdn={self.maf_fqdn!r}, admin_fqdn={self.admin_fqdn!r}, "
                f"at={self.host}:{self.port}, {who}, km=<hidden>)")

    def same_settings(self, other: SAEFMAFConfig | None) -> bool:
        """True if ``other`` configures the same MAF Client: every setting, the Km (compared in
        constant time), or the certificate chain, the key (by its public key) and the MAF's CA.
        SIGHUP keeps the running MAF Client and its cached Kc exactly then."""
        if other is None or self != other:  # the compared fields: FQDNs, address, CA, timeouts
            return False
        if (self.psk is None) != (other.psk is None) or (self.credentials is None) != (other.credentials is None):
            return False
        if self.psk is not None and other.psk is not None:
            return self.psk.identity == other.psk.identity and hmac.compare_digest(self.psk.key, other.psk.key)
        a, b = self.credentials, other.credentials
        if a is None or b is None:
            return a is b

        def spki(c: CertCredentials) -> bytes:
            return c.private_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

        return a.certificate == b.certificate and a.chain == b.chain and spki(a) == spki(b)

    def client_config(self, clock: Any) -> MAFClientConfig:
        return MAFClientConfig(maf_fqdn=self.maf_fqdn, admin_fqdn=self.admin_fqdn, host=self.host, port=self.port,
                               psk=self.psk, credentials=self.credentials, maf_trust_anchors=self.maf_trust_anchors,
                               clock=clock if self.credentials is not None else None, timeout=self.timeout)


@dataclass(frozen=True)
class SAEFConfig:
    """``[saef]``: the SAEF listener (TLS 1.2, TS-0003 8.2.2.1 / 8.2.2.2) and the plain
    listener's ``require_saef_for`` patterns.  ``psk`` entries hide their Kpsa in repr."""

    host: str
    port: int
    psk: tuple[KpsaEntry, ...] = ()
    credentials: CredentialConfiguration | None = None
    certs: tuple[SAEFCertEntry, ...] = ()
    require_saef_for: tuple[str, ...] = ()
    #: the MAF-based SAEF (``[saef_maf]``), None: not offered
    maf: SAEFMAFConfig | None = None
    #: ``max_connections`` / ``max_connections_per_ip`` of the listener (m2msec.net.connlimits)
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits.default)
    #: OCSP responder for the CSE's own certificate (``cert``): its response is stapled (RFC 6066 8)
    ocsp_staple_url: str | None = None
    #: PEM CA file for an https ``ocsp_staple_url`` (None: httpx's default store)
    ocsp_staple_https_ca: str | None = None

    @property
    def bindings(self) -> int:
        """Configured Kpsa entries and certificate associations (what SIGHUP reloads)."""
        return len(self.psk) + len(self.certs)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def associations(self) -> tuple[AssociationConfiguration, ...]:
        return tuple(c.association for c in self.certs)


@dataclass(frozen=True)
class GatewayConfig:
    cse_id: str
    cse_name: str
    admin: str = "CAdmin"
    cse_url: str | None = None
    store_url: str | None = None
    kek_file: Path | None = None
    keys: tuple[KeyEntry, ...] = ()
    routes: dict[str, str] = field(default_factory=dict)
    poa_ttl: float = 30.0
    suids: tuple[SUID, ...] = (SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM)
    shared_lifetime: timedelta = timedelta(hours=24)
    unique_lifetime: timedelta = timedelta(hours=1)
    #: key period of the stateless unique rand objects (profile R1); None: the Receiver default
    unique_key_period: timedelta | None = None
    trace_file: Path | None = None
    mef: MEFSourceConfig | None = None
    #: check the target's ACPs before relaying an m2m:seci Notify to an AE (profile G4)
    enforce_acp: bool = True
    #: the SP-ID (``//sp``), to read absolute-form originators in ACP checks; optional
    sp_id: str | None = None
    #: the SAEF listener (``[saef]``), None: plain HTTP only
    saef: SAEFConfig | None = None
    #: the MAF Client that retrieves MAF-based pairwiseESPrimKeys (SUID 33) for the Receiver
    esprim_maf: SAEFMAFConfig | None = None
    #: ``[gateway] audit_seal_interval_s``: ``serve`` seals the store's audit trail this often
    #: (m2msec.store.autoseal.AuditSealer; 0: off)
    audit_seal_interval: float = DEFAULT_SEAL_INTERVAL_S
    #: ``[gateway] max_connections`` / ``max_connections_per_ip``: the plain listener's limits
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits.default)

    @property
    def csi(self) -> str:
        return "/" + self.cse_id

    @property
    def cse_base(self) -> str:
        return f"/{self.cse_id}/{self.cse_name}"


def _read_key(entry: dict[str, Any], base: Path, where: str) -> bytes:
    if ("key_hex" in entry) == ("key_file" in entry):
        raise ConfigError(f"{where}: give exactly one of key_hex or key_file")
    if "key_hex" in entry:
        text = entry["key_hex"]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: key_hex must be a string")
    else:
        path = base / str(entry["key_file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read key_file {str(path)!r}: {exc.strerror}") from None
        stripped = data.strip()
        try:
            text = stripped.decode("ascii")
            bytes.fromhex(text)
        except (UnicodeDecodeError, ValueError):
            return data  # raw key bytes
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: key is not hexadecimal") from None


def _whole_seconds(table: dict[str, Any], key: str) -> timedelta | None:
    """An optional positive whole number of seconds (a fraction is refused, not truncated)."""
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"[receiver] {key} must be a positive whole number of seconds (got {v!r})")
    return timedelta(seconds=v)


def parse_listen(value: object, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0: ephemeral) as ``serve --listen`` reads it."""
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where} must be HOST:PORT, e.g. 127.0.0.1:8443 (got {value!r})")
    return host, int(port)


def _strings(value: object, where: str) -> tuple[str, ...]:
    """A string or a list of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{where} must be a string or a list of non-empty strings")
    return tuple(v.strip() for v in items)


#: certificate flavours an AE may present on the SAEF listener (8.1.2.4; a CSE-ID certificate
#: is a CSE's, which this listener does not serve)
SAEF_CERT_FLAVOURS = ("ae-id", "device", "node-id", "fqdn")


def _rel(base: Path, v: object, where: str) -> Path:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where} must be a file name")
    q = Path(v)
    return q if q.is_absolute() else base / q


def _pem_certs(path: Path, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {str(path)!r}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{where}: {str(path)!r} holds no PEM certificate") from None
    return certs


def _pem_key(path: Path, where: str) -> Any:
    try:
        return load_pem_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {str(path)!r}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: {str(path)!r} is not an unencrypted PEM private key") from None


def _saef_psk(doc: dict[str, Any], base: Path) -> tuple[KpsaEntry, ...]:
    """``[[saef_psk]]`` (8.2.2.1)."""
    psk: list[KpsaEntry] = []
    entries = doc.get("saef_psk", [])
    if not isinstance(entries, list):
        raise ConfigError("saef_psk must be an array of tables ([[saef_psk]])")
    for i, e in enumerate(entries):
        where = f"saef_psk[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("kpsa_id"), str):
            raise ConfigError(f"{where}: needs kpsa_id (KpsaID, a string) and kpsa_hex or kpsa_file")
        ae_id = e.get("ae_id")
        if ae_id is not None and (not isinstance(ae_id, str) or not ae_id.strip()):
            raise ConfigError(f"{where}: ae_id must be a non-empty string")
        given = {n: e[k] for n, k in (("key_hex", "kpsa_hex"), ("key_file", "kpsa_file")) if k in e}
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of kpsa_hex or kpsa_file")
        kpsa = _read_key(given, base, where)
        try:
            entry = KpsaEntry(e["kpsa_id"], kpsa, peer_id=ae_id, peer_kind=PeerKind.AE)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if any(p.kpsa_id == entry.kpsa_id for p in psk):
            raise ConfigError(f"{where}: KpsaID {entry.kpsa_id!r} is configured twice")
        psk.append(entry)
    return tuple(psk)


def _saef_certs(doc: dict[str, Any], base: Path, credentials: CredentialConfiguration | None) -> tuple[SAEFCertEntry, ...]:
    """``[[saef_cert]]`` (8.2.2.2) and their CRL files (read now)."""
    certs: list[SAEFCertEntry] = []
    entries = doc.get("saef_cert", [])
    if not isinstance(entries, list):
        raise ConfigError("saef_cert must be an array of tables ([[saef_cert]])")
    for i, e in enumerate(entries):
        where = f"saef_cert[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("identifier"), str) or not e["identifier"]:
            raise ConfigError(f"{where}: needs flavour, identifier (a string) and root_of_trust")
        if e.get("flavour") not in SAEF_CERT_FLAVOURS:
            raise ConfigError(f"{where}: flavour must be one of {', '.join(SAEF_CERT_FLAVOURS)}")
        if credentials is None:
            raise ConfigError(f"{where}: certificate-based SAEF needs [saef] cert and key")
        anchors = _pem_certs(_rel(base, e.get("root_of_trust"), f"{where} root_of_trust"), f"{where} root_of_trust")
        crl_files = tuple(_rel(base, f, f"{where} crls") for f in _strings(e.get("crls", []), f"{where} crls"))
        ae_id = e.get("ae_id")
        if ae_id is not None and (not isinstance(ae_id, str) or not ae_id.strip()):
            raise ConfigError(f"{where}: ae_id must be a non-empty string")
        try:
            revocation = RevocationPolicy(e.get("revocation", RevocationPolicy.IF_AVAILABLE.value))
            urls, issuers, refresh, https_ca = _saef_cert_fetch(e, base, where, anchors, revocation)
            crls = CRLStore(load_crl_files(crl_files)) if crl_files else None
            if urls and crls is None:
                crls = CRLStore()  # filled by the refresher (m2msec.gateway.saefstatus)
            ocsp = parse_peer_ocsp_settings(e, ("ocsp", "ocsp_url", "ocsp_https_ca", "ocsp_timeout_s"),
                                            revocation=revocation, resolve=lambda f, w=where: str(_rel(base, f, w)))
            assoc = AssociationConfiguration.entity_b(
                cert_name_a=PeerCertInfo(CertificateFlavour(e["flavour"]), e["identifier"]),
                root_of_trust_a=anchors, id_a=ae_id, peer_kind=PeerKind.AE, crls=crls, revocation=revocation)
        except ConfigError:
            raise
        except (ValueError, TypeError, OSError, CRLError) as exc:
            raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None
        certs.append(SAEFCertEntry(assoc, crl_files, urls, issuers, refresh, https_ca, ocsp))
    if credentials is not None and not certs:
        raise ConfigError("[saef] cert and key need at least one [[saef_cert]] (the AEs they authenticate)")
    return tuple(certs)


def _saef_cert_fetch(e: dict[str, Any], base: Path, where: str, anchors: list[x509.Certificate],
                     revocation: RevocationPolicy) -> tuple[tuple[str, ...], tuple[x509.Certificate, ...],
                                                            timedelta, Path | None]:
    """The CRL fetching keys of one ``[[saef_cert]]`` (maf.toml ``[tls] client_crl_*`` for one
    association): ``crl_urls``, ``crl_issuers``, ``crl_from_cdp``, ``crl_refresh_s``, ``crl_https_ca``;
    returns (URLs, issuers, refresh period, https CA file)."""
    issuers = tuple(c for f in _strings(e.get("crl_issuers", []), f"{where} crl_issuers")
                    for c in _pem_certs(_rel(base, f, f"{where} crl_issuers"), f"{where} crl_issuers"))
    urls = list(_strings(e.get("crl_urls", []), f"{where} crl_urls"))
    from_cdp = e.get("crl_from_cdp", False)
    if not isinstance(from_cdp, bool):
        raise ConfigError(f"{where}: crl_from_cdp must be true or false")
    if from_cdp:
        cdp = [u for c in (*anchors, *issuers) for u in distribution_points(c)]
        if not cdp:
            raise ConfigError(f"{where}: crl_from_cdp = true, but no root_of_trust or crl_issuers certificate "
                              "names an http(s) cRLDistributionPoint")
        urls += cdp
    crl_urls = tuple(dict.fromkeys(urls))
    refresh = e.get("crl_refresh_s", 3600)
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh <= 0:
        raise ConfigError(f"{where}: crl_refresh_s must be a positive whole number of seconds (got {refresh!r})")
    https_ca = None
    if "crl_https_ca" in e:
        https_ca = _rel(base, e["crl_https_ca"], f"{where} crl_https_ca")
        load_https_ca(https_ca)  # readable, holds CA certificates (CRLError otherwise)
    if not crl_urls:
        extra = [k for k in ("crl_issuers", "crl_https_ca", "crl_refresh_s") if k in e]
        if extra:
            raise ConfigError(f"{where}: {', '.join(extra)} without crl_urls or crl_from_cdp (nothing is fetched)")
    elif revocation is RevocationPolicy.OFF:
        raise ConfigError(f'{where}: CRL URLs need revocation = "if-available" or "require" (not "off")')
    if crl_urls:
        CRLRefresher(CRLStore(), crl_urls, ())  # validates the URLs (http/https with a host)
    return crl_urls, issuers, timedelta(seconds=refresh), https_ca


def _positive_seconds(t: dict[str, Any], key: str, default: float, where: str) -> float:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"{where} {key} must be a positive number of seconds (got {v!r})")
    return float(v)


def _saef_maf(doc: dict[str, Any], base: Path, table: str = "saef_maf") -> SAEFMAFConfig | None:
    """``[saef_maf]``: the gateway's MAF Client for the MAF-based SAEF (8.2.2.3, 8.8.3.1); with
    ``table="esprim_maf"``, ``[esprim_maf]``: the one that retrieves MAF-based pairwiseESPrimKeys
    (SUID 33, 8.4.2 C.6a) for the CSE's ESPrim Receiver (the same keys)."""
    if table not in doc:
        return None
    t = doc[table]
    w = f"[{table}]"
    if not isinstance(t, dict):
        raise ConfigError(f"{w} must be a table")
    for k in ("fqdn", "admin_fqdn"):
        if not isinstance(t.get(k), str) or not t[k].strip():
            raise ConfigError(f"{w} needs {k} (a string)")
    port = t.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{w} needs port (1-65535)")
    host = t.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{w} host must be a non-empty string")
    psk = creds = None
    anchors: tuple[x509.Certificate, ...] = ()
    has_km = "kmid" in t or "km_hex" in t or "km_file" in t
    if has_km == ("cert" in t or "key" in t):
        raise ConfigError(f"{w}: give the MAF Client credential: kmid with km_hex or km_file, or cert and key")
    if has_km:
        kmid = t.get("kmid")
        if not isinstance(kmid, str):
            raise ConfigError(f"{w}: kmid (KmID, MAF_RELATIVE_KmID@MAF-FQDN) is required with km_hex/km_file")
        try:
            parse_key_id(kmid)
        except M2MSecError as exc:
            raise ConfigError(f"{w} kmid: {exc}") from None
        given = {n: t[k] for n, k in (("key_hex", "km_hex"), ("key_file", "km_file")) if k in t}
        if len(given) != 1:
            raise ConfigError(f"{w}: give exactly one of km_hex or km_file")
        psk = PSKCredentials(kmid.encode("utf-8"), _read_key(given, base, w))
        if "ca" in t:
            raise ConfigError(f"{w}: ca is for the certificate MAF Handshake (cert and key); a Km handshake has none")
    else:
        if "cert" not in t or "key" not in t or "ca" not in t:
            raise ConfigError(f"{w}: the certificate MAF Handshake needs cert, key and ca (the MAF's CA)")
        chain = _pem_certs(_rel(base, t["cert"], f"{w} cert"), f"{w} cert")
        creds = CertCredentials(_pem_key(_rel(base, t["key"], f"{w} key"), f"{w} key"), chain[0], tuple(chain[1:]))
        anchors = tuple(_pem_certs(_rel(base, t["ca"], f"{w} ca"), f"{w} ca"))
    timeout = _positive_seconds(t, "timeout", 5.0, w)
    if timeout > 8:
        raise ConfigError(f"{w} timeout must be at most 8 seconds (the retrieval runs inside the 10 s TLS handshake)")
    negative_ttl = _positive_seconds(t, "negative_ttl", 5.0, w)
    reg = _positive_seconds(t, "registration_lifetime", 86400.0, w)
    try:
        cfg = SAEFMAFConfig(t["fqdn"].strip(), t["admin_fqdn"].strip(), host, port, psk, creds, anchors, timeout,
                            negative_ttl, timedelta(seconds=reg), _recheck_interval(t, w))
        cfg.client_config(lambda: None)  # the MAF Client's own checks (FQDN form, credential kind)
    except (ValueError, M2MSecError) as exc:
        raise ConfigError(f"{w}: {exc}") from None
    return cfg


def _recheck_interval(t: dict[str, Any], where: str) -> float:
    """``recheck_interval_s`` of ``[mef]`` / ``[saef_maf]``: 0 (never) or 10 to 86400 seconds."""
    recheck = t.get("recheck_interval_s", DEFAULT_MEF_RECHECK_INTERVAL_S)
    if (isinstance(recheck, bool) or not isinstance(recheck, (int, float))
            or not (recheck == 0 or 10 <= recheck <= MEF_RECHECK_INTERVAL_LIMIT_S)):
        raise ConfigError(f"{where} recheck_interval_s must be 0 (never) or 10 to {int(MEF_RECHECK_INTERVAL_LIMIT_S)}")
    return float(recheck)


def _saef(doc: dict[str, Any], base: Path, saef_listen: str | None,
          cse_sp_id: str | None = None) -> SAEFConfig | None:
    """``[saef]``, ``[[saef_psk]]``, ``[[saef_cert]]``, ``[saef_maf]`` (TS-0003 8.2.2.1-8.2.2.3, 7.2.1)."""
    if "saef" not in doc:
        if "saef_psk" in doc or "saef_cert" in doc or "saef_maf" in doc:
            raise ConfigError("[[saef_psk]], [[saef_cert]] and [saef_maf] need the [saef] table (the listener)")
        if saef_listen is not None:
            raise ConfigError("--saef-listen needs the [saef] table of gateway.toml")
        return None
    t = doc["saef"]
    if not isinstance(t, dict):
        raise ConfigError("[saef] must be a table")
    if saef_listen is None and "listen" not in t:
        raise ConfigError("[saef] needs listen = \"HOST:PORT\" (or serve --saef-listen)")
    if saef_listen is not None:
        host, port = parse_listen(saef_listen, "--saef-listen")
    else:
        host, port = parse_listen(t["listen"], "[saef] listen")
    credentials = None
    if ("cert" in t) != ("key" in t):
        raise ConfigError("[saef] needs both cert and key (the CSE's certificate-based SAEF credentials)")
    if "cert" in t:
        chain = _pem_certs(_rel(base, t["cert"], "[saef] cert"), "[saef] cert")
        private_key = _pem_key(_rel(base, t["key"], "[saef] key"), "[saef] key")
        credentials = CredentialConfiguration(private_key, chain[0], tuple(chain[1:]))
    psk = _saef_psk(doc, base)
    certs = _saef_certs(doc, base, credentials)
    maf = _saef_maf(doc, base)
    if not psk and not certs and maf is None and "mef" not in doc:
        raise ConfigError("[saef] needs at least one [[saef_psk]] or [[saef_cert]], or [saef_maf] or [mef]")
    patterns = _strings(t.get("require_saef_for", []), "[saef] require_saef_for")
    for pat in patterns:
        if pat.rstrip("*") == "" or "*" in pat[:-1]:
            raise ConfigError(f"[saef] require_saef_for: {pat!r} must be an AE-ID, or an AE-ID prefix followed by "
                              "one '*' (a bare '*' would also cover the CSEs and the admin)")
        sp = (cse_sp_id or "").strip("/")
        if pat.startswith("//") and sp and pat[2:].partition("/")[0] != sp:
            raise ConfigError(f"[saef] require_saef_for: {pat!r} names another SP than [cse] sp_id {cse_sp_id!r}: "
                              "it would protect nothing")
    try:
        limits = ConnectionLimits.from_toml(t, total_key="max_connections", source_key_name="max_connections_per_ip")
    except ValueError as exc:
        raise ConfigError(f"[saef] {exc}") from None
    staple_url, staple_ca = _saef_staple(t, base, credentials)
    return SAEFConfig(host, port, psk, credentials, certs, patterns, maf, limits, staple_url, staple_ca)


def _saef_staple(t: dict[str, Any], base: Path,
                 credentials: CredentialConfiguration | None) -> tuple[str | None, str | None]:
    """``[saef] ocsp_staple_url`` / ``ocsp_staple_https_ca`` (profile P22, G14): the responder
    for the CSE's own certificate; needs ``cert`` with the issuing CA right after the leaf."""
    from m2msec.pki.ocsp_staple import stapler_for_chain  # noqa: PLC0415

    https_ca = None
    if "ocsp_staple_https_ca" in t:
        f = t["ocsp_staple_https_ca"]
        if not isinstance(f, str) or not f:
            raise ConfigError("[saef] ocsp_staple_https_ca must be a PEM file name")
        https_ca = str(_rel(base, f, "[saef] ocsp_staple_https_ca"))
        try:
            load_https_ca(https_ca)  # readable, holds CA certificates
        except M2MSecError as exc:
            raise ConfigError(f"[saef] ocsp_staple_https_ca: {exc}") from None
    if "ocsp_staple_url" not in t:
        if https_ca is not None:
            raise ConfigError("[saef] ocsp_staple_https_ca without ocsp_staple_url")
        return None, None
    url = t["ocsp_staple_url"]
    if not isinstance(url, str):
        raise ConfigError("[saef] ocsp_staple_url must be an http(s) URL")
    if credentials is None:
        raise ConfigError("[saef] ocsp_staple_url needs cert and key (the certificate whose status is stapled)")
    try:  # the URL (http/https with a host) and the issuer after the leaf in cert
        stapler_for_chain(url, [credentials.certificate, *credentials.chain])
    except ValueError as exc:
        raise ConfigError(f"[saef] ocsp_staple_url: {exc}") from None
    return url, https_ca


#: every key and table of gateway.toml (docs/configuration.md); anything else is a configuration error
GATEWAY_TOML_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"cse", "store", "gateway", "receiver", "keys", "mef", "routes", "saef", "saef_psk", "saef_cert",
                   "saef_maf", "esprim_maf"}),
    "cse": frozenset({"id", "name", "admin", "sp_id", "url"}),
    "store": frozenset({"url", "kek_file"}),
    "gateway": frozenset({"poa_ttl", "enforce_acp", "trace_file", "audit_seal_interval_s", "max_connections",
                          "max_connections_per_ip"}),
    "receiver": frozenset({"suids", "shared_lifetime", "unique_lifetime", "unique_key_period"}),
    "keys[]": frozenset({"kid", "key_hex", "key_file", "peer", "suid"}),
    "mef": frozenset({"fqdn", "host", "port", "psk_identity", "psk_hex", "psk_file", "target_id",
                      "recheck_interval_s"}),
    "routes[]": frozenset({"csi", "url"}),
    "saef": frozenset({"listen", "cert", "key", "require_saef_for", "max_connections", "max_connections_per_ip",
                       "ocsp_staple_url", "ocsp_staple_https_ca"}),
    "saef_psk[]": frozenset({"kpsa_id", "kpsa_hex", "kpsa_file", "ae_id"}),
    "saef_cert[]": frozenset({"flavour", "identifier", "root_of_trust", "ae_id", "crls", "revocation", "crl_urls",
                              "crl_issuers", "crl_from_cdp", "crl_refresh_s", "crl_https_ca", "ocsp", "ocsp_url",
                              "ocsp_https_ca", "ocsp_timeout_s"}),
    "saef_maf": frozenset({"fqdn", "host", "port", "admin_fqdn", "kmid", "km_hex", "km_file", "cert", "key", "ca",
                           "timeout", "negative_ttl", "registration_lifetime", "recheck_interval_s"}),
}
GATEWAY_TOML_KEYS["esprim_maf"] = GATEWAY_TOML_KEYS["saef_maf"]


def load_config(path: str | Path, *, cse_url: str | None = None, store_url: str | None = None,
                saef_listen: str | None = None) -> GatewayConfig:
    """Read ``gateway.toml``; ``cse_url``/``store_url``/``saef_listen`` (CLI options) override the file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(p)!r} is not TOML: {exc}") from None
    try:
        check_keys(doc, GATEWAY_TOML_KEYS, source=str(p))
    except ParseError as exc:
        raise ConfigError(exc.args[0]) from None
    base = p.resolve().parent
    cse = doc.get("cse", {})
    if not isinstance(cse, dict) or not isinstance(cse.get("id"), str) or not isinstance(cse.get("name"), str):
        raise ConfigError("[cse] needs id and name (strings)")
    keys = []
    for i, entry in enumerate(doc.get("keys", [])):
        where = f"keys[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not isinstance(entry.get("peer"), str):
            raise ConfigError(f"{where}: needs kid and peer (strings)")
        suid = SUID(int(entry.get("suid", int(SUID.PRE_PROVISIONED_ESPRIM))))
        if suid not in ESPRIM_SUIDS:
            raise ConfigError(f"{where}: SUID {int(suid)} is not an ESPrim SUID")
        keys.append(KeyEntry(entry["kid"], _read_key(entry, base, where), entry["peer"], suid))
    store = doc.get("store", {})
    gw = doc.get("gateway", {})
    recv = doc.get("receiver", {})
    routes = {}
    for i, r in enumerate(doc.get("routes", [])):
        if not isinstance(r, dict) or not isinstance(r.get("csi"), str) or not isinstance(r.get("url"), str):
            raise ConfigError(f"routes[{i}]: needs csi and url (strings)")
        csi = r["csi"] if r["csi"].startswith("/") else "/" + r["csi"]
        routes[csi] = r["url"].rstrip("/")
    mef = None
    if "mef" in doc:
        m = doc["mef"]
        if not isinstance(m, dict) or not all(isinstance(m.get(k), str) for k in ("fqdn", "psk_identity")) \
                or isinstance(m.get("port"), bool) or not isinstance(m.get("port"), int):
            raise ConfigError("[mef] needs fqdn, port, psk_identity and psk_hex or psk_file")
        psk = _read_key({"key_hex": m["psk_hex"]} if "psk_hex" in m else
                        {"key_file": m["psk_file"]} if "psk_file" in m else {}, base, "[mef]")
        recheck = _recheck_interval(m, "[mef]")
        mef = MEFSourceConfig(m["fqdn"], str(m.get("host", "127.0.0.1")), int(m["port"]), m["psk_identity"], psk,
                              str(m.get("target_id", "/" + cse["id"].lstrip("/"))), float(recheck))
    kek = store.get("kek_file")
    enforce_acp = gw.get("enforce_acp", True)
    if not isinstance(enforce_acp, bool):
        raise ConfigError("[gateway] enforce_acp must be true or false")
    sp_id = cse.get("sp_id")
    if sp_id is not None and (not isinstance(sp_id, str) or not sp_id.strip("/")):
        raise ConfigError("[cse] sp_id must be a non-empty string")
    trace = gw.get("trace_file")
    try:
        seal_interval = parse_seal_interval(gw.get("audit_seal_interval_s", DEFAULT_SEAL_INTERVAL_S),
                                            key="[gateway] audit_seal_interval_s")
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    try:
        limits = ConnectionLimits.from_toml(gw, total_key="max_connections", source_key_name="max_connections_per_ip")
    except ValueError as exc:
        raise ConfigError(f"[gateway] {exc}") from None
    saef = _saef(doc, base, saef_listen, sp_id)
    esprim_maf = _saef_maf(doc, base, "esprim_maf")
    suids = tuple(SUID(int(s)) for s in recv.get("suids", [13, 23] + ([33] if esprim_maf is not None else [])))
    if esprim_maf is not None and SUID.MAF_ESPRIM not in suids:
        raise ConfigError("[esprim_maf] retrieves SUID-33 keys: add 33 to [receiver] suids (or leave suids out)")
    return GatewayConfig(
        cse_id=cse["id"].lstrip("/"),
        cse_name=cse["name"],
        admin=str(cse.get("admin", "CAdmin")),
        cse_url=cse_url or cse.get("url"),
        store_url=store_url or store.get("url") or f"sqlite://{base}/gateway.db",
        kek_file=None if kek is None else base / str(kek),
        keys=tuple(keys),
        routes=routes,
        poa_ttl=float(gw.get("poa_ttl", 30.0)),
        suids=suids,
        shared_lifetime=timedelta(seconds=float(recv.get("shared_lifetime", 86400))),
        unique_lifetime=timedelta(seconds=float(recv.get("unique_lifetime", 3600))),
        unique_key_period=_whole_seconds(recv, "unique_key_period"),
        trace_file=None if trace is None else base / str(trace),
        mef=mef,
        enforce_acp=enforce_acp,
        sp_id=sp_id,
        saef=saef,
        esprim_maf=esprim_maf,
        audit_seal_interval=seal_interval,
        connection_limits=limits,
    )
