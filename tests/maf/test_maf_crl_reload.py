"""``m2msec maf serve`` with [tls] client_crls (TS-0003 8.1.2.2): a client certificate revoked
after start is refused once SIGHUP re-read the CRL files; a broken file keeps the old CRLs."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _mafserve import MAFServe
from cryptography.hazmat.primitives import serialization

from m2msec.maf import MAFClient, MAFClientConfig
from m2msec.maf.server import load_config, open_config_store
from m2msec.maf.service import MAFService
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.store import KeyEncryptionKey
from m2msec.tls.engine import CertCredentials, TLSHandshakeError

MAF = "maf.example.com"
ADMIN = "sp.example.com"
AE1, AE2 = "//sp.example.com/CAE1", "//sp.example.com/CAE2"
PEM = serialization.Encoding.PEM


def now() -> datetime:
    return datetime.now(UTC)


def _pem_key(issued: object) -> bytes:
    return issued.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                            serialization.NoEncryption())


def test_sighup_rereads_client_crls(tmp_path: Path) -> None:
    t0 = now()
    ca = DevCA.create("MAF CRL CA", now=t0 - timedelta(days=1), permit_dns=["example.com"],
                      permit_uri=["sp.example.com"], intermediate=True)
    maf_cert = ca.issue(F.FQDN, [MAF], now=t0 - timedelta(hours=1))
    ae1 = ca.issue(F.AE_ID, [AE1], now=t0 - timedelta(hours=1))
    (tmp_path / "maf.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in [maf_cert.certificate, *maf_cert.chain]))
    (tmp_path / "maf.key").write_bytes(_pem_key(maf_cert))
    (tmp_path / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(PEM))

    def write_crls() -> None:
        (tmp_path / "issuing.crl").write_bytes(ca.issue_crl(now=now()).public_bytes(PEM))
        (tmp_path / "root.crl").write_bytes(ca.issue_crl(now=now(), signer="root").public_bytes(PEM))

    write_crls()
    KeyEncryptionKey.generate().write_file(tmp_path / "kek.hex")
    config = tmp_path / "maf.toml"
    config.write_text(f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "kek.hex"\n'
                      f'[tls]\ncert = "maf.pem"\nkey = "maf.key"\nclient_trust_anchors = "ca.pem"\n'
                      f'client_crls = ["issuing.crl", "root.crl"]\nrevocation = "require"\n'
                      f'[[admin]]\nfqdn = "{ADMIN}"\nclient_config = {{ httpPort = 8443 }}\n', encoding="utf-8")
    cfg = load_config(config)
    assert cfg.client_crl_files == (str(tmp_path / "issuing.crl"), str(tmp_path / "root.crl"))
    store = open_config_store(cfg, clock=now)
    try:
        MAFService(store, MAF, admins=cfg.admins, clock=now).add_cert_client(AE1, PeerCertInfo(F.AE_ID, AE1))
    finally:
        store.close()

    def client(port: int) -> MAFClientConfig:
        return MAFClientConfig(maf_fqdn=MAF, admin_fqdn=ADMIN, host="127.0.0.1", port=port, timeout=10.0,
                               credentials=CertCredentials(ae1.private_key, ae1.certificate, tuple(ae1.chain)),
                               maf_trust_anchors=(ca.trust_anchor,), clock=now)

    reg: list[str] = []

    async def register(port: int) -> str:
        async with MAFClient(client(port)) as c:
            rsp = await c.register(now() + timedelta(days=1))
            reg.append(rsp.maf_client_reg_id)
            return rsp.maf_client_id

    async def configuration(port: int) -> dict:
        async with MAFClient(client(port)) as c:
            return await c.retrieve_configuration(reg[0])

    srv = MAFServe(config, start_timeout=20)
    try:
        assert asyncio.run(register(srv.port)) == AE1  # not revoked: the handshake and procedure succeed
        ca.revoke(ae1.certificate, now=now())
        write_crls()
        asyncio.run(configuration(srv.port))  # the running MAF still holds the old CRLs
        (tmp_path / "root.crl").write_bytes(b"garbage")  # a broken reload changes nothing
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "crls not reloaded" not in srv.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "crls not reloaded" in srv.stderr() and srv.proc.poll() is None
        asyncio.run(configuration(srv.port))
        write_crls()
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.line(10).strip() == "crls reloaded 2"
        with pytest.raises(TLSHandshakeError):  # revoked: refused in the MAF Handshake
            asyncio.run(configuration(srv.port))
        assert srv.proc.poll() is None
    finally:
        srv.stop()
