"""CRL fetching over https with explicit trust anchors (``https_ca``; P13; maf.toml
``[tls] client_crl_https_ca``, mef.toml ``[mef] enrolee_crl_https_ca``).

A real https server on 127.0.0.1 (Python's ``http.server`` behind ``ssl``) with a certificate
of a self-made CA serves a CRL: the fetch succeeds with that CA as ``https_ca``, and fails (store
unchanged) with the default trust store or another CA.  The MAF's config wiring fetches through
it; a real ``m2msec mef serve`` process with ``revocation = "require"`` accepts an enrolee only
when ``enrolee_crl_https_ca`` lets it fetch the CRLs.
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import ssl
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.maf.server import load_config
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CRLError, CRLFetcher, CRLRefresher, CRLStore, DevCA, FetchOutcome, load_https_ca
from m2msec.pki.ca import private_key_pem

PEM = serialization.Encoding.PEM
NOW = datetime.now(UTC)
SP = "m2m.example.com"


def _tls_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(hours=1))
            .not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl-server")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


class HTTPSCRLServer:
    """Serves ``self.bodies[path]`` (DER CRLs) over https on 127.0.0.1, on its own thread."""

    def __init__(self, tmp: Path, bodies: dict[str, bytes]) -> None:
        self.ca, ca_key = _tls_ca("CRL server CA")
        cert, key = _server_cert(self.ca, ca_key)
        self.ca_file = tmp / "crl-server-ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(PEM))
        (tmp / "srv.pem").write_bytes(cert.public_bytes(PEM))
        (tmp / "srv.key").write_bytes(private_key_pem(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")
        self.bodies = bodies
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits += 1
                body = outer.bodies.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> HTTPSCRLServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def pki() -> DevCA:
    return DevCA.create("Clients", now=NOW - timedelta(hours=1), permit_dns=[SP], permit_uri=[SP], intermediate=True)


@pytest.fixture
def srv(tmp_path: Path, pki: DevCA) -> Iterator[HTTPSCRLServer]:
    der = serialization.Encoding.DER
    bodies = {"/intermediate.crl": pki.issue_crl(now=NOW).public_bytes(der),
              "/root.crl": pki.issue_crl(now=NOW, signer="root").public_bytes(der)}
    with HTTPSCRLServer(tmp_path, bodies) as s:
        yield s


# ------------------------------------------------------------------ the fetcher


def test_https_fetch_with_the_servers_ca_succeeds(srv: HTTPSCRLServer, pki: DevCA) -> None:
    store = CRLStore()
    fetcher = CRLFetcher(store, [pki.trust_anchor, *pki.chain], https_ca=srv.ca_file)
    res = fetcher.fetch_sync(srv.url("/intermediate.crl"))
    assert res.outcome is FetchOutcome.UPDATED, res.error
    assert store.for_issuer(pki.intermediate_cert.subject)  # type: ignore[union-attr]
    res2 = asyncio.run(fetcher.fetch(srv.url("/root.crl")))
    assert res2.outcome is FetchOutcome.UPDATED, res2.error
    # an SSLContext is taken as is
    other = CRLFetcher(CRLStore(), [pki.trust_anchor, *pki.chain], https_ca=load_https_ca(srv.ca_file))
    assert other.fetch_sync(srv.url("/root.crl")).ok


def test_https_fetch_without_the_option_uses_the_default_store_and_fails(
    srv: HTTPSCRLServer, pki: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    store = CRLStore()
    fetcher = CRLFetcher(store, [pki.trust_anchor, *pki.chain])
    assert fetcher.https_ca is None
    res = fetcher.fetch_sync(srv.url("/intermediate.crl"))
    assert res.outcome is FetchOutcome.FAILED and "does not verify" in (res.error or "")
    res2 = asyncio.run(fetcher.fetch(srv.url("/intermediate.crl")))
    assert res2.outcome is FetchOutcome.FAILED and "does not verify" in (res2.error or "")
    assert list(store) == [] and srv.hits == 0  # refused in the handshake: no request was served
    assert any("does not verify" in r.getMessage() for r in caplog.records)


def test_https_fetch_with_another_ca_fails(srv: HTTPSCRLServer, pki: DevCA, tmp_path: Path) -> None:
    other, _ = _tls_ca("Some other CA")
    (tmp_path / "other-ca.pem").write_bytes(other.public_bytes(PEM))
    store = CRLStore()
    res = CRLFetcher(store, [pki.trust_anchor, *pki.chain], https_ca=tmp_path / "other-ca.pem").fetch_sync(
        srv.url("/intermediate.crl"))
    assert res.outcome is FetchOutcome.FAILED and list(store) == []


def test_refresher_passes_https_ca_to_its_fetcher(srv: HTTPSCRLServer, pki: DevCA) -> None:
    urls = [srv.url("/intermediate.crl"), srv.url("/root.crl")]
    good = CRLRefresher(CRLStore(), urls, [pki.trust_anchor, *pki.chain], https_ca=str(srv.ca_file))
    assert all(r.ok for r in good.refresh_once())
    assert all(r.ok for r in asyncio.run(good.refresh()))
    assert len(good.crls()) == 2
    bad = CRLRefresher(CRLStore(), urls, [pki.trust_anchor, *pki.chain])
    assert not any(r.ok for r in bad.refresh_once())


def test_load_https_ca_refuses_unusable_files(tmp_path: Path, pki: DevCA) -> None:
    with pytest.raises(CRLError, match="cannot load"):
        load_https_ca(tmp_path / "missing.pem")
    (tmp_path / "crl.pem").write_bytes(pki.issue_crl(now=NOW).public_bytes(PEM))
    with pytest.raises(CRLError):
        load_https_ca(tmp_path / "crl.pem")
    (tmp_path / "empty.pem").write_bytes(b"")
    with pytest.raises(CRLError):
        CRLFetcher(CRLStore(), [], https_ca=tmp_path / "empty.pem")
    ctx = load_https_ca(_write_ca(tmp_path))
    assert ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def _write_ca(tmp: Path) -> Path:
    ca, _ = _tls_ca("Any CA")
    (tmp / "any-ca.pem").write_bytes(ca.public_bytes(PEM))
    return tmp / "any-ca.pem"


# ------------------------------------------------------------------ maf.toml


def _maf_toml(tmp: Path, pki: DevCA, urls: list[str], extra: str) -> Path:
    leaf = pki.issue(F.FQDN, [f"maf.{SP}"], now=NOW - timedelta(hours=1))
    (tmp / "maf.pem").write_bytes(leaf.certificate.public_bytes(PEM))
    (tmp / "maf.key").write_bytes(private_key_pem(leaf.private_key))  # type: ignore[arg-type]
    (tmp / "clients-ca.pem").write_bytes(pki.trust_anchor.public_bytes(PEM))
    (tmp / "clients-sub-ca.pem").write_bytes(pki.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
    quoted = ", ".join(f'"{u}"' for u in urls)
    p = tmp / "maf.toml"
    p.write_text(f'fqdn = "maf.{SP}"\nstore = "sqlite:///maf.db"\n[tls]\ncert = "maf.pem"\nkey = "maf.key"\n'
                 f'client_trust_anchors = "clients-ca.pem"\nclient_crl_issuers = "clients-sub-ca.pem"\n'
                 f"client_crl_urls = [{quoted}]\n" + extra)
    return p


def test_maf_config_client_crl_https_ca(srv: HTTPSCRLServer, pki: DevCA, tmp_path: Path) -> None:
    from m2msec.errors import ParseError

    urls = [srv.url("/intermediate.crl"), srv.url("/root.crl")]
    cfg = load_config(_maf_toml(tmp_path, pki, urls, 'client_crl_https_ca = "crl-server-ca.pem"\n'))
    assert cfg.client_crl_https_ca == str(srv.ca_file)
    refresher = cfg.crl_refresher(clock=lambda: datetime.now(UTC))
    assert refresher is not None and all(r.ok for r in refresher.refresh_once())
    assert cfg.client_crls is not None and len(list(cfg.client_crls)) == 2
    plain = load_config(_maf_toml(tmp_path, pki, urls, ""))
    assert plain.client_crl_https_ca is None
    r2 = plain.crl_refresher(clock=lambda: datetime.now(UTC))
    assert r2 is not None and not any(r.ok for r in r2.refresh_once())
    for bad in ('client_crl_https_ca = "nothing-here.pem"\n', "client_crl_https_ca = 3\n",
                'client_crl_https_ca = "maf.key"\n'):
        with pytest.raises(ParseError, match="client_crl_https_ca|https CA file"):
            load_config(_maf_toml(tmp_path, pki, urls, bad))


# ------------------------------------------------------------------ mef serve (a real process)


def test_mef_serve_fetches_https_crls_with_enrolee_crl_https_ca(srv: HTTPSCRLServer, pki: DevCA,
                                                              tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mef"))
    from _mef_process import MEFProcess

    from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config
    from m2msec.tls.engine import CertCredentials

    mef_fqdn = f"mef.{SP}"
    ae = f"//{SP}/id-in/Chttps"
    mef_cert = pki.issue(F.FQDN, [mef_fqdn], now=NOW - timedelta(hours=1))
    dev = pki.issue(F.AE_ID, [ae], now=NOW - timedelta(hours=1))

    def run(with_ca: bool) -> str:
        d = tmp_path / ("with" if with_ca else "without")
        mef = MEFProcess(d, mef_fqdn)
        (d / "mef.cert.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in [mef_cert.certificate, *mef_cert.chain]))
        (d / "mef.key.pem").write_bytes(private_key_pem(mef_cert.private_key))  # type: ignore[arg-type]
        (d / "enrolee-ca.pem").write_bytes(pki.trust_anchor.public_bytes(PEM))
        (d / "enrolee-sub-ca.pem").write_bytes(pki.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
        extra = f'enrolee_crl_https_ca = "{srv.ca_file}"\n' if with_ca else ""
        mef.config.write_text(mef.config.read_text().replace(
            "[mef]\n", '[mef]\ncert = "mef.cert.pem"\nkey = "mef.key.pem"\nenrolee_trust_anchors = "enrolee-ca.pem"\n'
                       f'enrolee_crl_urls = ["{srv.url("/intermediate.crl")}", "{srv.url("/root.crl")}"]\n'
                       'enrolee_crl_issuers = "enrolee-sub-ca.pem"\nrevocation = "require"\n' + extra))
        mef.admin("enrolee", "add", "--enrolee-id", ae, "--cert-flavour", "ae-id", "--cert-id", ae)
        tls = mef_tls_config(credentials=CertCredentials(dev.private_key, dev.certificate, tuple(dev.chain)),
                             mef_fqdn=mef_fqdn, mef_anchors=(pki.trust_anchor,))
        with mef:
            try:
                got = asyncio.run(asyncio.wait_for(
                    enrol("127.0.0.1", mef.port, tls, EnrolmentRequest(), mef_fqdn=mef_fqdn), 20))
            except Exception as exc:  # noqa: BLE001 - the refusal is an expected outcome
                return f"refused: {exc}"
        return f"enrolled: {got.enrolee_id}"

    assert run(True) == f"enrolled: {ae}"  # the CRLs were fetched over https before the MEF listened
    refused = run(False)  # default trust store: no CRL, so require refuses the enrolee
    assert refused.startswith("refused:"), refused
