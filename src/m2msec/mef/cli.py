"""``m2msec mef …``: run the MEF, administer enrolees/targets, enrol (TS-0003 8.3.2.1, 8.3.2.2).

``mef.toml`` (every key, type and default: ``docs/configuration.md``)::

    [mef]
    fqdn = "mef.m2m.example.com"      # MEF-FQDN of KeID/KreID (10.3.4)
    store = "sqlite:///var/lib/m2msec/mef.db"
    kek_file = "/etc/m2msec/mef.kek"  # else $M2MSEC_KEK_FILE / $M2MSEC_KEK
    host = "127.0.0.1"
    port = 8443
    cert = "mef.cert.pem"             # optional: certificate RSPF (leaf + chain)
    key = "mef.key.pem"
    enrolee_trust_anchors = "enrolee-ca.pem"
    enrolee_crl_files = ["enrolee-ca.crl"]  # optional CRLs (PEM/DER; a string or a list) of the enrolees' PKI
    revocation = "if-available"       # certificate status (8.1.2.2): off | if-available (default) | require
    enrolee_crl_urls = ["http://pki.example.com/issuing.crl"]  # optional: CRLs fetched over http(s) and refreshed
    enrolee_crl_issuers = "enrolee-sub-ca.pem"  # intermediate CAs allowed to sign fetched CRLs (besides the anchors)
    enrolee_crl_refresh_s = 3600      # refresh at least this often (earlier near nextUpdate)
    enrolee_crl_https_ca = "crl-server-ca.pem"  # optional: trust anchors of https CRL servers (default: httpx's)
    crl_port = 8080                   # optional: serve the EST CA's CRLs over http (/crl/root.crl, /crl/intermediate.crl)
    crl_host = "127.0.0.1"            # (default: host)
    crl_base_url = "http://mef.m2m.example.com:8080/crl/"  # optional: CRL distribution point in EST certificates
    crl_validity_s = 86400            # nextUpdate - thisUpdate of those CRLs (re-signed at half of it, or on a revocation)
    ocsp_staple_url = "http://pki.example.com/ocsp"  # optional: OCSP responder for the MEF certificate (stapled)
    ocsp_staple_https_ca = "ocsp-server-ca.pem"  # optional: trust anchors of an https responder (default: httpx's)
    enrolee_ocsp = false              # true: ask an OCSP responder about enrolee/target certificates (8.1.2.2)
    enrolee_ocsp_url = "http://pki.example.com/ocsp"  # optional: every query there (default: authorityInfoAccess)
    enrolee_ocsp_https_ca = "ocsp-server-ca.pem"  # optional: trust anchors of an https responder
    enrolee_ocsp_timeout_s = 5        # per query, (0, 9]
    enrolee_ocsp_failure_cache_s = 30 # a failed query is reused this long per certificate (0 = off, <= 3600)
    audit_seal_interval_s = 300       # serve seals the audit trail at start, this often and at stop; 0 = off
    max_connections = 1024            # open connections (default 1024, or the open-file limit minus 64 if smaller)
    max_connections_per_ip = 128      # of them from one IPv4 address / IPv6 /64; more are aborted at once
    [gba]                             # optional: GBA-Based RSPF, the MEF as GBA NAF
    bsf_url = "http://127.0.0.1:8080" # the operator BSF's Zn endpoint
    naf_token = "..."                 # the MEF's Zn credential (else $M2MSEC_GBA_NAF_TOKEN)

Certificate Enrolment with EST (:mod:`m2msec.mef.est`) is on when the store holds the
MEF CA (``m2msec mef est-ca init``): ``serve`` then answers ``/.well-known/est/*`` and
trusts that CA's certificates for the certificate RSPF; ``enrolee est`` sets what an
enrolee may enrol for; ``est-enrol`` is the enrolee (Enrolment Exchange + EST, installs
``key.pem`` 0600, ``cert.pem``, ``trust-anchors.pem``, ``est.json``; ``--server-keygen``:
the MEF generates the key, RFC 7030 4.4).

Certificate status (TS-0003 8.1.2.2) of enrolee and Enrolment Target certificates in the
certificate RSPF: ``enrolee_crl_files`` are loaded into one :class:`~m2msec.pki.CRLStore`
at start (paths relative to mef.toml, like the other paths); ``serve`` reloads them on
SIGHUP (all files or nothing: on an error the previous CRLs stay and the error goes to
stderr; success prints ``crls reloaded N``).  ``enrolee_crl_urls`` are fetched before the MEF
listens and kept fresh by a :class:`~m2msec.pki.CRLRefresher` (profile P13/P14; a CRL must be
signed by an enrolee trust anchor or an ``enrolee_crl_issuers`` certificate); SIGHUP keeps
them across the file reload and fetches them again.  ``revocation`` is the policy of
:mod:`m2msec.pki.crl`.

OCSP stapling of the MEF's own certificate (TS-0003 8.1.2.2, RFC 6066 8): with ``ocsp_staple_url``
(and ``cert``/``key``, the issuer right after the leaf in ``cert``) ``serve`` queries that
responder before it listens (a failure is a warning: nothing is stapled until a query
succeeds), staples the current response in certificate handshakes, refreshes it at half its
remaining validity (:class:`m2msec.pki.ocsp_staple.OCSPStapler`) and queries again on SIGHUP.

OCSP queries about enrolee and Enrolment Target certificates (TS-0003 8.1.2.2): with
``enrolee_ocsp = true`` a certificate whose status neither a current CRL nor a held answer
gives is looked up at ``enrolee_ocsp_url`` (or its authorityInfoAccess responder) while the
handshake's final flight is held back (:class:`m2msec.pki.ocsp_check.PeerOCSPChecker`); a
REVOKED answer ends the handshake with alert certificate_revoked, ``require`` also refuses a
certificate without a good answer; a failed query is reused for ``enrolee_ocsp_failure_cache_s``
(default 30, 0 = off) and decided on as a fresh failure.  Established certificate sessions are
held against the current CRLs and held answers before each request (:mod:`m2msec.mef.server`).

Revocation of EST certificates (:mod:`m2msec.mef.est_crl`): ``enrolee revoke`` revokes every
certificate the MEF issued to that enrolee, ``est-revoke --serial`` a single one; this MEF
refuses them at once, and the CRLs of the MEF CA (``est-crl`` writes them, ``serve`` with
``crl_port`` publishes them) list them from the next request on.

The audit trail (:mod:`m2msec.store.autoseal`): with ``audit_seal_interval_s`` (default 300,
0 = off, else 0.5 to 86400) ``serve`` seals the store's audit trail when it starts, every
interval (in a thread of its own) and once more after SIGTERM/SIGINT closed its listeners; each
seal logs ``audit sealed N row(s); anchor ...`` at INFO on stderr, a refusal (tampered trail,
other KEK) an ERROR line, and the MEF keeps answering.

No command prints key bytes; ``enrolee add --token`` prints the single-use token once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any

import typer
from cryptography import x509

from m2msec.errors import M2MSecError, ParseError
from m2msec.mef.client import enrol as _enrol
from m2msec.mef.client import mef_tls_config, save_enrolment
from m2msec.mef.protocol import EnrolmentRequest, MAFPreference, TargetGrant
from m2msec.mef.server import MEFServer
from m2msec.mef.state import EnroleeConfig, MEFState, TargetConfig
from m2msec.net.connlimits import ConnectionLimits
from m2msec.pki import (
    CertificateFlavour,
    CRLError,
    CRLRefresher,
    CRLStore,
    PeerCertInfo,
    RevocationPolicy,
    load_crl_files,
    load_https_ca,
)
from m2msec.pki.cli import reload_crls_and_report
from m2msec.pki.ocsp_staple import OCSPStapler, stapler_for_chain
from m2msec.pki.ocsp_check import parse_peer_ocsp_settings
from m2msec.secret_input import secret_from_options
from m2msec.store import KeyEncryptionKey, StoreError, open_store
from m2msec.store.autoseal import DEFAULT_INTERVAL_S as DEFAULT_SEAL_INTERVAL_S
from m2msec.store.autoseal import AuditSealer, show_seal_log
from m2msec.store.autoseal import parse_interval as parse_seal_interval
from m2msec.tls.engine import CertCredentials, PSKCredentials
from m2msec.tls.pkiverify import StaplePolicy
from m2msec.tomlkeys import check_keys

app = typer.Typer(help="M2M Enrolment Function (Remote Security Provisioning, TS-0003 8.3).", no_args_is_help=True)
enrolee_app = typer.Typer(help="Bootstrap Instruction Configuration of enrolees.", no_args_is_help=True)
target_app = typer.Typer(help="Enrolment Targets allowed to fetch keys.", no_args_is_help=True)
app.add_typer(enrolee_app, name="enrolee")
app.add_typer(target_app, name="target")

ConfigOpt = Annotated[Path, typer.Option("--config", help="mef.toml")]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


#: every key and table of mef.toml (docs/configuration.md); anything else is a configuration error
MEF_TOML_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"mef", "gba"}),
    "mef": frozenset({"fqdn", "store", "kek_file", "host", "port", "cert", "key", "enrolee_trust_anchors",
                      "enrolee_crl_files", "revocation", "enrolee_crl_urls", "enrolee_crl_issuers",
                      "enrolee_crl_refresh_s", "enrolee_crl_https_ca", "crl_port", "crl_host", "crl_base_url",
                      "crl_validity_s", "ocsp_staple_url", "ocsp_staple_https_ca", "enrolee_ocsp", "enrolee_ocsp_url",
                      "enrolee_ocsp_https_ca", "enrolee_ocsp_timeout_s", "enrolee_ocsp_failure_cache_s",
                      "audit_seal_interval_s", "max_connections", "max_connections_per_ip"}),
    "gba": frozenset({"bsf_url", "naf_token"}),
}


def _load(config: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(exc)
    try:
        check_keys(doc, MEF_TOML_KEYS, source=str(config))
    except ParseError as exc:
        _fail(exc)
    mef = doc.get("mef")
    if not isinstance(mef, dict) or "fqdn" not in mef or "store" not in mef:
        _fail(ValueError(f"{config}: [mef] needs fqdn and store"))
    base = config.parent
    for k in ("kek_file", "cert", "key", "enrolee_trust_anchors"):
        if k in mef:
            mef[k] = str((base / mef[k]).resolve()) if not Path(mef[k]).is_absolute() else mef[k]
    if "enrolee_crl_files" in mef:
        files = mef["enrolee_crl_files"]
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            _fail(ValueError(f"{config}: [mef] enrolee_crl_files must be a file name or a list of file names"))
        mef["enrolee_crl_files"] = [f if Path(f).is_absolute() else str((base / f).resolve()) for f in files]
    if "enrolee_crl_urls" in mef:
        urls = mef["enrolee_crl_urls"]
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                                 for u in urls):
            _fail(ValueError(f"{config}: [mef] enrolee_crl_urls must be an http(s) URL or a list of them"))
        mef["enrolee_crl_urls"] = urls
    if "enrolee_crl_issuers" in mef:
        f = mef["enrolee_crl_issuers"]
        if not isinstance(f, str) or not f:
            _fail(ValueError(f"{config}: [mef] enrolee_crl_issuers must be a PEM file name"))
        mef["enrolee_crl_issuers"] = f if Path(f).is_absolute() else str((base / f).resolve())
    if "enrolee_crl_https_ca" in mef:
        f = mef["enrolee_crl_https_ca"]
        if not isinstance(f, str) or not f:
            _fail(ValueError(f"{config}: [mef] enrolee_crl_https_ca must be a PEM file name"))
        mef["enrolee_crl_https_ca"] = f if Path(f).is_absolute() else str((base / f).resolve())
        try:
            load_https_ca(mef["enrolee_crl_https_ca"])
        except CRLError as exc:
            _fail(ValueError(f"{config}: [mef] enrolee_crl_https_ca: {exc}"))
    if "ocsp_staple_https_ca" in mef:
        f = mef["ocsp_staple_https_ca"]
        if not isinstance(f, str) or not f:
            _fail(ValueError(f"{config}: [mef] ocsp_staple_https_ca must be a PEM file name"))
        mef["ocsp_staple_https_ca"] = f if Path(f).is_absolute() else str((base / f).resolve())
        try:
            load_https_ca(mef["ocsp_staple_https_ca"])
        except CRLError as exc:
            _fail(ValueError(f"{config}: [mef] ocsp_staple_https_ca: {exc}"))
        if "ocsp_staple_url" not in mef:
            _fail(ValueError(f"{config}: [mef] ocsp_staple_https_ca without ocsp_staple_url"))
    if "ocsp_staple_url" in mef:
        u = mef["ocsp_staple_url"]
        if not isinstance(u, str) or not u.startswith(("http://", "https://")) or not urlsplit(u).hostname:
            _fail(ValueError(f"{config}: [mef] ocsp_staple_url must be an http:// or https:// URL with a host"))
        if "cert" not in mef:
            _fail(ValueError(f"{config}: [mef] ocsp_staple_url needs cert and key (stapling is for the MEF certificate)"))
    if ("cert" in mef) != ("key" in mef):
        _fail(ValueError(f"{config}: [mef] cert and key go together (the MEF's certificate and its private key)"))
    for k in ("crl_port", "crl_validity_s", "enrolee_crl_refresh_s"):
        if k in mef and (not isinstance(mef[k], int) or isinstance(mef[k], bool) or mef[k] < 0):
            _fail(ValueError(f"{config}: [mef] {k} must be a non-negative integer"))
    mef.setdefault("crl_validity_s", 86400)
    mef.setdefault("enrolee_crl_refresh_s", 3600)
    for k in ("crl_validity_s", "enrolee_crl_refresh_s"):
        if mef[k] <= 0:
            _fail(ValueError(f"{config}: [mef] {k} must be positive"))
    if "crl_base_url" in mef and not (isinstance(mef["crl_base_url"], str)
                                      and mef["crl_base_url"].startswith(("http://", "https://"))):
        _fail(ValueError(f"{config}: [mef] crl_base_url must be an http:// or https:// URL"))
    try:
        mef["revocation"] = RevocationPolicy(mef.get("revocation", RevocationPolicy.IF_AVAILABLE.value))
    except ValueError:
        _fail(ValueError(f"{config}: [mef] revocation must be one of "
                         f"{', '.join(p.value for p in RevocationPolicy)}"))
    try:
        mef["connection_limits"] = ConnectionLimits.from_toml(mef, total_key="max_connections", source_key_name="max_connections_per_ip")
    except ValueError as exc:
        _fail(ValueError(f"{config}: [mef] {exc}"))
    try:
        mef["audit_seal_interval_s"] = parse_seal_interval(mef.get("audit_seal_interval_s", DEFAULT_SEAL_INTERVAL_S))
    except (TypeError, ValueError) as exc:
        _fail(ValueError(f"{config}: [mef] {exc}"))
    try:
        mef["enrolee_ocsp"] = parse_peer_ocsp_settings(
            mef, ("enrolee_ocsp", "enrolee_ocsp_url", "enrolee_ocsp_https_ca", "enrolee_ocsp_timeout_s"),
            revocation=mef["revocation"],
            resolve=lambda f: f if Path(f).is_absolute() else str((base / f).resolve()),
            failure_cache_key="enrolee_ocsp_failure_cache_s")
    except (TypeError, ValueError) as exc:
        _fail(ValueError(f"{config}: [mef] {exc}"))
    return mef


def _crls(mef: dict[str, Any]) -> CRLStore | None:
    """The CRL store of ``enrolee_crl_files`` (None without that option and ``enrolee_crl_urls``;
    CRLError for a bad file); fetched CRLs join it in ``serve``."""
    if "enrolee_crl_files" not in mef and mef.get("enrolee_crl_urls"):
        return CRLStore()
    if "enrolee_crl_files" not in mef:
        return None
    return CRLStore(load_crl_files(mef["enrolee_crl_files"]))


def _state(mef: dict[str, Any], *, load_crls: bool = False) -> MEFState:
    """The MEF state; the CRLs (only needed to verify enrolee certificates) with ``load_crls``."""
    try:
        kek = KeyEncryptionKey.from_file(mef["kek_file"]) if "kek_file" in mef else KeyEncryptionKey.from_env()
    except StoreError as exc:  # missing, unreadable, malformed or group/other-accessible (exit 2)
        _fail(exc)
    anchors: tuple[x509.Certificate, ...] = ()
    if "enrolee_trust_anchors" in mef:
        anchors = tuple(x509.load_pem_x509_certificates(Path(mef["enrolee_trust_anchors"]).read_bytes()))
    crls = _crls(mef) if load_crls else None  # before the store is opened: a bad file fails without side effects
    store = open_store(mef["store"], kek)
    settings = mef.get("enrolee_ocsp")
    ocsp = settings.checker(clock=_utcnow, policy=mef["revocation"]) if settings is not None and load_crls else None
    return MEFState(store, mef["fqdn"], _utcnow, anchors, enrolee_crls=crls, revocation=mef["revocation"],
                    enrolee_ocsp=ocsp)


def _credentials(mef: dict[str, Any]) -> CertCredentials | None:
    if "cert" not in mef:
        return None
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    certs = x509.load_pem_x509_certificates(Path(mef["cert"]).read_bytes())
    key = load_pem_private_key(Path(mef["key"]).read_bytes(), password=None)
    return CertCredentials(key, certs[0], tuple(certs[1:]))  # type: ignore[arg-type]


def _stapler(mef: dict[str, Any], credentials: CertCredentials | None) -> OCSPStapler | None:
    """The OCSP stapler of the MEF certificate (None without ``ocsp_staple_url``); ValueError when
    the certificate file holds no issuer after the leaf."""
    if not mef.get("ocsp_staple_url") or credentials is None:
        return None
    try:
        return stapler_for_chain(mef["ocsp_staple_url"], [credentials.certificate, *credentials.chain],
                                 clock=_utcnow, https_ca=mef.get("ocsp_staple_https_ca"))
    except ValueError as exc:
        raise ValueError(f"[mef] ocsp_staple_url: {exc}") from None


def _gba(config: Path, state: MEFState) -> Any:
    """GBANaf for the ``[gba]`` table of mef.toml (None without it)."""
    import os

    from m2msec.mef.gba import GBANaf, ZnClient

    try:
        doc = tomllib.loads(config.read_text()).get("gba")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if not doc:
        return None
    token = doc.get("naf_token") or os.environ.get("M2MSEC_GBA_NAF_TOKEN")
    if not isinstance(doc.get("bsf_url"), str) or not token:
        raise ValueError("[gba] needs bsf_url and naf_token (or $M2MSEC_GBA_NAF_TOKEN)")
    return GBANaf(state, ZnClient(doc["bsf_url"], state.fqdn, str(token)))


def _est(state: MEFState, mef: dict[str, Any] | None = None) -> Any:
    """The EST service when the store holds the MEF CA; its root joins the enrolee trust anchors.
    With ``crl_base_url`` its certificates carry that CRL distribution point."""
    from m2msec.mef.est import DevCAAuthority, ESTService, load_dev_ca
    ca = load_dev_ca(state.store, crl_base_url=str(mef["crl_base_url"]) if mef and mef.get("crl_base_url") else None)
    if ca is None:
        return None
    if ca.trust_anchor not in state.enrolee_anchors:
        state.enrolee_anchors = (*state.enrolee_anchors, ca.trust_anchor)
    return ESTService(state, DevCAAuthority(ca, state.clock))


def _crl_publisher(state: MEFState, mef: dict[str, Any]) -> Any:
    """The EST CA's CRL publisher (None without an MEF CA in the store)."""
    from m2msec.mef.est import load_dev_ca
    from m2msec.mef.est_crl import ESTCRLPublisher

    ca = load_dev_ca(state.store)
    if ca is None:
        return None
    return ESTCRLPublisher(state.store, ca, state.clock, validity=timedelta(seconds=int(mef["crl_validity_s"])))


def _hangup(store: CRLStore | None, files: list[str], refresher: CRLRefresher | None,
            stapler: OCSPStapler | None = None) -> None:
    """SIGHUP: query the OCSP staple responder, re-read the CRL files keeping the fetched CRLs,
    then fetch the URLs now (nothing configured: a note on stderr; SIGHUP never ends the MEF)."""
    if stapler is not None:
        stapler.trigger()
    if store is None:
        if stapler is None:
            typer.echo("sighup: nothing to reload (no enrolee_crl_files, enrolee_crl_urls or ocsp_staple_url)",
                       err=True)
        return
    reload_crls_and_report(store, files, keep=refresher.crls if refresher is not None else None)
    if refresher is not None:
        refresher.trigger()


@app.command("serve")
def serve(config: ConfigOpt,
          port: Annotated[int | None, typer.Option("--port", help="Override \\[mef] port (0: ephemeral).")] = None) -> None:
    """Run the MEF until SIGTERM/SIGINT; prints 'listening HOST:PORT'."""
    try:
        mef = _load(config)
        state = _state(mef, load_crls=True)
        crl_issuers = (x509.load_pem_x509_certificates(Path(mef["enrolee_crl_issuers"]).read_bytes())
                       if "enrolee_crl_issuers" in mef else [])
        est = _est(state, mef)
        credentials = _credentials(mef)
        stapler = _stapler(mef, credentials)
        server = MEFServer(state, credentials=credentials, gba=_gba(config, state), est=est,
                           ocsp_staple=stapler.staple if stapler is not None else None,
                           limits=mef["connection_limits"])
        crl_server = None
        if "crl_port" in mef:
            from m2msec.pki.crl_http import CRLHTTPServer

            publisher = _crl_publisher(state, mef)
            if publisher is None:
                raise ValueError("crl_port is set but the store holds no MEF CA (m2msec mef est-ca)")
            crl_server = CRLHTTPServer(publisher.sources(),
                                       host=str(mef.get("crl_host", mef.get("host", "127.0.0.1"))),
                                       port=int(mef["crl_port"]))
    except (M2MSecError, OSError, ValueError) as exc:
        _fail(exc)
    seal_interval = float(mef["audit_seal_interval_s"])
    if seal_interval:
        show_seal_log()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # before anything is announced: a prompt signal stops cleanly
        refresher = None
        if mef.get("enrolee_crl_urls") and state.enrolee_crls is not None:
            # fetched before the MEF listens (a failure is logged, not fatal: P14)
            refresher = CRLRefresher(state.enrolee_crls, mef["enrolee_crl_urls"],
                                     (*state.enrolee_anchors, *crl_issuers), clock=_utcnow,
                                     period=timedelta(seconds=int(mef["enrolee_crl_refresh_s"])),
                                     https_ca=mef.get("enrolee_crl_https_ca"))
            await refresher.refresh()
            refresher.start()
        if stapler is not None:  # queried before the MEF listens (a failure is logged, not fatal)
            await stapler.refresh()
            stapler.start()
        loop.add_signal_handler(signal.SIGHUP, _hangup, state.enrolee_crls, mef.get("enrolee_crl_files", []),
                                refresher, stapler)
        sealer = AuditSealer(state.store, seal_interval) if seal_interval else None
        if sealer is not None:
            sealer.start()
        try:
            host, p = await server.start(mef.get("host", "127.0.0.1"),
                                         port if port is not None else int(mef.get("port", 0)))
            if crl_server is not None:
                await crl_server.start()
            typer.echo(f"listening {host}:{p}")
            if crl_server is not None:
                typer.echo(f"crl listening {crl_server.host}:{crl_server.port}")
            await stop.wait()
        finally:
            if refresher is not None:
                await refresher.stop()
            if stapler is not None:
                await stapler.stop()
            if crl_server is not None:
                await crl_server.close()
            await server.close()
            if sealer is not None:  # after the listeners closed: the last rows are sealed too
                await sealer.close()

    asyncio.run(main())
    state.store.close()


def _parse_target(text: str) -> TargetGrant:
    """``ID=SUID[,SUID…]``, e.g. ``//sp/id-in/Cb=22,23``."""
    tid, sep, suids = text.rpartition("=")
    if not sep or not tid:
        raise typer.BadParameter(f"target {text!r}: expected ID=SUID[,SUID...]")
    try:
        values = tuple(int(s) for s in suids.split(","))
    except ValueError:
        raise typer.BadParameter(f"target {text!r}: SUIDs must be integers") from None
    if any(s not in (22, 23, 24, 25) for s in values):
        raise typer.BadParameter(f"target {text!r}: direct-key SUIDs are 22-25 (MAFs: use --maf)")
    return TargetGrant(tid, values)


@enrolee_app.command("add")
def enrolee_add(
    config: ConfigOpt,
    enrolee_id: Annotated[str, typer.Option("--enrolee-id", help="Enrolee's CSE-ID or AE-ID.")],
    kpm_id: Annotated[str | None, typer.Option("--kpm-id", help="PSK RSPF: KpmID.")] = None,
    kpm_hex: Annotated[str | None, typer.Option("--kpm-hex", help="PSK RSPF: Kpm (hex; visible in ps: prefer --kpm-file).")] = None,
    kpm_file: Annotated[str | None, typer.Option("--kpm-file", help="PSK RSPF: file holding Kpm (hex text or raw octets; - = stdin).")] = None,
    cert_flavour: Annotated[str | None, typer.Option("--cert-flavour", help="Certificate RSPF: flavour.")] = None,
    cert_id: Annotated[str | None, typer.Option("--cert-id", help="Certificate RSPF: identifier.")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", help="Enrolment Target ID=SUID[,SUID] (22-25).")] = None,
    maf: Annotated[list[str] | None, typer.Option("--maf", help="MAF-FQDN,KeyRegistrationURI,KeyRetrievalURI[,ClientRegURI]")] = None,
    cert_enrolment_uri: Annotated[str | None, typer.Option("--cert-enrolment-uri")] = None,
    rm_uri: Annotated[str | None, typer.Option("--remote-management-uri")] = None,
    expiry: Annotated[int, typer.Option("--expiry", min=1, help="Enrolment Expiry in seconds (10.7).")] = 86400,
    token: Annotated[bool, typer.Option("--token", help="Require and print a single-use Enrolment-Token.")] = False,
    gba_impi: Annotated[str | None, typer.Option("--gba-impi", help="GBA-Based RSPF: the subscriber's IMPI.")] = None,
) -> None:
    """Configure an enrolee (Bootstrap Instruction Configuration)."""
    mef = _load(config)
    try:
        kpm = secret_from_options(kpm_hex, kpm_file, hex_option="--kpm-hex", file_option="--kpm-file")
        cert = PeerCertInfo(CertificateFlavour(cert_flavour), cert_id) if cert_flavour and cert_id else None
        mafs = []
        for m in maf or []:
            parts = m.split(",")
            if len(parts) not in (3, 4):
                raise ValueError(f"--maf {m!r}: expected MAF-FQDN,KeyRegURI,KeyRetrURI[,ClientRegURI]")
            mafs.append(MAFPreference(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else None))
        cfg = EnroleeConfig(enrolee_id, kpm_id=kpm_id, cert=cert, targets=tuple(_parse_target(t) for t in target or []),
                            mafs=tuple(mafs), certificate_enrolment_uri=cert_enrolment_uri,
                            remote_management_uri=rm_uri, expiry_seconds=expiry, token_required=token)
        state = _state(mef)
        if gba_impi:
            from m2msec.mef.gba import add_gba_enrolee

            add_gba_enrolee(state, cfg, gba_impi)
        else:
            state.add_enrolee(cfg, kpm=kpm)
        typer.echo(f"enrolee {enrolee_id} configured")
        if token:
            typer.echo(f"enrolment-token {state.issue_token(enrolee_id)}")
    except (M2MSecError, ValueError) as exc:
        _fail(exc)


@enrolee_app.command("token")
def enrolee_token(config: ConfigOpt, enrolee_id: Annotated[str, typer.Option("--enrolee-id")],
                  valid_for: Annotated[int | None, typer.Option("--valid-for", help="Seconds.")] = None) -> None:
    """Issue another single-use Enrolment-Token."""
    try:
        tok = _state(_load(config)).issue_token(enrolee_id, valid_for=timedelta(seconds=valid_for) if valid_for else None)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"enrolment-token {tok}")


@enrolee_app.command("list")
def enrolee_list(config: ConfigOpt) -> None:
    """List configured enrolees (no secrets)."""
    for e in _state(_load(config)).list_enrolees():
        auth = f"kpm:{e.kpm_id}" if e.kpm_id else f"cert:{e.cert.flavour.value}:{e.cert.identifier}" if e.cert else "-"
        targets = ";".join(f"{t.target_id}={','.join(map(str, t.suids))}" for t in e.targets)
        typer.echo(f"{e.enrolee_id}\t{auth}\texpiry={e.expiry_seconds}s\ttoken={e.token_required}\t"
                   f"revoked={e.revoked}\ttargets={targets or '-'}\tmafs={','.join(m.maf_fqdn for m in e.mafs) or '-'}")


@enrolee_app.command("revoke")
def enrolee_revoke(config: ConfigOpt, enrolee_id: Annotated[str, typer.Option("--enrolee-id")]) -> None:
    """Revoke an enrolee: no more enrolments, its Ke/Kre deleted (targets can no longer fetch), its EST
    certificates revoked (on the next CRL)."""
    try:
        n, serials = _state(_load(config)).revoke_enrolee_report(enrolee_id)
    except M2MSecError as exc:
        _fail(exc)
    typer.echo(f"enrolee {enrolee_id} revoked ({n} keys removed, {len(serials)} certificates revoked)")
    for serial in serials:
        typer.echo(f"certificate revoked: {serial}")


@target_app.command("add")
def target_add(
    config: ConfigOpt,
    target_id: Annotated[str, typer.Option("--target-id", help="AE-ID / CSE-ID / MAF-FQDN (X-M2M-Origin).")],
    psk_id: Annotated[str | None, typer.Option("--psk-id")] = None,
    psk_hex: Annotated[str | None, typer.Option("--psk-hex", help="The Target's PSK (hex; visible in ps: prefer --psk-file).")] = None,
    psk_file: Annotated[str | None, typer.Option("--psk-file", help="File holding the PSK (hex text or raw octets; - = stdin).")] = None,
    cert_flavour: Annotated[str | None, typer.Option("--cert-flavour")] = None,
    cert_id: Annotated[str | None, typer.Option("--cert-id")] = None,
) -> None:
    """Configure how an Enrolment Target authenticates for MEF Key Retrieval."""
    try:
        cert = PeerCertInfo(CertificateFlavour(cert_flavour), cert_id) if cert_flavour and cert_id else None
        psk = secret_from_options(psk_hex, psk_file, hex_option="--psk-hex", file_option="--psk-file")
        _state(_load(config)).add_target(TargetConfig(target_id, psk_id=psk_id, cert=cert), psk=psk)
    except (M2MSecError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"target {target_id} configured")


@app.command("enrol")
def enrol_cmd(
    mef: Annotated[str, typer.Option("--mef", help="HOST:PORT of the MEF.")],
    kpm_id: Annotated[str, typer.Option("--kpm-id")],
    kpm_hex: Annotated[str | None, typer.Option("--kpm-hex", help="Kpm (hex; visible in ps: prefer --kpm-file).")] = None,
    kpm_file: Annotated[str | None, typer.Option("--kpm-file", help="File holding Kpm (hex text or raw octets; - = stdin).")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Enrolment-Token.")] = None,
    maf: Annotated[bool, typer.Option("--maf/--no-maf", help="MAF Enrolment Indication.")] = False,
    cert: Annotated[bool, typer.Option("--cert-enrolment/--no-cert-enrolment")] = False,
    rm: Annotated[bool, typer.Option("--remote-management/--no-remote-management")] = False,
    store: Annotated[str | None, typer.Option("--store", envvar="M2MSEC_STORE_URL",
                                              help="Keep Ke/Kre in this store (KEK from $M2MSEC_KEK[_FILE]).")] = None,
) -> None:
    """Enrol with the Pre-Provisioned Symmetric Key RSPF; prints KeID, KreID and instructions."""
    host, _, port = mef.rpartition(":")
    try:
        kpm = secret_from_options(kpm_hex, kpm_file, hex_option="--kpm-hex", file_option="--kpm-file", required=True)
        assert kpm is not None
        tls = mef_tls_config(psk=PSKCredentials(kpm_id.encode("utf-8"), kpm))
        req = EnrolmentRequest(cert, maf, rm, token)
        e = asyncio.run(_enrol(host or "127.0.0.1", int(port), tls, req))
        if store:
            with open_store(store, KeyEncryptionKey.from_env()) as s:
                save_enrolment(s, e)
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(exc)
    typer.echo(f"KeID {e.ke_id}")
    typer.echo(f"KreID {e.kre_id}")
    typer.echo(f"EnroleeID {e.enrolee_id}")
    typer.echo(f"expiry {e.expiry.isoformat() if e.expiry else '-'}")
    for i in e.instructions:
        typer.echo(f"instruction {i.type.value} {dict(i.params)}")
    for d in e.direct_keys:
        typer.echo(f"direct-key {d.target_id} SUID {d.suid}")


@app.command("bsf-sim")
def bsf_sim(
    subscriber: Annotated[list[str], typer.Option("--subscriber", help="IMPI=K (hex), the subscriber key of Ub.")],
    naf: Annotated[list[str], typer.Option("--naf", help="NAF-FQDN=token, a NAF allowed on Zn.")],
    domain: Annotated[str, typer.Option("--domain", help="BSF domain of the B-TIDs.")] = "bsf.operator.example",
    lifetime: Annotated[int, typer.Option("--lifetime", min=1, help="Bootstrapping lifetime (s).")] = 3600,
    port: Annotated[int, typer.Option("--port", help="127.0.0.1 port (0: ephemeral).")] = 0,
) -> None:
    """Run the BSF simulator (GBA Ub + Zn over HTTP on 127.0.0.1); prints 'listening URL'."""
    from m2msec.mef.gba import BSFSimulator

    sim = BSFSimulator(domain, lifetime=timedelta(seconds=lifetime))
    try:
        for item in subscriber:
            impi, _, k = item.rpartition("=")
            sim.add_subscriber(impi, bytes.fromhex(k))
        for item in naf:
            fqdn, _, tok = item.partition("=")
            if not fqdn or not tok:
                raise ValueError(f"--naf {fqdn!r}: expected NAF-FQDN=token")
            sim.add_naf(fqdn, tok)
    except ValueError as exc:
        _fail(exc)
    typer.echo(f"listening {sim.start('127.0.0.1', port)}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sim.close()


@app.command("enrol-gba")
def enrol_gba_cmd(
    mef: Annotated[str, typer.Option("--mef", help="HOST:PORT of the MEF.")],
    mef_fqdn: Annotated[str, typer.Option("--mef-fqdn", help="The MEF-FQDN (NAF FQDN of Ks_NAF).")],
    bsf: Annotated[str, typer.Option("--bsf", help="URL of the BSF (Ub).")],
    impi: Annotated[str, typer.Option("--impi")],
    k_hex: Annotated[str | None, typer.Option("--k-hex", help="Subscriber key K (hex; simulator AKA).")] = None,
    k_file: Annotated[str | None, typer.Option("--k-file", help="File holding K (hex text or raw octets; - = stdin).")] = None,
) -> None:
    """GBA bootstrapping (Ub), then the GBA-Based RSPF enrolment; prints KeID, KreID, EnroleeID."""
    from m2msec.mef.gba import ub_bootstrap

    host, _, port = mef.rpartition(":")
    try:
        k = secret_from_options(k_hex, k_file, hex_option="--k-hex", file_option="--k-file", required=True)
        assert k is not None
        boot = ub_bootstrap(bsf, impi, k)
        e = asyncio.run(_enrol(host or "127.0.0.1", int(port), mef_tls_config(psk=boot.psk(mef_fqdn)),
                               EnrolmentRequest(), mef_fqdn=mef_fqdn))
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(exc)
    typer.echo(f"B-TID {boot.btid}")
    typer.echo(f"KeID {e.ke_id}")
    typer.echo(f"KreID {e.kre_id}")
    typer.echo(f"EnroleeID {e.enrolee_id}")
    for d in e.direct_keys:
        typer.echo(f"direct-key {d.target_id} SUID {d.suid}")


@app.command("est-ca")
def est_ca_init(
    config: ConfigOpt,
    name: Annotated[str, typer.Option("--name", help="CA name (O=, CN=<name> Root CA).")],
    permit_dns: Annotated[list[str] | None, typer.Option("--permit-dns", help="nameConstraints dNSName subtree.")] = None,
    permit_uri: Annotated[list[str] | None, typer.Option("--permit-uri", help="nameConstraints URI host subtree.")] = None,
    intermediate: Annotated[bool, typer.Option("--intermediate/--no-intermediate")] = True,
    days: Annotated[int, typer.Option("--days", min=1)] = 3650,
    root_out: Annotated[Path | None, typer.Option("--root-out", help="Write the root certificate (PEM) here.")] = None,
) -> None:
    """Create the MEF CA (a name-constrained DevCA) and keep it in the store, encrypted at rest.

    With ``\\[mef] crl_base_url`` the intermediate names ``<crl_base_url>/root.crl`` (the root's
    CRL, which this MEF publishes with ``crl_port``) as its CRL distribution point (M21)."""
    from cryptography.hazmat.primitives import hashes, serialization

    from m2msec.mef.est import load_dev_ca, store_dev_ca
    from m2msec.mef.est_crl import crl_url_for
    from m2msec.pki import DevCA

    try:
        mef = _load(config)
        state = _state(mef)
        if load_dev_ca(state.store) is not None:
            raise ValueError("the store already holds an MEF CA")
        base = mef.get("crl_base_url")
        root_crl_url = crl_url_for(str(base), "root") if base and intermediate else None
        ca = DevCA.create(name, now=_utcnow(), permit_dns=permit_dns or (), permit_uri=permit_uri or (),
                          intermediate=intermediate, validity=timedelta(days=days), root_crl_url=root_crl_url)
        store_dev_ca(state.store, ca)
        state.store.close()
        if root_out is not None:
            root_out.write_bytes(ca.trust_anchor.public_bytes(serialization.Encoding.PEM))
    except (M2MSecError, OSError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"MEF CA {name!r} stored; root SHA-256 {ca.trust_anchor.fingerprint(hashes.SHA256()).hex()}")
    if root_crl_url:
        typer.echo(f"intermediate CRL distribution point {root_crl_url}")


@enrolee_app.command("est")
def enrolee_est(
    config: ConfigOpt,
    enrolee_id: Annotated[str, typer.Option("--enrolee-id")],
    flavour: Annotated[str, typer.Option("--flavour", help="Certificate flavour: ae-id, cse-id, node-id, device, fqdn.")],
    identifier: Annotated[list[str], typer.Option("--identifier", help="An identifier the enrolee may request.")],
    add_identifier: Annotated[list[str] | None, typer.Option("--add-identifier",
                                                             help="An identifier the MEF adds.")] = None,
    security_type: Annotated[list[str] | None, typer.Option(
        "--security-type", help="SAEF, ESPrim, ESData-Signature, ESData-Encryption (repeat).")] = None,
    base_uri: Annotated[str | None, typer.Option("--est-base-uri")] = None,
) -> None:
    """Let an enrolee enrol for a certificate with EST (identifiers and communication security types)."""
    from m2msec.mef.est import ESTProfile, SecurityType, set_est_profile

    try:
        state = _state(_load(config))
        profile = ESTProfile(enrolee_id, CertificateFlavour(flavour), tuple(identifier),
                             tuple(SecurityType(t) for t in (security_type or ["SAEF"])),
                             tuple(add_identifier or ()), base_uri)
        set_est_profile(state, profile)
        state.store.close()
    except (M2MSecError, OSError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"EST profile set for {enrolee_id}: {flavour} {list(identifier)} "
               f"{[t.value for t in profile.security_types]}")


_REVOKE_REASONS = {r.value: r for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl}


@app.command("est-revoke")
def est_revoke(
    config: ConfigOpt,
    serial: Annotated[str, typer.Option("--serial", help="Serial number (hex) of a certificate this MEF issued.")],
    reason: Annotated[str | None, typer.Option("--reason", help="RFC 5280 reason: " + ", ".join(_REVOKE_REASONS))] = None,
) -> None:
    """Revoke one EST certificate (its enrolee stays enrolled); it is on the next CRL."""
    from m2msec.mef.est import DevCAAuthority, ESTService, load_dev_ca

    if reason is not None and reason not in _REVOKE_REASONS:
        _fail(ValueError(f"unknown reason {reason!r}; one of {', '.join(_REVOKE_REASONS)}"))
    try:
        state = _state(_load(config))
        ca = load_dev_ca(state.store)
        if ca is None:
            raise ValueError("the store holds no MEF CA (m2msec mef est-ca)")
        doc = ESTService(state, DevCAAuthority(ca, state.clock)).revoke_certificate(
            serial, _REVOKE_REASONS[reason] if reason else None)
        state.store.close()
    except (M2MSecError, OSError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"certificate revoked: {doc['serial']} (enrolee {doc['enrolee_id']}, "
               f"reason {doc['reason'] or 'unspecified'})")


@app.command("est-crl")
def est_crl(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="File for the CRLs (PEM: all of them; DER: one).")],
    signer: Annotated[str | None, typer.Option("--signer", help="root or intermediate (default: all, PEM).")] = None,
    der: Annotated[bool, typer.Option("--der/--pem", help="DER needs --signer.")] = False,
) -> None:
    """Write the MEF CA's current CRLs (the ones ``serve`` publishes on ``crl_port``)."""
    from cryptography.hazmat.primitives import serialization

    if der and signer is None:
        _fail(ValueError("--der writes one CRL: give --signer"))
    try:
        mef = _load(config)
        state = _state(mef)
        publisher = _crl_publisher(state, mef)
        if publisher is None:
            raise ValueError("the store holds no MEF CA (m2msec mef est-ca)")
        if signer is not None and signer not in publisher.signers:
            raise ValueError(f"--signer must be one of {', '.join(publisher.signers)}")
        crls = [publisher.crl(signer)] if signer else publisher.crls()
        enc = serialization.Encoding.DER if der else serialization.Encoding.PEM
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(b"".join(c.public_bytes(enc) for c in crls))
        tmp.replace(out)
        state.store.close()
    except (M2MSecError, OSError, ValueError) as exc:
        _fail(exc)
    for c in crls:
        number = c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        typer.echo(f"crl {c.issuer.rfc4514_string()} number {number} revoked {len(c)} "
                   f"next_update {c.next_update_utc.isoformat() if c.next_update_utc else '-'}")
    typer.echo(f"written: {out}")


@app.command("est-enrol")
def est_enrol_cmd(
    mef: Annotated[str, typer.Option("--mef", help="HOST:PORT of the MEF.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for key.pem (0600), cert.pem, trust-anchors.pem.")],
    kpm_id: Annotated[str | None, typer.Option("--kpm-id", help="PSK RSPF: KpmID (or KreID).")] = None,
    kpm_hex: Annotated[str | None, typer.Option("--kpm-hex", help="PSK RSPF: Kpm (or Kre), hex.")] = None,
    kpm_file: Annotated[str | None, typer.Option("--kpm-file", help="PSK RSPF: file holding Kpm (or Kre): hex text or raw octets; - = stdin.")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", help="Certificate RSPF: our certificate (+ chain), PEM.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Certificate RSPF: our private key, PEM.")] = None,
    mef_ca: Annotated[Path | None, typer.Option("--mef-ca", help="Certificate RSPF: MEF trust anchor(s), PEM.")] = None,
    mef_fqdn: Annotated[str | None, typer.Option("--mef-fqdn", help="Certificate RSPF: the MEF-FQDN.")] = None,
    reenroll: Annotated[bool, typer.Option("--reenroll", help="simplereenroll with the --cert certificate.")] = False,
    token: Annotated[str | None, typer.Option("--token", help="Enrolment-Token.")] = None,
    key_type: Annotated[str, typer.Option("--key-type", help="ec-p256 (default), ec-p384, rsa-2048, rsa-3072.")] = "ec-p256",
    server_keygen: Annotated[bool, typer.Option(
        "--server-keygen", help="serverkeygen: the MEF generates the key (RFC 7030 4.4); --key-type is then "
                                "only the CSR's placeholder key.")] = False,
    ocsp_staple: Annotated[str, typer.Option(
        "--ocsp-staple", help="Certificate RSPF: off (default), if-present or require the MEF's stapled OCSP "
                              "response (RFC 6066 8); not off also prints ocsp_status.")] = "off",
) -> None:
    """Enrolment Exchange + EST (cacerts, csrattrs, simpleenroll/simplereenroll/serverkeygen) + install + report.

    ``--ocsp-staple if-present|require`` (certificate RSPF only): the handshake asks for the MEF's
    stapled OCSP response and verifies it (a REVOKED or invalid staple, and with ``require`` a
    missing or UNKNOWN one, ends it: exit 2, ``BAD_CERTIFICATE_STATUS``); the output then has
    ``ocsp_status good|revoked|unknown|none`` and, with a staple, ``ocsp_this_update`` and
    ``ocsp_next_update``.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from m2msec.mef.est_client import est_enrol
    from m2msec.pki import KeyType

    host, _, port = mef.rpartition(":")
    try:
        if (kpm_id is not None) == (cert is not None):
            raise ValueError("give --kpm-id/--kpm-hex (PSK RSPF) or --cert/--key/--mef-ca/--mef-fqdn (certificate RSPF)")
        staple = StaplePolicy(ocsp_staple) if ocsp_staple in {p.value for p in StaplePolicy} else None
        if staple is None:
            raise ValueError("--ocsp-staple is off, if-present or require")
        if kpm_id is not None and staple is not StaplePolicy.OFF:
            raise ValueError("--ocsp-staple needs the certificate RSPF (--cert): a PSK handshake has no certificate")
        if kpm_id is not None:
            kpm = secret_from_options(kpm_hex, kpm_file, hex_option="--kpm-hex", file_option="--kpm-file",
                                      required=True)
            assert kpm is not None
            tls = mef_tls_config(psk=PSKCredentials(kpm_id.encode("utf-8"), kpm))
        else:
            if key is None or mef_ca is None or mef_fqdn is None or cert is None:
                raise ValueError("the certificate RSPF needs --cert, --key, --mef-ca and --mef-fqdn")
            certs = x509.load_pem_x509_certificates(cert.read_bytes())
            pk = load_pem_private_key(key.read_bytes(), password=None)
            tls = mef_tls_config(credentials=CertCredentials(pk, certs[0], tuple(certs[1:])),  # type: ignore[arg-type]
                                 mef_fqdn=mef_fqdn,
                                 mef_anchors=tuple(x509.load_pem_x509_certificates(mef_ca.read_bytes())),
                                 ocsp_staple=staple)
        staples: list[Any] = []  # what the staple check found, per handshake
        if tls.check_ocsp_staple is not None:
            check = tls.check_ocsp_staple

            def record(der: bytes, chain: list[x509.Certificate]) -> Any:
                res = check(der, chain)
                staples.append(res)
                return res

            tls = dataclasses.replace(tls, check_ocsp_staple=record)
        req = EnrolmentRequest(certificate_enrolment=True, token=token)
        e, prov = asyncio.run(est_enrol(host or "127.0.0.1", int(port), tls, request=req, reenroll=reenroll,
                                        key_type=KeyType(key_type), server_keygen=server_keygen))
        paths = prov.install(out)
    except (M2MSecError, ValueError, OSError) as exc:
        _fail(exc)
    typer.echo(f"EnroleeID {e.enrolee_id}")
    typer.echo(f"KeID {e.ke_id}")
    typer.echo(f"certificate serial {prov.serial}")
    typer.echo(f"identifiers {' '.join(prov.identifiers)}")
    typer.echo(f"security-types {' '.join(t.value for t in prov.security_types)}")
    typer.echo(f"not-after {prov.certificate.not_valid_after_utc.isoformat()}")
    for k, pth in paths.items():
        typer.echo(f"{k} {pth}")
    if staple is not StaplePolicy.OFF:
        last = staples[-1] if staples else None
        typer.echo(f"ocsp_status {last.status.value if last is not None else 'none'}")
        if last is not None:
            typer.echo(f"ocsp_this_update {last.this_update.isoformat()}")
            typer.echo(f"ocsp_next_update {last.next_update.isoformat() if last.next_update else '-'}")


if __name__ == "__main__":  # python -m m2msec.mef.cli
    app()
