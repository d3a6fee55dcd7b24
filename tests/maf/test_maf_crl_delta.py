"""``m2msec maf serve`` with a CA that publishes delta CRLs (TS-0003 8.1.2.2; RFC 5280 5.2.4,
5.2.6, 6.3.3): ``[tls] client_crl_urls`` names the complete CRL only; its freshestCRL leads the
MAF to the delta, fetched before it listens and refreshed on its own.  A client certificate
revoked only in a delta CRL (the base is never re-issued) is refused at the TLS handshake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _crl_web import CRLWeb
from _mafserve import MAFServe
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.client import MAFResponseError
from m2msec.maf.server import load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import CertCredentials, TLSHandshakeError

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1 = "//sp.example.com/CDELTA1"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def web() -> Iterator[CRLWeb]:
    with CRLWeb() as w:
        yield w


def _wait(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_client_revoked_only_in_the_delta_is_refused_at_the_handshake(tmp_path: Path, web: CRLWeb) -> None:
    t0 = now()
    ca = DevCA.create("MAF Delta CA", now=t0 - timedelta(days=1), permit_dns=["example.com"],
                      permit_uri=["sp.example.com"], intermediate=True)
    maf_cert = ca.issue(F.FQDN, [MAF], now=t0 - timedelta(hours=1))
    ae1 = ca.issue(F.AE_ID, [AE1], now=t0 - timedelta(hours=1))
    key_pem = maf_cert.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[union-attr]
                                                 serialization.NoEncryption())
    (tmp_path / "maf.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in [maf_cert.certificate, *maf_cert.chain]))
    (tmp_path / "maf.key").write_bytes(key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))
    (tmp_path / "sub.pem").write_bytes(ca.intermediate_cert.public_bytes(PEM))  # type: ignore[union-attr]
    # the complete CRL (7 days) names its delta; the base is never re-issued in this test
    base = ca.issue_crl(now=now(), freshest_url=web.url("/delta.crl"))
    base_n = base.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    web.bodies["/issuing.crl"] = base.public_bytes(DER)
    web.bodies["/root.crl"] = ca.issue_crl(now=now(), signer="root").public_bytes(DER)
    web.bodies["/delta.crl"] = ca.issue_delta_crl(base_number=base_n, now=now()).public_bytes(DER)
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    config = tmp_path / "maf.toml"
    config.write_text(
        f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
        f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "ca.pem"\n'
        f'client_crl_issuers = "sub.pem"\nrevocation = "require"\n'
        f'client_crl_urls = ["{web.url("/issuing.crl")}", "{web.url("/root.crl")}"]\nclient_crl_refresh_s = 1\n'
        f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n', encoding="utf-8")
    cfg = load_config(config)
    assert cfg.client_crl_urls == (web.url("/issuing.crl"), web.url("/root.crl"))  # the delta URL is not configured
    store = open_config_store(cfg, clock=now)
    try:
        MAFService(store, MAF, admins=cfg.admins, clock=now).add_cert_client(AE1, PeerCertInfo(F.AE_ID, AE1))
    finally:
        store.close()

    def client(port: int) -> MAFClientConfig:
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(ae1.private_key, ae1.certificate, tuple(ae1.chain)),
                               maf_trust_anchors=(ca.trust_anchor,), clock=now)

    def register(port: int) -> str:
        async def go() -> str:
            async with MAFClient(client(port)) as c:
                return (await c.register(now() + timedelta(days=1))).maf_client_id

        return asyncio.run(go())

    alerts: list[str] = []

    def refused(port: int) -> bool:
        try:
            register(port)
        except TLSHandshakeError as exc:
            alerts.append(str(exc))
            return True
        except MAFResponseError:  # the handshake passed: "already registered"
            return False
        return False

    srv = MAFServe(config)
    try:
        assert web.hits.get("/delta.crl") == 1  # followed from the base's freshestCRL before listening
        assert register(srv.port) == AE1
        # revoked at the CA; only a new delta says so (same base)
        ca.revoke(ae1.certificate, now=now(), reason=x509.ReasonFlags.key_compromise)
        web.bodies["/delta.crl"] = ca.issue_delta_crl(base_number=base_n, now=now()).public_bytes(DER)
        assert _wait(lambda: refused(srv.port))
        assert "certificate revoked" in alerts[-1]  # alert certificate_revoked, not certificate_unknown
        assert web.hits["/issuing.crl"] >= 1 and base.public_bytes(DER) == web.bodies["/issuing.crl"]
        assert "Traceback" not in srv.stderr() and "failed" not in srv.stderr()
    finally:
        srv.stop()
