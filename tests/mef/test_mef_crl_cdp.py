"""The MEF CA's intermediate names the root's CRL as its distribution point (M21, RFC 5280 4.2.1.13).

``m2msec mef est-ca`` with ``[mef] crl_base_url`` writes ``<base>/root.crl`` into the intermediate;
leaves name ``<base>/intermediate.crl``.  With the MEF's CRL endpoint on that base URL,
``openssl verify -crl_check -crl_download`` of the intermediate and of a leaf finds the CRL of
each one's issuer with no URL given, and
a MAF with ``client_crl_from_cdp`` takes the root CRL's URL from the configured intermediate.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from m2msec.maf.server import load_config
from m2msec.mef.cli import app
from m2msec.mef.est import load_dev_ca
from m2msec.mef.est_crl import ESTCRLPublisher, crl_url_for
from m2msec.mef.state import NS_EST_REVOKED
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CRLRefresher, CRLStore, DevCA, PeerCertInfo, RevocationPolicy, distribution_points
from m2msec.pki.crl_http import CRLHTTPServer
from m2msec.pki.errors import CertificateVerificationError, VerificationReason
from m2msec.pki.verify import verify_peer_certificate
from m2msec.store import KeyEncryptionKey, Store, open_store

SP = "m2m.example.com"
AE = f"//{SP}/id-in/Ccdp"
PEM = Encoding.PEM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """A CRLHTTPServer on a fixed port, on its own event-loop thread."""

    def __init__(self, sources: dict[str, Callable[[], x509.CertificateRevocationList]], port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = CRLHTTPServer(sources, port=port)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _MEFCA:
    def __init__(self, tmp: Path, base: str, *, intermediate: bool = True) -> None:
        kek = KeyEncryptionKey.generate()
        kek.write_file(tmp / "mef.kek")
        self.cfg = tmp / "mef.toml"
        self.cfg.write_text(f'[mef]\nfqdn = "mef.{SP}"\nstore = "sqlite:///{tmp / "mef.db"}"\nkek_file = "mef.kek"\n'
                            f'crl_base_url = "{base}"\n')
        args = ["est-ca", "--config", str(self.cfg), "--name", "MEF CA", "--permit-uri", SP]
        self.output = CliRunner().invoke(app, args + ([] if intermediate else ["--no-intermediate"])).output
        self.store: Store = open_store(f"sqlite:///{tmp / 'mef.db'}", kek)
        ca = load_dev_ca(self.store, crl_base_url=base)
        assert ca is not None, self.output
        self.ca: DevCA = ca


@pytest.fixture
def mefca(tmp_path: Path) -> Iterator[tuple[_MEFCA, int]]:
    port = _free_port()
    m = _MEFCA(tmp_path, f"http://127.0.0.1:{port}/crl")
    yield m, port
    m.store.close()


def _now() -> datetime:
    return datetime.now(UTC)


def test_est_ca_puts_the_root_crl_url_into_the_intermediate(mefca: tuple[_MEFCA, int]) -> None:
    m, port = mefca
    base = f"http://127.0.0.1:{port}/crl"
    inter = m.ca.intermediate_cert
    assert inter is not None
    assert distribution_points(inter) == [crl_url_for(base, "root")]
    assert f"intermediate CRL distribution point {crl_url_for(base, 'root')}" in m.output
    assert distribution_points(m.ca.trust_anchor) == []  # nothing covers the trust anchor
    leaf = m.ca.issue(F.AE_ID, [AE], now=_now())
    assert distribution_points(leaf.certificate) == [crl_url_for(base, "intermediate")]
    ext = inter.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not ext.critical


def test_without_crl_base_url_or_intermediate_there_is_no_cdp(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "a" / "mef.kek")
    cfg = tmp_path / "a" / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "mef.{SP}"\nstore = "sqlite:///{tmp_path / "a" / "mef.db"}"\nkek_file = "mef.kek"\n')
    res = CliRunner().invoke(app, ["est-ca", "--config", str(cfg), "--name", "MEF CA", "--permit-uri", SP])
    assert res.exit_code == 0 and "distribution point" not in res.output
    with open_store(f"sqlite:///{tmp_path / 'a' / 'mef.db'}", kek) as store:
        ca = load_dev_ca(store)
        assert ca is not None and ca.intermediate_cert is not None
        assert distribution_points(ca.intermediate_cert) == []
    only_root = _MEFCA(tmp_path / "b", "http://127.0.0.1:1/crl", intermediate=False)
    try:
        assert only_root.ca.intermediate_cert is None and "distribution point" not in only_root.output
    finally:
        only_root.store.close()


def test_devca_root_crl_url_needs_an_intermediate() -> None:
    with pytest.raises(ValueError, match="intermediate"):
        DevCA.create("X", now=_now(), permit_uri=[SP], root_crl_url="http://x/root.crl")
    ca = DevCA.create("X", now=_now(), permit_uri=[SP], intermediate=True, root_crl_url="http://x/root.crl",
                      crl_url="http://x/intermediate.crl")
    assert ca.intermediate_cert is not None and distribution_points(ca.intermediate_cert) == ["http://x/root.crl"]


def _openssl_verify(tmp: Path, m: _MEFCA, cert: x509.Certificate) -> subprocess.CompletedProcess[str]:
    """``openssl verify -crl_check -crl_download`` of ``cert`` (the intermediate or a leaf): the CRL
    of its issuer is taken from its own distribution point, nothing else is given."""
    (tmp / "root.pem").write_bytes(m.ca.trust_anchor.public_bytes(PEM))
    (tmp / "inter.pem").write_bytes(m.ca.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
    (tmp / "cert.pem").write_bytes(cert.public_bytes(PEM))
    return subprocess.run(["openssl", "verify", "-crl_check", "-crl_download", "-CAfile", str(tmp / "root.pem"),
                           "-untrusted", str(tmp / "inter.pem"), str(tmp / "cert.pem")],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_crl_download_finds_every_crl_of_the_chain(mefca: tuple[_MEFCA, int], tmp_path: Path) -> None:
    # OpenSSL's -crl_check_all also wants a CRL for the self-signed trust anchor, which no
    # distribution point names (P11: the anchor is not checked); so each certificate below the
    # anchor is checked on its own, as the last one of its path, with the CRL it points at.
    m, port = mefca
    inter = m.ca.intermediate_cert
    assert inter is not None
    pub = ESTCRLPublisher(m.store, m.ca, _now)
    leaf = m.ca.issue(F.AE_ID, [AE], now=_now() - timedelta(minutes=1)).certificate
    # the root's CRL missing from the endpoint: openssl cannot check the intermediate
    with _Server({"intermediate": lambda: pub.crl("intermediate")}, port):
        assert _openssl_verify(tmp_path, m, leaf).returncode == 0
        partial = _openssl_verify(tmp_path, m, inter)
    assert partial.returncode != 0 and "unable to get certificate CRL" in partial.stdout + partial.stderr
    with _Server(pub.sources(), port):
        for cert in (inter, leaf):
            ok = _openssl_verify(tmp_path, m, cert)
            assert ok.returncode == 0 and "cert.pem: OK" in ok.stdout, ok.stdout + ok.stderr
        # the MEF revokes the leaf: the downloaded intermediate CRL lists it
        with m.store.transaction() as tx:
            tx.put_record(NS_EST_REVOKED, format(leaf.serial_number, "x"),
                          {"serial": format(leaf.serial_number, "x"), "revoked_at": _now().isoformat(),
                           "reason": "keyCompromise", "issuer": leaf.issuer.rfc4514_string()})
        revoked = _openssl_verify(tmp_path, m, leaf)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr


def test_maf_client_crl_from_cdp_fetches_the_root_crl(mefca: tuple[_MEFCA, int], tmp_path: Path) -> None:
    m, port = mefca
    base = f"http://127.0.0.1:{port}/crl"
    pub = ESTCRLPublisher(m.store, m.ca, _now)
    maf_ca = DevCA.create("MAF", now=_now() - timedelta(hours=1), permit_dns=["maf.example.com"])
    maf = maf_ca.issue(F.FQDN, ["maf.example.com"], now=_now() - timedelta(hours=1))
    from m2msec.pki.ca import private_key_pem

    (tmp_path / "maf.pem").write_bytes(maf.certificate.public_bytes(PEM))
    (tmp_path / "maf.key").write_bytes(private_key_pem(maf.private_key))  # type: ignore[arg-type]
    (tmp_path / "mef-root.pem").write_bytes(m.ca.trust_anchor.public_bytes(PEM))
    (tmp_path / "mef-inter.pem").write_bytes(m.ca.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
    inter_url = crl_url_for(base, "intermediate")
    (tmp_path / "maf.toml").write_text(
        'fqdn = "maf.example.com"\nstore = "sqlite:///maf.db"\n[tls]\ncert = "maf.pem"\nkey = "maf.key"\n'
        'client_trust_anchors = "mef-root.pem"\nclient_crl_issuers = "mef-inter.pem"\n'
        f'client_crl_urls = ["{inter_url}"]\nclient_crl_from_cdp = true\nrevocation = "require"\n')
    cfg = load_config(tmp_path / "maf.toml")
    # only the issuing CA's CRL was configured; the root's comes from the intermediate's CDP
    assert cfg.client_crl_urls == (inter_url, crl_url_for(base, "root"))
    leaf = m.ca.issue(F.AE_ID, [AE], now=_now() - timedelta(minutes=1))
    info = PeerCertInfo(F.AE_ID, AE)

    def verify(crls: CRLStore) -> None:
        verify_peer_certificate([leaf.certificate, *leaf.chain], expected=info, trust_anchors=[m.ca.trust_anchor],
                                now=_now(), crls=crls, revocation=RevocationPolicy.REQUIRE)

    store = CRLStore()
    without_root = CRLRefresher(store, [inter_url], [*cfg.client_trust_anchors, *cfg.client_crl_issuers])
    with _Server(pub.sources(), port):
        assert all(r.ok for r in without_root.refresh_once())
        with pytest.raises(CertificateVerificationError) as exc:  # no CRL for the intermediate under require
            verify(store)
        assert exc.value.reason_code is VerificationReason.REVOCATION_UNKNOWN
        refresher = CRLRefresher(store, cfg.client_crl_urls, [*cfg.client_trust_anchors, *cfg.client_crl_issuers])
        assert all(r.ok for r in refresher.refresh_once())
    verify(store)
    assert {c.issuer for c in store} == {m.ca.trust_anchor.subject, m.ca.intermediate_cert.subject}  # type: ignore[union-attr]
