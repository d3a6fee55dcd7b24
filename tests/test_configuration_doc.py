"""docs/configuration.md stays true to the loaders of maf.toml, mef.toml and gateway.toml.

* Every ```toml block of the page is written to a temporary directory (with real KEK,
  certificate, key and CRL files made with m2msec's own APIs for the files it names) and
  loaded with the real loader: ``m2msec.maf.server.load_config`` + ``build_server``, the
  MEF's ``_load``/``_state``/``_credentials``/``_gba``/``_est`` as ``mef serve`` calls them,
  ``m2msec.gateway.config.load_config`` + ``m2msec.gateway.app.build``.  Each documented key
  of the complete examples must show up in the loaded configuration with the example's value,
  so a key placed in the wrong table (which the loaders silently ignore) fails.
* The keys a loader reads are taken from its source (every identifier-like string constant of
  the loader functions); they must equal the keys and tables of the page's key tables plus a
  short list of strings that are not keys.
* Defaults written as TOML literals in the tables are compared with what the loaders give the
  minimal examples; documented refusals are refused; the start line, SIGINT/SIGTERM handling
  and exit codes of the three ``serve`` commands are checked with real processes.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import m2msec.gateway.config as gateway_config
import m2msec.maf.server as maf_server
import m2msec.mef.cli as mef_cli
from m2msec.errors import M2MSecError
from m2msec.pki.ocsp_check import DEFAULT_FAILURE_CACHE, DEFAULT_PEER_OCSP_TIMEOUT
from m2msec.pki import CertificateFlavour, CRLFetcher, CRLStore, DevCA
from m2msec.store import KeyEncryptionKey

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
FILES = ("maf.toml", "mef.toml", "gateway.toml")
VAR_DIRS = ("/var/lib/m2msec/", "/etc/m2msec/")  # absolute directories of the examples, moved into tmp
CDP_URL = "http://pki.m2m.example.com/crl/root.crl"  # in the CA certificate of client_crl_issuers

# Identifier-like strings in the loader functions that are neither keys nor tables.
NOT_KEYS = {
    "mef.toml": {"serve", "connection_limits"},  # the @app.command("serve") decorator; a parsed value _load adds
    "gateway.toml": {"ascii"},  # bytes.decode("ascii") of a key file
}


# --------------------------------------------------------------------------- the page


def _doc() -> str:
    return DOC.read_text("utf-8")


def toml_blocks() -> dict[str, str]:
    """``{"maf.toml: complete example": text, ...}`` by the comment on each block's first line."""
    blocks = {}
    for text in re.findall(r"^```toml\n(.*?)^```", _doc(), flags=re.S | re.M):
        first = text.splitlines()[0]
        assert first.startswith("# "), f"a toml block must start with '# <file>: <kind>': {first!r}"
        blocks[first[2:].strip()] = text
    return blocks


@dataclass(frozen=True)
class Row:
    table: str  # "" for the top level, "tls", "admin" ([[admin]]), ...
    key: str
    type: str
    default: str
    meaning: str


def key_tables() -> dict[str, list[Row]]:
    """The rows of each file's key table (the table under the file's ``## `x.toml` `` heading)."""
    rows: dict[str, list[Row]] = {f: [] for f in FILES}
    current = None
    in_table = False
    for line in _doc().splitlines():
        if line.startswith("## "):
            current = next((f for f in FILES if f"`{f}`" in line), None)
            in_table = False
            continue
        if line.startswith("| Table | Key | Type | Default |"):
            in_table = current is not None
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 6, f"key table row with {len(cells)} cells: {line}"
            table = "" if cells[0] == "(top level)" else cells[0].strip("`[]")
            assert current is not None
            rows[current].append(Row(table, cells[1].strip("`"), cells[2], cells[3], cells[4]))
    return rows


def literal_default(row: Row) -> tuple[bool, Any]:
    """(True, value) when the Default cell is one backticked TOML literal."""
    m = re.fullmatch(r"`([^`]+)`", row.default)
    if not m:
        return False, None
    try:
        return True, tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def flatten(doc: dict[str, Any], tables: set[str]) -> dict[tuple[str, str], list[Any]]:
    """(table, key) -> values in the TOML document (one per [[array]] entry holding it)."""
    out: dict[tuple[str, str], list[Any]] = {}
    for name, value in doc.items():
        if name in tables and isinstance(value, dict):
            for k, v in value.items():
                out.setdefault((name, k), []).append(v)
        elif name in tables and isinstance(value, list):
            for entry in value:
                for k, v in entry.items():
                    out.setdefault((name, k), []).append(v)
        else:
            out.setdefault(("", name), []).append(value)
    return out


def doc_tables(file: str) -> set[str]:
    return {r.table for r in key_tables()[file] if r.table}


# --------------------------------------------------------------------------- files named by the examples


@dataclass
class PKI:
    ca: DevCA
    leaf_cert: x509.Certificate
    leaf_key: Any
    crl: x509.CertificateRevocationList
    cdp_ca: x509.Certificate  # a CA certificate that names CDP_URL


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def pki() -> PKI:
    now = _now()
    ca = DevCA.create("Config Doc", now=now, intermediate=True)
    issued = ca.issue(CertificateFlavour.FQDN, ["service.m2m.example.com"], now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CDP CA")])
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(CDP_URL)],
                                                              None, None, None)])
    cdp_ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
              .not_valid_after(now + timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(cdp, critical=False).sign(key, hashes.SHA256()))
    return PKI(ca, issued.certificate, issued.private_key, ca.issue_crl(now=now), cdp_ca)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_referenced_file(base: Path, name: str, pki: PKI) -> None:
    """Create the file ``name`` that an example refers to, chosen by its name."""
    p = base / name
    if name.endswith(".kek"):
        KeyEncryptionKey.generate().write_file(p)
    elif name.endswith("-sub-ca.pem"):
        p.write_bytes(_pem(*pki.ca.chain, pki.cdp_ca))
    elif name.endswith("-ca.pem"):
        p.write_bytes(_pem(pki.ca.trust_anchor))
    elif name.endswith("-cert.pem"):
        p.write_bytes(_pem(pki.leaf_cert, *pki.ca.chain))
    elif name.endswith("-key.pem"):
        p.write_bytes(pki.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    elif name.endswith(".crl"):
        p.write_bytes(pki.crl.public_bytes(serialization.Encoding.PEM))
    elif name.endswith((".key", ".psk")):
        p.write_text(secrets.token_hex(32) + "\n")
    else:
        raise AssertionError(f"the test does not know how to make {name!r}; extend write_referenced_file")


FILE_VALUE = re.compile(r"^[\w.-]+\.(kek|pem|crl|key|psk)$")


def materialise(text: str, base: Path, pki: PKI) -> tuple[Path, dict[str, Any]]:
    """Write the example into ``base`` with every file it names; absolute example directories
    become ``base``.  Returns the config path and its parsed TOML."""
    for d in VAR_DIRS:
        text = text.replace(d, f"{base}/")
    doc = tomllib.loads(text)

    def walk(v: Any) -> Iterator[str]:
        if isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)
        elif isinstance(v, str) and FILE_VALUE.match(v):
            yield v

    for name in set(walk(doc)):
        write_referenced_file(base, name, pki)
    path = base / "config.toml"
    path.write_text(text, "utf-8")
    return path, doc


# --------------------------------------------------------------------------- loading like the services do


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MAFLoaded:
    cfg: maf_server.MAFServerConfig
    server: Any


@dataclass
class MEFLoaded:
    mef: dict[str, Any]
    state: Any
    server: Any
    crl_issuers: list[x509.Certificate]
    crl_publisher: Any


@dataclass
class GatewayLoaded:
    cfg: gateway_config.GatewayConfig
    gateway: Any
    store: Any


def load_maf(path: Path) -> MAFLoaded:
    cfg = maf_server.load_config(path)
    store = maf_server.open_config_store(cfg, clock=_utc_now)
    try:
        server = maf_server.build_server(cfg, store, clock=_utc_now)
    finally:
        store.close()
    return MAFLoaded(cfg, server)


def load_mef(path: Path) -> MEFLoaded:
    """What ``mef serve`` does before it listens (the same private functions, in its order)."""
    from m2msec.mef.server import MEFServer

    try:
        mef = mef_cli._load(path)
        state = mef_cli._state(mef, load_crls=True)
    except typer.Exit as exc:
        raise ValueError(f"mef.toml refused (exit {exc.exit_code})") from None
    try:
        if "crl_port" in mef:  # the MEF CA must be in the store, as `m2msec mef est-ca` puts it there
            from m2msec.mef.est import load_dev_ca, store_dev_ca

            if load_dev_ca(state.store) is None:
                store_dev_ca(state.store, DevCA.create("MEF CA", now=_now(), intermediate=True))
        issuers = (x509.load_pem_x509_certificates(Path(mef["enrolee_crl_issuers"]).read_bytes())
                   if "enrolee_crl_issuers" in mef else [])
        est = mef_cli._est(state, mef)
        server = MEFServer(state, credentials=mef_cli._credentials(mef), gba=mef_cli._gba(path, state), est=est)
        publisher = mef_cli._crl_publisher(state, mef) if "crl_port" in mef else None
    finally:
        state.store.close()
    return MEFLoaded(mef, state, server, issuers, publisher)


def load_gateway(path: Path, **overrides: Any) -> GatewayLoaded:
    from m2msec.gateway.app import build

    cfg = gateway_config.load_config(path, **overrides)
    gw, store = build(cfg)
    store.close()
    return GatewayLoaded(cfg, gw, store)


LOADERS: dict[str, Callable[..., Any]] = {"maf.toml": load_maf, "mef.toml": load_mef, "gateway.toml": load_gateway}


# --------------------------------------------------------------------------- what a loaded key looks like

Accessor = Callable[[Any, Path], Any]


def _names(paths: Any) -> list[str]:
    return [Path(p).name for p in paths]


def _pub(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _https_ca(fetcher: CRLFetcher) -> list[x509.Certificate]:
    """The CA certificates the fetcher's https context trusts."""
    assert fetcher.https_ca is not None
    return [x509.load_der_x509_certificate(d) for d in fetcher.https_ca.get_ca_certs(binary_form=True)]


def _checker_https_ca(checker: Any) -> list[x509.Certificate]:
    """The CA certificates a PeerOCSPChecker's https context trusts (client_ocsp / enrolee_ocsp)."""
    assert checker is not None and checker.https_ca is not None
    return [x509.load_der_x509_certificate(d) for d in checker.https_ca.get_ca_certs(binary_form=True)]


def _ocsp_https_ca(stapler: Any) -> list[x509.Certificate]:
    """The CA certificates an OCSP stapler's https context trusts."""
    assert stapler is not None and stapler.client.https_ca is not None
    return [x509.load_der_x509_certificate(d) for d in stapler.client.https_ca.get_ca_certs(binary_form=True)]


def _saef_assoc(b: Any, i: int) -> Any:
    """The i-th certificate association as the gateway's SAEF listener accepts with it."""
    hooks = b.gateway.saef_listener.endpoint.tls_context.config.verify_peer.hooks
    return hooks[i][0]


def _saef_refresher(b: Any, i: int) -> Any:
    """The CRL refresher filling the i-th certificate association's CRL store (None: no URLs)."""
    store = _saef_assoc(b, i).peer_crls
    return next((r for r in b.gateway.saef_listener.status.refreshers if r.store is store), None)


# Each accessor returns the key's effective value in the terms of the TOML file (seconds,
# strings, file names); for files it returns what was loaded from them, compared with
# EXPECTED_FILE_CONTENT.  Keys of [[array]] tables return one value per entry.
MAF: dict[tuple[str, str], Accessor] = {
    ("", "fqdn"): lambda b, _: b.cfg.fqdn,
    ("", "store"): lambda b, _: b.cfg.store_url,
    ("", "kek_file"): lambda b, _: b.cfg.kek_file and Path(b.cfg.kek_file).name,
    ("", "host"): lambda b, _: b.server.host,
    ("", "port"): lambda b, _: b.server.port,
    ("", "max_registration_lifetime_s"): lambda b, _: b.server.service.max_registration_lifetime.total_seconds(),
    ("", "max_key_lifetime_s"): lambda b, _: b.server.service.max_key_lifetime.total_seconds(),
    ("", "key_cache_ttl_s"): lambda b, _: b.cfg.key_cache_ttl.total_seconds(),
    ("", "max_keys_per_client"): lambda b, _: b.server.service.max_keys_per_client,
    ("", "max_keys_total"): lambda b, _: b.server.service.max_keys_total,
    ("", "max_connections"): lambda b, _: b.server.connections.limits.max_connections,
    ("", "max_connections_per_ip"): lambda b, _: b.server.connections.limits.max_per_source,
    ("", "audit_seal_interval_s"): lambda b, _: b.cfg.audit_seal_interval,
    ("", "audit_sync_interval_s"): lambda b, _: b.server.service.audit.sync_interval,
    ("mef", "fqdn"): lambda b, _: b.server.service.mef.fetcher.mef_fqdn,
    ("mef", "host"): lambda b, _: b.server.service.mef.fetcher.host,
    ("mef", "port"): lambda b, _: b.server.service.mef.fetcher.port,
    ("mef", "psk_identity"): lambda b, _: b.server.service.mef.fetcher.tls.psk.identity.decode(),
    ("mef", "psk_hex"): lambda b, _: b.server.service.mef.fetcher.tls.psk.key.hex(),
    ("mef", "recheck_interval_s"): lambda b, _: b.server.mef_recheck_interval,
    ("tls", "cert"): lambda b, _: ("file", [b.cfg.credentials.certificate, *b.cfg.credentials.chain]),
    ("tls", "key"): lambda b, _: ("file", _pub(b.cfg.credentials.private_key)),
    ("tls", "client_trust_anchors"): lambda b, _: ("file", list(b.cfg.client_trust_anchors)),
    ("tls", "client_crls"): lambda b, _: _names(b.cfg.client_crl_files),
    ("tls", "client_crl_urls"): lambda b, _: [u for u in b.cfg.client_crl_urls if u != CDP_URL],
    ("tls", "client_crl_issuers"): lambda b, _: ("file", list(b.cfg.client_crl_issuers)),
    ("tls", "client_crl_from_cdp"): lambda b, _: CDP_URL in b.cfg.client_crl_urls,
    ("tls", "client_crl_refresh_s"): lambda b, _: b.cfg.client_crl_refresh.total_seconds(),
    ("tls", "client_crl_https_ca"): lambda b, _: ("file", _https_ca(b.cfg.crl_refresher(clock=_utc_now).fetcher)),
    ("tls", "revocation"): lambda b, _: b.cfg.revocation.value,
    ("tls", "ocsp_staple_url"): lambda b, _: b.cfg.stapler(clock=_utc_now).url if b.cfg.stapler(clock=_utc_now) else None,
    ("tls", "ocsp_staple_https_ca"): lambda b, _: ("file", _ocsp_https_ca(b.cfg.stapler(clock=_utc_now))),
    ("tls", "client_ocsp"): lambda b, _: b.server.service.client_ocsp is not None,
    ("tls", "client_ocsp_url"): lambda b, _: b.server.service.client_ocsp and b.server.service.client_ocsp.url,
    ("tls", "client_ocsp_https_ca"): lambda b, _: ("file", _checker_https_ca(b.server.service.client_ocsp)),
    ("tls", "client_ocsp_timeout_s"): lambda b, _: (b.server.service.client_ocsp.timeout
                                                    if b.server.service.client_ocsp else DEFAULT_PEER_OCSP_TIMEOUT),
    ("tls", "client_ocsp_failure_cache_s"): lambda b, _: (b.server.service.client_ocsp.failure_cache
                                                          if b.server.service.client_ocsp else DEFAULT_FAILURE_CACHE),
    ("admin", "fqdn"): lambda b, _: [a.fqdn for a in b.cfg.admins],
    ("admin", "client_config"): lambda b, _: [a.client_config for a in b.cfg.admins],
}

MEF: dict[tuple[str, str], Accessor] = {
    ("mef", "fqdn"): lambda b, _: b.state.fqdn,
    ("mef", "store"): lambda b, _: b.mef["store"],
    ("mef", "kek_file"): lambda b, _: Path(b.mef["kek_file"]).name if "kek_file" in b.mef else None,
    # host/port: `mef serve` applies their defaults itself (checked by test_services_start_and_stop)
    ("mef", "host"): lambda b, _: b.mef.get("host"),
    ("mef", "port"): lambda b, _: b.mef.get("port"),
    ("mef", "cert"): lambda b, _: ("file", [b.server.tls_context.config.credentials.certificate,
                                            *b.server.tls_context.config.credentials.chain]),
    ("mef", "key"): lambda b, _: ("file", _pub(b.server.tls_context.config.credentials.private_key)),
    ("mef", "enrolee_trust_anchors"): lambda b, _: ("file", [a for a in b.state.enrolee_anchors
                                                             if a.subject.rfc4514_string() != "CN=MEF CA Root CA,O=MEF CA"]),
    ("mef", "enrolee_crl_files"): lambda b, _: _names(b.mef.get("enrolee_crl_files", [])),
    ("mef", "revocation"): lambda b, _: b.state.revocation.value,
    ("mef", "enrolee_crl_urls"): lambda b, _: b.mef.get("enrolee_crl_urls"),
    ("mef", "enrolee_crl_issuers"): lambda b, _: ("file", b.crl_issuers),
    ("mef", "enrolee_crl_refresh_s"): lambda b, _: b.mef["enrolee_crl_refresh_s"],
    ("mef", "enrolee_crl_https_ca"): lambda b, _: ("file", _https_ca(CRLFetcher(
        CRLStore(), (), https_ca=b.mef["enrolee_crl_https_ca"]))),
    ("mef", "ocsp_staple_url"): lambda b, _: (mef_cli._stapler(b.mef, b.server.tls_context.config.credentials).url
                                              if "ocsp_staple_url" in b.mef else None),
    ("mef", "ocsp_staple_https_ca"): lambda b, _: ("file", _ocsp_https_ca(
        mef_cli._stapler(b.mef, b.server.tls_context.config.credentials))),
    ("mef", "enrolee_ocsp"): lambda b, _: b.state.enrolee_ocsp is not None,
    ("mef", "enrolee_ocsp_url"): lambda b, _: b.state.enrolee_ocsp and b.state.enrolee_ocsp.url,
    ("mef", "enrolee_ocsp_https_ca"): lambda b, _: ("file", _checker_https_ca(b.state.enrolee_ocsp)),
    ("mef", "enrolee_ocsp_timeout_s"): lambda b, _: (b.state.enrolee_ocsp.timeout if b.state.enrolee_ocsp
                                                     else DEFAULT_PEER_OCSP_TIMEOUT),
    ("mef", "enrolee_ocsp_failure_cache_s"): lambda b, _: (b.state.enrolee_ocsp.failure_cache if b.state.enrolee_ocsp
                                                           else DEFAULT_FAILURE_CACHE),
    ("mef", "crl_port"): lambda b, _: b.mef.get("crl_port"),
    ("mef", "audit_seal_interval_s"): lambda b, _: b.mef["audit_seal_interval_s"],
    ("mef", "max_connections"): lambda b, _: b.mef["connection_limits"].max_connections,
    ("mef", "max_connections_per_ip"): lambda b, _: b.mef["connection_limits"].max_per_source,
    ("mef", "crl_host"): lambda b, _: b.mef.get("crl_host", b.mef.get("host", "127.0.0.1")),
    ("mef", "crl_base_url"): lambda b, _: (b.mef["crl_base_url"]
                                           if b.server.est is not None and b.server.est.ca.ca.crl_url
                                           and b.server.est.ca.ca.crl_url.startswith(b.mef["crl_base_url"])
                                           else None),
    ("mef", "crl_validity_s"): lambda b, _: (b.crl_publisher.validity.total_seconds() if b.crl_publisher
                                             else b.mef["crl_validity_s"]),
    ("gba", "bsf_url"): lambda b, _: b.server.gba.zn.bsf_url if b.server.gba else None,
    ("gba", "naf_token"): lambda b, _: b.server.gba.zn._token if b.server.gba else None,
}

GATEWAY: dict[tuple[str, str], Accessor] = {
    ("cse", "id"): lambda b, _: b.gateway.cse_id,
    ("cse", "name"): lambda b, _: b.gateway.cse_name,
    ("cse", "admin"): lambda b, _: b.gateway.admin,
    ("cse", "sp_id"): lambda b, _: b.cfg.sp_id,
    ("cse", "url"): lambda b, _: b.gateway.cse_url,
    ("store", "url"): lambda b, _: b.cfg.store_url,
    ("store", "kek_file"): lambda b, _: b.cfg.kek_file and b.cfg.kek_file.name,
    ("gateway", "poa_ttl"): lambda b, _: b.gateway.poa_ttl,
    ("gateway", "enforce_acp"): lambda b, _: b.gateway.enforce_acp,
    ("gateway", "trace_file"): lambda b, _: b.cfg.trace_file and b.cfg.trace_file.name,
    ("gateway", "audit_seal_interval_s"): lambda b, _: b.cfg.audit_seal_interval,
    ("gateway", "max_connections"): lambda b, _: b.gateway.connections.limits.max_connections,
    ("gateway", "max_connections_per_ip"): lambda b, _: b.gateway.connections.limits.max_per_source,
    ("receiver", "suids"): lambda b, _: [int(s) for s in b.gateway.receiver.policy.supported_suids],
    ("receiver", "shared_lifetime"): lambda b, _: b.gateway.receiver.policy.shared_lifetime.total_seconds(),
    ("receiver", "unique_lifetime"): lambda b, _: b.gateway.receiver.policy.unique_lifetime.total_seconds(),
    ("receiver", "unique_key_period"): lambda b, _: b.gateway.receiver.policy.unique_key_period.total_seconds(),
    ("keys", "kid"): lambda b, _: [k.kid for k in b.cfg.keys],
    ("keys", "key_hex"): lambda b, _: [k.key.hex() for k in b.cfg.keys],
    ("keys", "key_file"): lambda b, base: [k.key.hex() for k in b.cfg.keys],
    ("keys", "peer"): lambda b, _: [k.peer for k in b.cfg.keys],
    ("keys", "suid"): lambda b, _: [int(k.suid) for k in b.cfg.keys],
    ("mef", "fqdn"): lambda b, _: b.gateway.receiver._keys.fetcher.mef_fqdn,
    ("mef", "host"): lambda b, _: b.gateway.receiver._keys.fetcher.host,
    ("mef", "port"): lambda b, _: b.gateway.receiver._keys.fetcher.port,
    ("mef", "psk_identity"): lambda b, _: b.gateway.receiver._keys.fetcher.tls.psk.identity.decode(),
    ("mef", "psk_hex"): lambda b, _: b.gateway.receiver._keys.fetcher.tls.psk.key.hex(),
    ("mef", "psk_file"): lambda b, _: b.gateway.receiver._keys.fetcher.tls.psk.key.hex(),
    ("mef", "target_id"): lambda b, _: b.gateway.receiver._keys.fetcher.target_id,
    ("mef", "recheck_interval_s"): lambda b, _: b.gateway.key_recheck_interval,
    ("routes", "csi"): lambda b, _: list(b.gateway.routes),
    ("routes", "url"): lambda b, _: list(b.gateway.routes.values()),
    ("saef", "listen"): lambda b, _: b.cfg.saef.listen,
    ("saef", "cert"): lambda b, _: ("file", [b.cfg.saef.credentials.certificate, *b.cfg.saef.credentials.chain]),
    ("saef", "key"): lambda b, _: ("file", _pub(b.cfg.saef.credentials.private_key)),
    ("saef", "require_saef_for"): lambda b, _: list(b.gateway.require_saef_for),
    ("saef", "ocsp_staple_url"): lambda b, _: (b.gateway.saef_listener.stapling.stapler.url
                                               if b.gateway.saef_listener.stapling.stapler else None),
    ("saef", "ocsp_staple_https_ca"): lambda b, _: ("file", _ocsp_https_ca(b.gateway.saef_listener.stapling.stapler)),
    ("saef", "max_connections"): lambda b, _: b.gateway.saef_listener.server.connections.limits.max_connections,
    ("saef", "max_connections_per_ip"): lambda b, _: b.gateway.saef_listener.server.connections.limits.max_per_source,
    ("saef_psk", "kpsa_id"): lambda b, _: [e.kpsa_id for e in b.cfg.saef.psk],
    ("saef_psk", "kpsa_hex"): lambda b, _: [e.kpsa.hex() for e in b.cfg.saef.psk],
    ("saef_psk", "kpsa_file"): lambda b, _: [e.kpsa.hex() for e in b.cfg.saef.psk],
    ("saef_psk", "ae_id"): lambda b, _: [e.peer_id for e in b.cfg.saef.psk],
    ("saef_cert", "flavour"): lambda b, _: [c.association.peer_cert.flavour.value for c in b.cfg.saef.certs],
    ("saef_cert", "identifier"): lambda b, _: [c.association.peer_cert.identifier for c in b.cfg.saef.certs],
    ("saef_cert", "root_of_trust"): lambda b, _: ("file", list(b.cfg.saef.certs[0].association.peer_root_of_trust)),
    ("saef_cert", "ae_id"): lambda b, _: [c.association.peer_id for c in b.cfg.saef.certs],
    ("saef_cert", "crls"): lambda b, _: [_names(c.crl_files) for c in b.cfg.saef.certs],
    ("saef_cert", "revocation"): lambda b, _: [c.association.revocation.value for c in b.cfg.saef.certs],
    # CRL URLs and OCSP as the listener runs them (m2msec.gateway.saefstatus): its refreshers and checkers
    ("saef_cert", "crl_urls"): lambda b, _: [[u for u in _saef_refresher(b, i).urls if u != CDP_URL]
                                             if _saef_refresher(b, i) else [] for i in range(len(b.cfg.saef.certs))],
    ("saef_cert", "crl_issuers"): lambda b, _: ("file", list(_saef_refresher(b, 0).fetcher.issuers[
        len(b.cfg.saef.certs[0].association.peer_root_of_trust):])),
    ("saef_cert", "crl_from_cdp"): lambda b, _: [bool(_saef_refresher(b, i)) and CDP_URL in _saef_refresher(b, i).urls
                                                 for i in range(len(b.cfg.saef.certs))],
    ("saef_cert", "crl_refresh_s"): lambda b, _: [c.crl_refresh.total_seconds() for c in b.cfg.saef.certs],
    ("saef_cert", "crl_https_ca"): lambda b, _: ("file", _https_ca(_saef_refresher(b, 0).fetcher)),
    ("saef_cert", "ocsp"): lambda b, _: [_saef_assoc(b, i).peer_ocsp is not None
                                         for i in range(len(b.cfg.saef.certs))],
    ("saef_cert", "ocsp_url"): lambda b, _: [_saef_assoc(b, i).peer_ocsp and _saef_assoc(b, i).peer_ocsp.url
                                             for i in range(len(b.cfg.saef.certs))],
    ("saef_cert", "ocsp_https_ca"): lambda b, _: ("file", _checker_https_ca(_saef_assoc(b, 0).peer_ocsp)),
    ("saef_cert", "ocsp_timeout_s"): lambda b, _: [_saef_assoc(b, i).peer_ocsp.timeout if _saef_assoc(b, i).peer_ocsp
                                                   else DEFAULT_PEER_OCSP_TIMEOUT
                                                   for i in range(len(b.cfg.saef.certs))],
    ("saef_maf", "fqdn"): lambda b, _: b.gateway.saef_listener.maf.config.maf_fqdn,
    ("saef_maf", "host"): lambda b, _: b.gateway.saef_listener.maf.config.host,
    ("saef_maf", "port"): lambda b, _: b.gateway.saef_listener.maf.config.port,
    ("saef_maf", "admin_fqdn"): lambda b, _: b.gateway.saef_listener.maf.config.admin_fqdn,
    ("saef_maf", "kmid"): lambda b, _: b.gateway.saef_listener.maf.config.psk.identity.decode(),
    ("saef_maf", "km_hex"): lambda b, _: b.gateway.saef_listener.maf.config.psk.key.hex(),
    ("saef_maf", "km_file"): lambda b, _: b.gateway.saef_listener.maf.config.psk.key.hex(),
    ("saef_maf", "cert"): lambda b, _: ("file", [b.gateway.saef_listener.maf.config.credentials.certificate,
                                                 *b.gateway.saef_listener.maf.config.credentials.chain]),
    ("saef_maf", "key"): lambda b, _: ("file", _pub(b.gateway.saef_listener.maf.config.credentials.private_key)),
    ("saef_maf", "ca"): lambda b, _: ("file", list(b.gateway.saef_listener.maf.config.maf_trust_anchors)),
    ("saef_maf", "timeout"): lambda b, _: b.gateway.saef_listener.maf.timeout,
    ("saef_maf", "negative_ttl"): lambda b, _: b.gateway.saef_listener.maf.negative_ttl.total_seconds(),
    ("saef_maf", "registration_lifetime"): lambda b, _: (
        b.gateway.saef_listener.maf.registration_lifetime.total_seconds()),
    ("saef_maf", "recheck_interval_s"): lambda b, _: b.gateway.saef_listener.maf_config.recheck_interval,
    ("esprim_maf", "fqdn"): lambda b, _: b.gateway.esprim_maf.config.maf_fqdn,
    ("esprim_maf", "host"): lambda b, _: b.gateway.esprim_maf.config.host,
    ("esprim_maf", "port"): lambda b, _: b.gateway.esprim_maf.config.port,
    ("esprim_maf", "admin_fqdn"): lambda b, _: b.gateway.esprim_maf.config.admin_fqdn,
    ("esprim_maf", "kmid"): lambda b, _: b.gateway.esprim_maf.config.psk.identity.decode(),
    ("esprim_maf", "km_hex"): lambda b, _: b.gateway.esprim_maf.config.psk.key.hex(),
    ("esprim_maf", "km_file"): lambda b, _: b.gateway.esprim_maf.config.psk.key.hex(),
    ("esprim_maf", "cert"): lambda b, _: ("file", [b.gateway.esprim_maf.config.credentials.certificate,
                                                   *b.gateway.esprim_maf.config.credentials.chain]),
    ("esprim_maf", "key"): lambda b, _: ("file", _pub(b.gateway.esprim_maf.config.credentials.private_key)),
    ("esprim_maf", "ca"): lambda b, _: ("file", list(b.gateway.esprim_maf.config.maf_trust_anchors)),
    ("esprim_maf", "timeout"): lambda b, _: b.gateway.esprim_maf.timeout,
    ("esprim_maf", "negative_ttl"): lambda b, _: b.gateway.esprim_maf.negative_ttl,
    ("esprim_maf", "registration_lifetime"): lambda b, _: b.gateway.esprim_maf.registration_lifetime.total_seconds(),
    ("esprim_maf", "recheck_interval_s"): lambda b, _: b.gateway.esprim_maf.recheck_interval,
}

ACCESSORS = {"maf.toml": MAF, "mef.toml": MEF, "gateway.toml": GATEWAY}

# In the complete gateway example psk_file stands for the pair psk_hex/psk_file (only one may be
# given); the example's comment names psk_hex.
ALTERNATIVES = {("gateway.toml", "mef", "psk_hex"), ("gateway.toml", "saef_maf", "km_hex"),
                ("gateway.toml", "saef_maf", "cert"), ("gateway.toml", "saef_maf", "key"),
                ("gateway.toml", "saef_maf", "ca"), ("gateway.toml", "esprim_maf", "km_hex"),
                ("gateway.toml", "esprim_maf", "cert"), ("gateway.toml", "esprim_maf", "key"),
                ("gateway.toml", "esprim_maf", "ca")}

# Defaults applied by `serve` rather than by a loader: test_services_start_and_stop checks them
# (the minimal examples listen on 127.0.0.1 with an ephemeral port).
DEFAULTS_SEEN_BY_PROCESS = {("mef.toml", "mef", "host"), ("mef.toml", "mef", "port")}


def expected(doc: dict[str, Any], table: str, key: str, base: Path) -> Any:
    """The accessor value that the example ``doc`` should produce for ``[table] key``:
    the value itself, the key read from a ``*_file``, one value per entry of an [[array]]."""
    def one(v: Any) -> Any:
        return (base / v).read_text().strip() if key in ("key_file", "psk_file", "km_file") and v is not None else v

    if table and isinstance(doc.get(table), list):
        return [one(e.get(key)) for e in doc[table]]
    return one((doc[table] if table else doc)[key])


def _file_content(name: str | list[str], pki: PKI) -> Any:
    if isinstance(name, list):  # a list of PEM files: their certificates in order
        return [c for n in name for c in _file_content(n, pki)]
    if name.endswith("-sub-ca.pem"):
        return [*pki.ca.chain, pki.cdp_ca]
    if name.endswith("-ca.pem"):
        return [pki.ca.trust_anchor]
    if name.endswith("-cert.pem"):
        return [pki.leaf_cert, *pki.ca.chain]
    if name.endswith("-key.pem"):
        return _pub(pki.leaf_key)
    raise AssertionError(name)


# --------------------------------------------------------------------------- tests: the page itself


def test_page_has_both_examples_and_a_key_table_per_file() -> None:
    blocks = toml_blocks()
    tables = key_tables()
    for f in FILES:
        assert f"{f}: complete example" in blocks
        assert f"{f}: minimal" in blocks
        assert len(tables[f]) >= 10, f"{f}: key table missing or short"
        keys = [(r.table, r.key) for r in tables[f]]
        assert len(keys) == len(set(keys)), f"{f}: a key is listed twice"
        for r in tables[f]:
            assert r.type and r.default and r.meaning, f"{f} {r}: empty cell"


@pytest.mark.parametrize("file", FILES)
def test_complete_example_shows_every_documented_key(file: str) -> None:
    rows = {(r.table, r.key) for r in key_tables()[file]}
    doc = tomllib.loads(toml_blocks()[f"{file}: complete example"])
    shown = set(flatten(doc, doc_tables(file)))
    assert shown - rows == set(), f"{file}: keys in the example but not in the key table"
    missing = {k for k in rows - shown if (file, *k) not in ALTERNATIVES}
    assert missing == set(), f"{file}: documented keys the complete example does not show"
    for _, table, key in (a for a in ALTERNATIVES if a[0] == file):
        assert key in toml_blocks()[f"{file}: complete example"], f"{file}: the example should mention {key}"


def _loader_functions(file: str) -> list[Any]:
    if file == "maf.toml":
        return [maf_server.load_config, maf_server.MAFServerConfig.mef_client]
    if file == "mef.toml":
        return [mef_cli._load, mef_cli._state, mef_cli._credentials, mef_cli._gba, mef_cli._est,
                mef_cli._crl_publisher, mef_cli._crls, mef_cli.serve]
    return [gateway_config.load_config, gateway_config._read_key, gateway_config._saef, gateway_config._saef_psk,
            gateway_config._saef_certs, gateway_config._saef_cert_fetch, gateway_config._saef_maf, gateway_config._saef_staple,
            gateway_config._recheck_interval]


def loader_strings(file: str) -> set[str]:
    """Identifier-like string constants in the loader functions: the keys and tables they read."""
    out: set[str] = set()
    for fn in _loader_functions(file):
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"[a-z][a-z0-9_]*", node.value):
                out.add(node.value)
    return out


@pytest.mark.parametrize("file", FILES)
def test_every_key_the_loader_reads_is_documented(file: str) -> None:
    rows = key_tables()[file]
    documented = {r.key for r in rows} | {r.table for r in rows if r.table}
    read = loader_strings(file) - NOT_KEYS.get(file, set())
    assert read - documented == set(), f"{file}: the loader reads keys the page does not document"
    assert documented - read == set(), f"{file}: the page documents keys the loader does not read"


def test_the_key_extraction_would_notice_a_new_key() -> None:
    """The source scan is what keeps the tables complete: it must see keys read via .get,
    [...] and `in` tests (MAF [tls] keys, the MEF's tuple of path keys, gateway sub-tables)."""
    assert {"client_crl_from_cdp", "client_crl_refresh_s", "psk_hex"} <= loader_strings("maf.toml")
    assert {"enrolee_trust_anchors", "crl_host", "naf_token"} <= loader_strings("mef.toml")
    assert {"unique_key_period", "psk_file", "target_id"} <= loader_strings("gateway.toml")


DECLARED = {"maf.toml": maf_server.MAF_TOML_KEYS, "mef.toml": mef_cli.MEF_TOML_KEYS,
            "gateway.toml": gateway_config.GATEWAY_TOML_KEYS}


@pytest.mark.parametrize("file", sorted(DECLARED))
def test_declared_keys_are_the_documented_keys(file: str) -> None:
    """The keys a loader accepts (everything else is refused) are exactly the documented ones."""
    rows = key_tables()[file]
    documented: dict[str, set[str]] = {"": {r.key for r in rows if not r.table} | doc_tables(file)}
    for r in rows:
        if r.table:
            documented.setdefault(r.table, set()).add(r.key)
    declared = {path.removesuffix("[]"): set(keys) for path, keys in DECLARED[file].items()}
    assert declared == documented


@pytest.mark.parametrize(("text", "message"), [
    ('fqdn = "maf.example.com"\nstore = "sqlite:///x.db"\nprot = 1\n', "unknown key 'prot' at the top level (did you mean 'port'?)"),
    ('fqdn = "maf.example.com"\nstore = "sqlite:///x.db"\n[tls]\nrevocaton = "require"\n',
     "unknown key 'revocaton' in [tls] (did you mean 'revocation'?)"),
    ('fqdn = "maf.example.com"\nstore = "sqlite:///x.db"\n[[admin]]\nfqdn = "sp.example.com"\nport = 1\n',
     "unknown key 'port' in [[admin]]"),
    ('fqdn = "maf.example.com"\nstore = "sqlite:///x.db"\n[mefs]\nfqdn = "mef.example.com"\n', "unknown key 'mefs'"),
])
def test_maf_toml_refuses_unknown_keys(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "maf.toml"
    path.write_text(text)
    with pytest.raises(M2MSecError) as ei:
        maf_server.load_config(path)
    assert message in str(ei.value)


def test_maf_toml_client_config_is_free_form(tmp_path: Path) -> None:
    path = tmp_path / "maf.toml"
    path.write_text('fqdn = "maf.example.com"\nstore = "sqlite:///x.db"\n[[admin]]\nfqdn = "sp.example.com"\n'
                    '[admin.client_config]\nhttpPort = 8443\nanything = { nested = true }\n')
    cfg = maf_server.load_config(path)
    assert cfg.admins[0].client_config == {"httpPort": 8443, "anything": {"nested": True}}


@pytest.mark.parametrize(("text", "message"), [
    ('[mef]\nfqdn = "mef.example.com"\nstore = "sqlite:///x.db"\nrevocaton = "require"\n',
     "unknown key 'revocaton' in [mef] (did you mean 'revocation'?)"),
    ('[mef]\nfqdn = "mef.example.com"\nstore = "sqlite:///x.db"\n[gba]\nbsf = "http://x"\n', "unknown key 'bsf' in [gba]"),
    ('[mef]\nfqdn = "mef.example.com"\nstore = "sqlite:///x.db"\n[tls]\ncert = "x"\n', "unknown key 'tls' at the top level"),
])
def test_mef_toml_refuses_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                       message: str) -> None:
    path = tmp_path / "mef.toml"
    path.write_text(text)
    with pytest.raises(typer.Exit) as ei:
        mef_cli._load(path)
    assert ei.value.exit_code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    ('[cse]\nid = "id-in"\nname = "cse-in"\nsp_ld = "//sp"\n', "unknown key 'sp_ld' in [cse] (did you mean 'sp_id'?)"),
    ('[cse]\nid = "id-in"\nname = "cse-in"\n[gateway]\nenforce_acl = false\n',
     "unknown key 'enforce_acl' in [gateway] (did you mean 'enforce_acp'?)"),
    ('[cse]\nid = "id-in"\nname = "cse-in"\n[[keys]]\nkid = "k"\npeer = "Cx"\nkey = "00"\n', "unknown key 'key' in [[keys]]"),
    ('[cse]\nid = "id-in"\nname = "cse-in"\n[[route]]\ncsi = "/x"\n', "unknown key 'route' at the top level"),
])
def test_gateway_toml_refuses_unknown_keys(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(gateway_config.ConfigError) as ei:
        gateway_config.load_config(path, cse_url="http://127.0.0.1:8080")
    assert message in str(ei.value)


@pytest.mark.parametrize("file", FILES)
def test_every_documented_key_has_an_accessor(file: str) -> None:
    assert {(r.table, r.key) for r in key_tables()[file]} == set(ACCESSORS[file])


# --------------------------------------------------------------------------- tests: the examples load


@pytest.fixture
def kek_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M2MSEC_KEK_FILE", raising=False)
    monkeypatch.setenv("M2MSEC_KEK", secrets.token_hex(32))
    monkeypatch.delenv("M2MSEC_GBA_NAF_TOKEN", raising=False)


@pytest.mark.parametrize("file", FILES)
def test_complete_example_loads_with_every_value(file: str, tmp_path: Path, pki: PKI, kek_env: None) -> None:
    path, doc = materialise(toml_blocks()[f"{file}: complete example"], tmp_path, pki)
    loaded = LOADERS[file](path)
    values = flatten(doc, doc_tables(file))
    for (table, key), get in ACCESSORS[file].items():
        if (table, key) not in values:
            continue
        got = get(loaded, tmp_path)
        if isinstance(got, tuple) and got and got[0] == "file":
            assert got[1] == _file_content(values[(table, key)][0], pki), f"{file} [{table}] {key}"
            continue
        want = expected(doc, table, key, tmp_path)
        pair = {("keys", "key_hex"): ("key_hex", "key_file"), ("keys", "key_file"): ("key_hex", "key_file"),
                ("saef_psk", "kpsa_hex"): ("kpsa_hex", "kpsa_file"),
                ("saef_psk", "kpsa_file"): ("kpsa_hex", "kpsa_file")}.get((table, key))
        if file == "gateway.toml" and pair is not None:
            hexes = get(loaded, tmp_path)  # one key per entry, from the hex or the file key
            entries = doc[table]
            assert hexes == [e[pair[0]] if pair[0] in e else (tmp_path / e[pair[1]]).read_text().strip()
                             for e in entries]
            continue
        assert got == want, f"{file} [{table}] {key}: loaded {got!r}, the example says {want!r}"


def _with_required_tables(file: str, minimal: dict[str, Any], complete: dict[str, Any]) -> dict[str, Any]:
    """The minimal example plus, for each other table of the complete example, only the keys
    documented as required (or the first of a "one of" pair): the defaults of every other key."""
    rows = key_tables()[file]
    out = dict(minimal)
    for table in doc_tables(file):
        if table in out:
            continue
        req = {r.key for r in rows if r.table == table and r.default.startswith(("required", "one of"))}
        src = complete[table]
        if isinstance(src, list):
            entries = []
            for e in src:
                chosen = {k: v for k, v in e.items() if k in req}
                for a, b in (("key_hex", "key_file"), ("psk_hex", "psk_file")):
                    if a in chosen and b in chosen:
                        del chosen[b]
                entries.append(chosen)
            out[table] = entries
        else:
            chosen = {k: v for k, v in src.items() if k in req}
            if "psk_hex" not in chosen and "psk_file" in src:
                chosen["psk_file"] = src["psk_file"]
            out[table] = chosen
    return out


def _dump(doc: dict[str, Any]) -> str:
    """A small TOML writer for the shapes of these files."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {val(v)}" for k, v in doc.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{kk} = {val(x)}" for kk, x in v.items())]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for e in v:
                lines += [f"[[{k}]]", *(f"{kk} = {val(x)}" for kk, x in e.items())]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("file", FILES)
def test_documented_defaults(file: str, tmp_path: Path, pki: PKI, kek_env: None,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = toml_blocks()
    complete = tomllib.loads(blocks[f"{file}: complete example"])
    # The minimal example on its own (KEK from the environment, --cse for the gateway):
    (tmp_path / "minimal").mkdir()
    path, minimal = materialise(blocks[f"{file}: minimal"], tmp_path / "minimal", pki)
    overrides = {"cse_url": "http://127.0.0.1:9"} if file == "gateway.toml" else {}
    LOADERS[file](path, **overrides)
    # ... and with each optional table reduced to its required keys, for their defaults.
    (tmp_path / "req").mkdir()
    text = _dump(_with_required_tables(file, minimal, complete))
    monkeypatch.setenv("M2MSEC_GBA_NAF_TOKEN", "token-from-env")  # [gba] without naf_token
    path, doc = materialise(text, tmp_path / "req", pki)
    loaded = LOADERS[file](path, **overrides)
    checked = 0
    for row in key_tables()[file]:
        ok, default = literal_default(row)
        if not ok or (file, row.table, row.key) in DEFAULTS_SEEN_BY_PROCESS:
            continue
        got = ACCESSORS[file][(row.table, row.key)](loaded, tmp_path)
        if isinstance(got, tuple) and got and got[0] == "file":
            got = got[1]
        entries = doc.get(row.table) if row.table else None
        want = [default] * len(entries) if isinstance(entries, list) else default  # [[array]]: per entry
        assert got == want, f"{file} [{row.table}] {row.key}: default {got!r}, the page says {want!r}"
        checked += 1
    assert checked >= 3


def test_gateway_default_store_is_next_to_the_file(tmp_path: Path, pki: PKI, kek_env: None) -> None:
    path, _ = materialise(toml_blocks()["gateway.toml: minimal"], tmp_path, pki)
    cfg = gateway_config.load_config(path)
    assert cfg.store_url == f"sqlite://{tmp_path.resolve()}/gateway.db"
    assert cfg.cse_url is None and cfg.kek_file is None
    assert gateway_config.load_config(path, cse_url="http://x:1", store_url="sqlite:///tmp/x.db").store_url \
        == "sqlite:///tmp/x.db"


# --------------------------------------------------------------------------- documented refusals

REFUSALS = [
    ("maf.toml", "key_cache_ttl_s = 0.5", "key_cache_ttl_s = 86401"),
    ("maf.toml", "max_keys_per_client = 200", "max_keys_per_client = 0"),
    ("maf.toml", "max_keys_per_client = 200", "max_keys_per_client = 100001"),
    ("maf.toml", "max_keys_total = 1000000", "max_keys_total = 0"),
    ("maf.toml", "max_keys_total = 1000000", "max_keys_total = 10000001"),
    ("maf.toml", "max_connections = 2000", "max_connections = 0"),
    ("maf.toml", "max_connections_per_ip = 64", "max_connections_per_ip = true"),
    ("maf.toml", 'revocation = "require"', 'revocation = "sometimes"'),
    ("maf.toml", "audit_seal_interval_s = 60", "audit_seal_interval_s = 0.1"),
    ("maf.toml", "audit_seal_interval_s = 60", 'audit_seal_interval_s = "60"'),
    ("maf.toml", "audit_sync_interval_s = 0.5", "audit_sync_interval_s = 61"),
    ("maf.toml", "audit_sync_interval_s = 0.5", "audit_sync_interval_s = true"),
    ("maf.toml", "audit_sync_interval_s = 0.5", "audit_sync_interval_s = -1"),
    ("maf.toml", "recheck_interval_s = 600", "recheck_interval_s = 5"),
    ("maf.toml", "recheck_interval_s = 600", "recheck_interval_s = 86401"),
    ("maf.toml", "recheck_interval_s = 600", 'recheck_interval_s = "600"'),
    ("maf.toml", "client_crl_refresh_s = 900", "client_crl_refresh_s = 0"),
    ("maf.toml", "client_crl_from_cdp = true", 'client_crl_from_cdp = "yes"'),
    ("maf.toml", '"http://pki.m2m.example.com/crl/intermediate.crl"', '"ftp://pki.m2m.example.com/x.crl"'),
    ("maf.toml", 'key = "maf-key.pem"', ""),  # [tls] needs key
    ("maf.toml", 'client_crl_https_ca = "crl-server-ca.pem"', 'client_crl_https_ca = "no-ca.crl"'),
    ("maf.toml", "client_ocsp_timeout_s = 5", "client_ocsp_timeout_s = 0"),
    ("maf.toml", "client_ocsp_failure_cache_s = 30", "client_ocsp_failure_cache_s = -1"),
    ("maf.toml", "client_ocsp_failure_cache_s = 30", "client_ocsp_failure_cache_s = 3601"),
    ("maf.toml", "client_ocsp = true", 'client_ocsp = "yes"'),
    ("maf.toml", 'client_ocsp_url = "https://pki.m2m.example.com/ocsp"', 'client_ocsp_url = "ldap://pki/"'),
    ("maf.toml", 'revocation = "require"', 'revocation = "off"'),  # client_ocsp needs a status policy
    ("mef.toml", "crl_validity_s = 43200", "crl_validity_s = 0"),
    ("mef.toml", "enrolee_crl_refresh_s = 900", "enrolee_crl_refresh_s = -1"),
    ("mef.toml", "crl_port = 8080", "crl_port = true"),
    ("mef.toml", "audit_seal_interval_s = 60", "audit_seal_interval_s = 86401"),
    ("mef.toml", "audit_seal_interval_s = 60", "audit_seal_interval_s = true"),
    ("mef.toml", "max_connections = 2000", "max_connections = 1000001"),
    ("mef.toml", "max_connections_per_ip = 64", 'max_connections_per_ip = "64"'),
    ("mef.toml", "enrolee_ocsp_timeout_s = 5", "enrolee_ocsp_timeout_s = 10"),
    ("mef.toml", "enrolee_ocsp_failure_cache_s = 30", 'enrolee_ocsp_failure_cache_s = "30"'),
    ("mef.toml", "enrolee_ocsp = true", "enrolee_ocsp = 1"),
    ("mef.toml", 'revocation = "require"', 'revocation = "off"'),  # enrolee_ocsp needs a status policy
    ("mef.toml", 'revocation = "require"', 'revocation = "sometimes"'),
    ("mef.toml", '"http://pki.m2m.example.com/crl/intermediate.crl"', '"ftp://pki.m2m.example.com/x.crl"'),
    ("mef.toml", 'crl_base_url = "http://mef.m2m.example.com:8080/crl/"', 'crl_base_url = "mef/crl"'),
    ("mef.toml", 'enrolee_crl_issuers = "enrolee-sub-ca.pem"', 'enrolee_crl_issuers = ["enrolee-sub-ca.pem"]'),
    ("mef.toml", 'enrolee_crl_https_ca = "crl-server-ca.pem"', 'enrolee_crl_https_ca = "no-ca.crl"'),
    ("mef.toml", 'naf_token = "zn-token-of-this-mef"', ""),  # [gba] needs a token (none in the environment)
    ("mef.toml", 'store = "sqlite:///var/lib/m2msec/mef.db"', ""),
    ("gateway.toml", "enforce_acp = false", 'enforce_acp = "no"'),
    ("gateway.toml", "recheck_interval_s = 600", "recheck_interval_s = 9"),
    ("gateway.toml", "recheck_interval_s = 600", "recheck_interval_s = 86401"),
    ("gateway.toml", "recheck_interval_s = 600", "recheck_interval_s = true"),
    ("gateway.toml", "audit_seal_interval_s = 60", "audit_seal_interval_s = 0.2"),
    ("gateway.toml", "audit_seal_interval_s = 60", 'audit_seal_interval_s = "60"'),
    ("gateway.toml", 'sp_id = "//m2m.example.com"', 'sp_id = "//"'),
    ("gateway.toml", 'key_file = "cae2.key"', 'key_file = "cae2.key"\nkey_hex = "00112233445566778899aabbccddeeff"'),
    ("gateway.toml", "suid = 23", "suid = 12"),
    ("gateway.toml", 'name = "cse-in"', ""),
    ("gateway.toml", 'psk_file = "mef.psk"', ""),
    ("gateway.toml", "unique_key_period = 7200", "unique_key_period = 1000"),
    ("gateway.toml", "suids = [13, 23, 33, 43]", "suids = [11]"),
    ("gateway.toml", 'listen = "0.0.0.0:8443"', 'listen = "8443"'),
    ("gateway.toml", "max_connections = 4000", "max_connections = -1"),
    ("gateway.toml", "max_connections = 3000", "max_connections = 0"),
    ("gateway.toml", "max_connections_per_ip = 256", "max_connections_per_ip = 2.5"),
    ("gateway.toml", 'require_saef_for = ["Cae1", "Cmeter-*"]', 'require_saef_for = ["*"]'),
    ("gateway.toml", 'kpsa_file = "meter-7.psk"', 'kpsa_file = "meter-7.psk"\nkpsa_hex = "00112233"'),
    ("gateway.toml", 'flavour = "ae-id"', 'flavour = "cse-id"'),
    ("gateway.toml", 'key = "cse-in-key.pem"', ""),
    ("gateway.toml", 'revocation = "require"', 'revocation = "sometimes"'),
    ("gateway.toml", 'revocation = "require"', 'revocation = "off"'),  # crl_urls and ocsp need a status policy
    ("gateway.toml", "crl_refresh_s = 900", "crl_refresh_s = 0"),
    ("gateway.toml", "crl_from_cdp = true", 'crl_from_cdp = "yes"'),
    ("gateway.toml", '"http://pki.m2m.example.com/crl/aes-issuing.crl"', '"ftp://pki.m2m.example.com/x.crl"'),
    ("gateway.toml", 'crl_https_ca = "crl-server-ca.pem"', 'crl_https_ca = "aes-ca.crl"'),
    ("gateway.toml", "ocsp = true", 'ocsp = "yes"'),
    ("gateway.toml", "ocsp_timeout_s = 5", "ocsp_timeout_s = 10"),
    ("gateway.toml", 'ocsp_url = "https://pki.m2m.example.com/ocsp"', 'ocsp_url = "ldap://pki/"'),
    ("gateway.toml", "negative_ttl = 5", "negative_ttl = 0"),
    ("gateway.toml", "timeout = 4", "timeout = 9"),
    ("gateway.toml", 'kmid = "cse-in@maf.m2m.example.com"', ""),
    ("gateway.toml", 'km_file = "gateway-maf.key"', 'km_file = "gateway-maf.key"\nca = "aes-ca.pem"'),
]


@pytest.mark.parametrize(("file", "old", "new"), REFUSALS, ids=[f"{f}:{n or 'no ' + o}" for f, o, n in REFUSALS])
def test_documented_constraints_are_enforced(file: str, old: str, new: str, tmp_path: Path, pki: PKI,
                                             kek_env: None) -> None:
    text = toml_blocks()[f"{file}: complete example"]
    assert text.count(old) == 1, f"{old!r} is no longer in the {file} example"
    path, _ = materialise(text.replace(old, new), tmp_path, pki)
    with pytest.raises((M2MSecError, ValueError)):
        LOADERS[file](path)


# --------------------------------------------------------------------------- the services themselves

START_LINE = {
    "maf.toml": re.compile(r"MAF maf\.m2m\.example\.com listening on 127\.0\.0\.1:(\d+)"),
    "mef.toml": re.compile(r"listening 127\.0\.0\.1:(\d+)"),
    "gateway.toml": re.compile(r"listening on http://127\.0\.0\.1:(\d+)"),
}


def _serve_argv(file: str, path: Path) -> list[str]:
    service = {"maf.toml": "maf", "mef.toml": "mef", "gateway.toml": "gateway"}[file]
    argv = [sys.executable, "-c", "from m2msec.cli import app; app()", service, "serve", "--config", str(path)]
    if file == "gateway.toml":
        argv += ["--cse", "http://127.0.0.1:9", "--listen", "127.0.0.1:0"]
    return argv


def test_services_start_and_stop(tmp_path: Path, pki: PKI) -> None:
    """The minimal examples serve on 127.0.0.1 with an ephemeral port, print the documented
    start line, and stop with the documented exit codes; a bad file exits 2."""
    env = {**os.environ, "M2MSEC_KEK": secrets.token_hex(32)}
    env.pop("M2MSEC_KEK_FILE", None)
    procs = {}
    for file in FILES:
        d = tmp_path / file.split(".")[0]
        d.mkdir()
        path, _ = materialise(toml_blocks()[f"{file}: minimal"], d, pki)
        procs[file] = subprocess.Popen(_serve_argv(file, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env)
    bad = tmp_path / "bad.toml"
    bad.write_text('fqdn = "maf.m2m.example.com"\n')  # no store
    try:
        for file, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline()
            m = START_LINE[file].fullmatch(line.strip())
            assert m and int(m.group(1)) > 0, f"{file}: start line {line!r}"
        # handlers are installed before the start line: no wait needed; SIGHUP with nothing to
        # reload is a note, not the end of the service
        for p in procs.values():
            p.send_signal(signal.SIGHUP)
        for file, p in procs.items():
            assert p.stderr is not None
            assert "sighup: nothing to reload" in p.stderr.readline(), file
            assert p.poll() is None, file
        procs["maf.toml"].send_signal(signal.SIGTERM)
        procs["mef.toml"].send_signal(signal.SIGTERM)
        procs["gateway.toml"].send_signal(signal.SIGINT)
        for file, p in procs.items():
            _, err = p.communicate(timeout=20)
            assert p.returncode == 0, f"{file}: exit code {p.returncode}: {err[-500:]}"
        r = subprocess.run(_serve_argv("maf.toml", bad), capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 2 and "error: " in r.stderr and "'store'" in r.stderr
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
