"""``m2msec maf serve`` with [tls] client_crl_urls (TS-0003 8.1.2.2; m2msec.pki.crl_fetch): the MAF
fetches the clients' CRLs over HTTP before it listens, refreshes them, refuses a client revoked at
the CA after the next refresh, ignores a forged CRL, and a SIGHUP file reload keeps fetched CRLs."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _crl_web import CRLWeb
from _mafserve import MAFServe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.errors import ParseError
from m2msec.maf import MAFClient, MAFClientConfig, MAFResponseError
from m2msec.maf.server import load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.pki.crl import build_crl
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import CertCredentials, TLSHandshakeError

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1 = "//sp.example.com/CAE1"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def web() -> Iterator[CRLWeb]:
    with CRLWeb() as w:
        yield w


def _pem_key(issued: object) -> bytes:
    return issued.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                            serialization.NoEncryption())


class Setup:
    """A DevCA with an intermediate, the MAF's files and one provisioned certificate client."""

    def __init__(self, tmp: Path, web: CRLWeb, tls_extra: str) -> None:
        t0 = now()
        self.tmp, self.web = tmp, web
        self.ca = DevCA.create("MAF URL CA", now=t0 - timedelta(days=1), permit_dns=["example.com"],
                               permit_uri=["sp.example.com"], intermediate=True)
        maf_cert = self.ca.issue(F.FQDN, [MAF], now=t0 - timedelta(hours=1))
        self.ae1 = self.ca.issue(F.AE_ID, [AE1], now=t0 - timedelta(hours=1))
        (tmp / "maf.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in [maf_cert.certificate, *maf_cert.chain]))
        (tmp / "maf.key").write_bytes(_pem_key(maf_cert))
        (tmp / "ca.pem").write_bytes(self.ca.trust_anchor.public_bytes(PEM))
        (tmp / "sub.pem").write_bytes(self.ca.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
        self.publish()
        (tmp / "root.crl").write_bytes(self.ca.issue_crl(now=now(), signer="root").public_bytes(PEM))
        KeyEncryptionKey.generate().write_file(tmp / "kek.hex")
        self.config = tmp / "maf.toml"
        self.config.write_text(
            f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "maf.db"}"\nkek_file = "kek.hex"\n'
            f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "ca.pem"\n'
            f'client_crl_issuers = "sub.pem"\nrevocation = "require"\n{tls_extra}'
            f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n', encoding="utf-8")
        cfg = load_config(self.config)
        store = open_config_store(cfg, clock=now)
        try:
            MAFService(store, MAF, admins=cfg.admins, clock=now).add_cert_client(AE1, PeerCertInfo(F.AE_ID, AE1))
        finally:
            store.close()
        self.reg: list[str] = []

    def publish(self, *, issuing: bool = True, root: bool = True) -> None:
        if issuing:
            self.web.bodies["/issuing.crl"] = self.ca.issue_crl(now=now()).public_bytes(DER)
        if root:
            self.web.bodies["/root.crl"] = self.ca.issue_crl(now=now(), signer="root").public_bytes(PEM)

    def client(self, port: int) -> MAFClientConfig:
        ae1 = self.ae1
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(ae1.private_key, ae1.certificate, tuple(ae1.chain)),
                               maf_trust_anchors=(self.ca.trust_anchor,), clock=now)

    def register(self, port: int) -> str:
        async def go() -> str:
            async with MAFClient(self.client(port)) as c:
                rsp = await c.register(now() + timedelta(days=1))
                self.reg.append(rsp.maf_client_reg_id)
                return rsp.maf_client_id

        return asyncio.run(go())

    def configuration(self, port: int) -> None:
        async def go() -> None:
            async with MAFClient(self.client(port)) as c:
                await c.retrieve_configuration(self.reg[0])

        asyncio.run(go())


def _wait(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _refused(s: Setup, port: int) -> bool:
    """Refused at the handshake, or (a refresh landing between a handshake and its first
    request, profile P26) the session's first request answered 4106."""
    try:
        s.configuration(port)
    except TLSHandshakeError:
        return True
    except MAFResponseError as exc:
        assert exc.rsc == RSC.ORIGINATOR_NOT_AUTHENTICATED and "revoked" in str(exc), exc
        return True
    return False


def test_revoked_at_the_ca_is_refused_after_the_next_refresh(tmp_path: Path, web: CRLWeb) -> None:
    s = Setup(tmp_path, web, f'client_crl_urls = ["{web.url("/issuing.crl")}", "{web.url("/root.crl")}"]\n'
                             f'client_crl_refresh_s = 1\n')
    cfg = load_config(s.config)
    assert cfg.client_crl_urls == (web.url("/issuing.crl"), web.url("/root.crl"))
    assert cfg.client_crls is not None and len(cfg.client_crls) == 0 and cfg.client_crl_files == ()
    srv = MAFServe(s.config)
    try:
        assert web.hits == {"/issuing.crl": 1, "/root.crl": 1}  # fetched before listening ...
        assert s.register(srv.port) == AE1  # ... so "require" finds current CRLs for the whole path
        # a forged CRL (the issuing CA's name, another key, a higher number) is fetched and ignored
        evil = DevCA.create("Evil", now=now() - timedelta(days=1), intermediate=False)
        forged = build_crl(issuer_cert=s.ca.intermediate_cert, issuer_key=evil._root_key,  # type: ignore[arg-type]
                           entries=(), number=10_000, this_update=now())
        web.bodies["/issuing.crl"] = forged.public_bytes(DER)
        seen = web.hits["/issuing.crl"]
        assert _wait(lambda: web.hits["/issuing.crl"] >= seen + 2)
        s.configuration(srv.port)
        assert "signature does not verify" in srv.stderr() and "previous CRLs kept" in srv.stderr()
        # revoked at the CA: refused once the MAF fetched the new CRL (period 1 s)
        s.ca.revoke(s.ae1.certificate, now=now())
        s.publish(root=False)

        assert _wait(lambda: _refused(s, srv.port))
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGINT)  # Ctrl-C: the refresher task is stopped with the loop
        assert srv.proc.wait(10) == 0 and "Traceback" not in srv.stderr()
    finally:
        srv.stop()


def test_sighup_fetches_now_and_a_file_reload_keeps_fetched_crls(tmp_path: Path, web: CRLWeb) -> None:
    # the root CRL comes from a file, the issuing CA's from the URL; refreshing is hourly
    s = Setup(tmp_path, web, f'client_crl_urls = "{web.url("/issuing.crl")}"\nclient_crls = "root.crl"\n')
    srv = MAFServe(s.config)
    try:
        assert s.register(srv.port) == AE1
        del web.bodies["/issuing.crl"]  # the CRL server is down: the refetch fails (404)
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.line(10).strip() == "crls reloaded 2"  # the file CRL + the fetched one, kept
        assert _wait(lambda: web.hits["/issuing.crl"] >= 2) and _wait(lambda: "HTTP status 404" in srv.stderr())
        s.configuration(srv.port)  # "require" still satisfied: the reload did not drop the fetched CRL
        s.ca.revoke(s.ae1.certificate, now=now())
        s.publish(root=False)
        s.configuration(srv.port)  # no refresh yet (hourly): the old CRL is in force
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.line(10).strip() == "crls reloaded 2"
        assert _wait(lambda: web.hits["/issuing.crl"] >= 3)
        assert _wait(lambda: _refused(s, srv.port))  # the fetch lands just after the request was counted
        assert srv.proc.poll() is None
    finally:
        srv.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers is Linux only")
def test_every_worker_process_fetches_and_sighup_reaches_them(tmp_path: Path, web: CRLWeb) -> None:
    s = Setup(tmp_path, web, f'client_crl_urls = "{web.url("/issuing.crl")}"\nclient_crls = "root.crl"\n')
    srv = MAFServe(s.config, "--workers", "2")
    try:
        assert web.hits == {"/issuing.crl": 2}  # the parent and the worker, each before listening
        assert s.register(srv.port) == AE1
        srv.proc.send_signal(signal.SIGHUP)  # the parent fetches and forwards the signal to the worker
        assert _wait(lambda: web.hits["/issuing.crl"] == 4)
        s.ca.revoke(s.ae1.certificate, now=now())
        s.publish(root=False)
        srv.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: web.hits["/issuing.crl"] == 6)
        # whichever process takes the connection refuses the revoked client
        assert _wait(lambda: all(_refused(s, srv.port) for _ in range(6)))
        assert srv.proc.poll() is None
    finally:
        srv.stop()


# ------------------------------------------------------------------ configuration


def _ca_with_cdp(urls: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CDP CA")])
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in urls],
                                                             None, None, None)])
    t = now()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(t - timedelta(days=1))
            .not_valid_after(t + timedelta(days=30)).add_extension(x509.BasicConstraints(True, None), True)
            .add_extension(cdp, False).sign(key, hashes.SHA256()))


def _config(tmp: Path, tls_extra: str) -> Path:
    ca = DevCA.create("Cfg CA", now=now() - timedelta(days=1), permit_dns=["example.com"])
    maf_cert = ca.issue(F.FQDN, [MAF], now=now())
    (tmp / "maf.pem").write_bytes(maf_cert.certificate.public_bytes(PEM))
    (tmp / "maf.key").write_bytes(_pem_key(maf_cert))
    (tmp / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))
    (tmp / "cdp.pem").write_bytes(_ca_with_cdp(["ldap://dir.example.com/cn=x", "http://pki.example.com/root.crl",
                                                "https://pki.example.com/alt.crl"]).public_bytes(PEM))
    p = tmp / "maf.toml"
    p.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp / "m.db"}"\n[tls]\ncert = "maf.pem"\nkey = "maf.key"\n'
                 f'client_trust_anchors = "ca.pem"\n{tls_extra}', encoding="utf-8")
    return p


def test_config_urls_from_cdp_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, 'client_crl_issuers = ["cdp.pem"]\nclient_crl_from_cdp = true\n'
                                        'client_crl_urls = ["http://pki.example.com/root.crl", '
                                        '"http://pki.example.com/sub.crl"]\n'))
    assert cfg.client_crl_urls == ("http://pki.example.com/root.crl", "http://pki.example.com/sub.crl",
                                   "https://pki.example.com/alt.crl")
    assert cfg.client_crl_refresh == timedelta(hours=1) and len(cfg.client_crl_issuers) == 1
    r = cfg.crl_refresher(clock=now)
    assert r is not None and r.store is cfg.client_crls and r.period == timedelta(hours=1)
    assert r.fetcher.issuers == (*cfg.client_trust_anchors, *cfg.client_crl_issuers)
    plain = load_config(_config(tmp_path, ""))
    assert plain.client_crl_urls == () and plain.client_crls is None and plain.crl_refresher(clock=now) is None


@pytest.mark.parametrize("extra, match", [
    ('client_crl_urls = ["ldap://dir.example.com/cn=CA"]\n', "not an http"),
    ('client_crl_urls = ["http://pki.example.com/a.crl"]\nclient_crl_refresh_s = 0\n', "must be positive"),
    ('client_crl_from_cdp = "yes"\n', "true or false"),
    ('client_crl_issuers = "missing.pem"\n', "missing.pem"),
])
def test_config_refusals(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        load_config(_config(tmp_path, extra))
